package fds

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A unix socket file nobody accepts on (a killed server's) is stale: binding over it
// replaces it. A live socket is never unlinked, nor is a file that is not a socket.
func TestListenReplacesStaleUnixSocket(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "s.sock")

	// A stale socket: bound and listening, then closed without unlinking, as a
	// process killed with SIGKILL leaves it.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	syscall.Listen(fd, 1)
	syscall.Close(fd)
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("the stale socket accepted a connection")
	}

	s := &Set{}
	ln, err := s.Listen("api", "unix", path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the new socket does not accept: %v", err)
	}
	c.Close()

	// Live: another Set may not take it over.
	if _, err := (&Set{}).Listen("api", "unix", path); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Fatalf("Listen over a live socket: %v; want an error saying it is served", err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("the live socket was disturbed: %v", err)
	} else {
		c.Close()
	}

	// Not a socket: left alone.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Set{}).Listen("x", "unix", file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v; want an error saying it is not a socket", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "data" {
		t.Fatalf("the regular file was touched: %q, %v", b, err)
	}
}

// A listener asked for after CloseUnclaimed dropped its inherited socket is an
// error that says to take every listener first, not a new socket beside the old.
func TestListenAfterCloseUnclaimed(t *testing.T) {
	f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
	dup, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	kind, err := Inspect(dup)
	if err != nil {
		t.Fatal(err)
	}
	s := &Set{source: Systemd, files: []*File{{Fd: dup, Name: "admin", Source: Systemd, Kind: kind, file: os.NewFile(uintptr(dup), "admin")}}}
	if dropped := s.CloseUnclaimed(); len(dropped) != 1 {
		t.Fatalf("CloseUnclaimed dropped %d, want 1", len(dropped))
	}
	_, err = s.Listen("admin", "tcp", addr)
	if err == nil || !strings.Contains(err.Error(), "take every listener") {
		t.Fatalf("Listen after CloseUnclaimed: %v; want the advice to take every listener first", err)
	}
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "stale")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
