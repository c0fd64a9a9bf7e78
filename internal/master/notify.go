//go:build linux

package master

import (
	"strings"
)

// Field is one KEY=VALUE assignment of an sd_notify datagram.
type Field struct {
	Key, Value string
}

// maxNotify is the largest datagram read, as systemd reads them (NOTIFY_BUFFER_MAX).
const maxNotify = 4096

// ParseNotify splits an sd_notify datagram into its assignments, in order. Lines
// are separated by "\n"; empty lines and lines without "=" or with an empty key are
// skipped, as systemd skips them. A NUL byte ends the message.
func ParseNotify(b []byte) []Field {
	s := string(b)
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	var out []Field
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\r") {
			continue
		}
		out = append(out, Field{Key: k, Value: v})
	}
	return out
}
