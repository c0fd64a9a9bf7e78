//go:build !linux

package graceful

import (
	"net"
	"testing"
)

// acceptQueue: the length of a socket's accept queue is read with Linux's TCP_INFO.
func acceptQueue(t testing.TB, ln net.Listener) int {
	t.Helper()
	t.Skip("the accept queue's length is read with TCP_INFO: Linux only")
	return 0
}
