//go:build linux

package graceful

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// acceptQueue returns the number of connections waiting in the accept queue of ln,
// a TCP listening socket (not a Drainer's wrapper): TCP_INFO's tcpi_unacked, which
// Linux sets to that length for a listening socket. Reading /proc/net/tcp instead
// walks every TCP socket of the network namespace: seconds on a machine whose load
// tests left a hundred thousand in TIME_WAIT.
func acceptQueue(t testing.TB, ln net.Listener) int {
	t.Helper()
	sc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := sc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("TCP_INFO of %s: %v", ln.Addr(), ierr)
	}
	return int(info.Unacked)
}
