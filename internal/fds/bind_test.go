//go:build linux

package fds

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBind: a socket bound for a process that passes it on (handover run's master)
// is blocking and close-on-exec, and is what was asked for.
func TestBind(t *testing.T) {
	for _, c := range []struct{ network, address string }{
		{"tcp", "127.0.0.1:0"},
		{"udp", "127.0.0.1:0"},
		{"unix", filepath.Join(shortDir(t), "b.sock")},
	} {
		f, err := Bind(c.network, c.address)
		if err != nil {
			t.Fatalf("Bind(%s, %s): %v", c.network, c.address, err)
		}
		fd := int(f.Fd())
		flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		fdflags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if flags&unix.O_NONBLOCK != 0 || fdflags&unix.FD_CLOEXEC == 0 {
			t.Errorf("%s: flags %#x fd flags %#x: want blocking and close-on-exec", c.network, flags, fdflags)
		}
		k, err := Inspect(fd)
		if err != nil || k.Addr == nil || k.Addr.Network() != c.network {
			t.Errorf("%s: Inspect = %v, %v", c.network, k, err)
		}
		if c.network == "unix" && !Matches(c.network, c.address, k) {
			t.Errorf("%s: %v does not match %s", c.network, k, c.address)
		}
		f.Close()
		if c.network == "unix" {
			if _, err := os.Stat(c.address); err != nil {
				t.Errorf("closing the descriptor removed the socket file: %v", err)
			}
		}
	}
}

// TestBindUnixStale: a stale unix socket file (nothing listens) is replaced; a live
// socket or a regular file at the path is an error that says which.
func TestBindUnixStale(t *testing.T) {
	path := filepath.Join(shortDir(t), "s.sock")

	// Stale: a socket file whose listener is gone (closed without unlinking).
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	f, err := Bind("unix", path)
	if err != nil {
		t.Fatalf("over a stale socket file: %v", err)
	}
	// Live: the one just bound.
	if _, err := Bind("unix", path); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Errorf("over a live socket: %v", err)
	}
	f.Close()
	os.Remove(path)

	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Bind("unix", path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "x" {
		t.Errorf("the regular file was touched")
	}
}
