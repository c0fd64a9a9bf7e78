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
	return acceptQueueOf(t, ln.(syscall.Conn), ln.Addr().String())
}

// socketOf returns a copy of ln's socket, to read its accept queue (acceptQueueOf)
// once a drain has parked ln: closed it, keeping the socket.
func socketOf(t testing.TB, ln net.Listener) syscall.Conn {
	t.Helper()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// acceptQueueOf is acceptQueue of the listening socket sc, named name.
func acceptQueueOf(t testing.TB, s syscall.Conn, name string) int {
	t.Helper()
	sc, err := s.SyscallConn()
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
		t.Fatalf("TCP_INFO of %s: %v", name, ierr)
	}
	return int(info.Unacked)
}
