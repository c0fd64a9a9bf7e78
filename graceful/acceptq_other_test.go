//go:build !linux

package graceful

import (
	"net"
	"syscall"
	"testing"
)

// acceptQueue: the length of a socket's accept queue is read with Linux's TCP_INFO.
func acceptQueue(t testing.TB, ln net.Listener) int {
	t.Helper()
	t.Skip("the accept queue's length is read with TCP_INFO: Linux only")
	return 0
}

func socketOf(t testing.TB, ln net.Listener) syscall.Conn {
	t.Helper()
	t.Skip("the accept queue's length is read with TCP_INFO: Linux only")
	return nil
}

func acceptQueueOf(t testing.TB, s syscall.Conn, name string) int {
	t.Helper()
	t.Skip("the accept queue's length is read with TCP_INFO: Linux only")
	return 0
}
