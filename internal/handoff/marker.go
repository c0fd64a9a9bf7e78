package handoff

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Marker is what a handover parent tells the child it starts, in MarkerEnv.
type Marker struct {
	// PID is the parent's process ID (the process handing over).
	PID int
	// PPID is the parent process ID the child must see (getppid). It equals PID when
	// the child is a plain child, and the parent's own parent when the child was
	// started as a sibling so that the service manager is its parent.
	PPID int
	// Channel is the descriptor of the child's end of the handover channel.
	Channel int
	// Generation is the child's generation: 1 for a process nobody handed over to.
	Generation int
	// Stderr, if not 0, is the descriptor of the parent's own standard error. Until
	// the handover is confirmed the child's fd 2 is a pipe the parent reads (it keeps
	// the last lines for the report of a failed upgrade and copies them to its own
	// standard error); then the child puts this descriptor back at fd 2.
	Stderr int
	// Owned lists the indexes (0-based, into LISTEN_FDS) of descriptors that this
	// line of processes bound itself, as opposed to receiving them from systemd. Only
	// the owner may unlink a unix socket's file.
	Owned []int
}

// String formats m the way ParseMarker reads it.
func (m Marker) String() string {
	s := fmt.Sprintf("pid=%d,ppid=%d,chan=%d,gen=%d", m.PID, m.PPID, m.Channel, m.Generation)
	if m.Stderr != 0 {
		s += ",err=" + strconv.Itoa(m.Stderr)
	}
	if len(m.Owned) > 0 {
		parts := make([]string, len(m.Owned))
		for i, o := range m.Owned {
			parts[i] = strconv.Itoa(o)
		}
		s += ",own=" + strings.Join(parts, "+")
	}
	return s
}

// ParseMarker parses the value of MarkerEnv. Every field but own and err is
// required; an unknown or repeated field, a repeated own entry, and a number with a
// sign or beyond 32 bits are errors.
func ParseMarker(s string) (Marker, error) {
	var m Marker
	if s == "" {
		return m, fmt.Errorf("%s is empty", MarkerEnv)
	}
	seen := map[string]bool{}
	for _, field := range strings.Split(s, ",") {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			return m, fmt.Errorf("%s=%q: field %q is not key=value", MarkerEnv, clip(s), clip(field))
		}
		if seen[key] {
			return m, fmt.Errorf("%s=%q: field %q is repeated", MarkerEnv, clip(s), clip(key))
		}
		seen[key] = true
		if err := m.set(key, val); err != nil {
			return m, fmt.Errorf("%s=%q: %w", MarkerEnv, clip(s), err)
		}
	}
	for _, key := range []string{"pid", "ppid", "chan", "gen"} {
		if !seen[key] {
			return m, fmt.Errorf("%s=%q: field %s is missing", MarkerEnv, clip(s), key)
		}
	}
	if err := m.check(seen["err"]); err != nil {
		return m, fmt.Errorf("%s=%q: %w", MarkerEnv, clip(s), err)
	}
	return m, nil
}

// set sets the field key of m to val.
func (m *Marker) set(key, val string) error {
	if key == "own" {
		for _, part := range strings.Split(val, "+") {
			i, ok := parseDecimal(part, MaxListenFDs-1)
			if !ok {
				return fmt.Errorf("own entry %q is not a descriptor index (0 to %d)", clip(part), MaxListenFDs-1)
			}
			if slices.Contains(m.Owned, i) {
				return fmt.Errorf("own entry %d is repeated", i)
			}
			m.Owned = append(m.Owned, i)
		}
		return nil
	}
	fields := map[string]*int{"pid": &m.PID, "ppid": &m.PPID, "chan": &m.Channel, "gen": &m.Generation, "err": &m.Stderr}
	p := fields[key]
	if p == nil {
		return fmt.Errorf("unknown field %q", clip(key))
	}
	// Process IDs and descriptors are 32-bit in the kernel: a larger value would be
	// truncated by a system call into some other descriptor.
	n, ok := parseDecimal(val, math.MaxInt32)
	if !ok {
		return fmt.Errorf("%s=%q is not a non-negative number (at most %d)", key, clip(val), math.MaxInt32)
	}
	*p = n
	return nil
}

// check checks the values of a parsed marker; hasErr says whether err was given.
func (m *Marker) check(hasErr bool) error {
	switch {
	case m.PID == 0 || m.PPID == 0:
		return fmt.Errorf("pid=%d, ppid=%d; both must be positive", m.PID, m.PPID)
	case m.Channel < ListenFDsStart:
		return fmt.Errorf("chan=%d is a standard descriptor; expected %d or above", m.Channel, ListenFDsStart)
	case m.Generation < 2:
		return fmt.Errorf("gen=%d; a child's generation is at least 2", m.Generation)
	case hasErr && m.Stderr < ListenFDsStart:
		return fmt.Errorf("err=%d is a standard descriptor; expected %d or above", m.Stderr, ListenFDsStart)
	case hasErr && m.Stderr == m.Channel:
		return fmt.Errorf("err=%d is the channel's descriptor", m.Stderr)
	}
	return nil
}
