//go:build linux

package fds

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSetSocketMode: the mode of a socket just bound is set (0600); a path that was
// replaced after the bind by a symlink to a file, or by another user's socket, is
// refused with an error that says so, and neither the file the symlink names nor
// the other socket has its mode changed. (os.Chmod, used before, followed the
// symlink and made the file 0600.)
func TestSetSocketMode(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := SetSocketMode(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(path); err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("the socket: %v, %v; want a socket with mode 0600", st.Mode(), err)
	}

	// Replaced by a symlink to a file.
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	err = SetSocketMode(path, 0o600)
	if err == nil || !strings.Contains(err.Error(), "replaced by a symlink after it was bound") {
		t.Errorf("a symlink at the path: %v; want refused", err)
	}
	if st, _ := os.Stat(victim); st.Mode().Perm() != 0o644 {
		t.Errorf("the symlink's target now has mode %v, want 0644 unchanged", st.Mode().Perm())
	}

	// Replaced by a regular file.
	os.Remove(path)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SetSocketMode(path, 0o600); err == nil || !strings.Contains(err.Error(), "replaced by something else") {
		t.Errorf("a file at the path: %v; want refused", err)
	}

	// Replaced by another user's socket.
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a socket of another user")
	}
	os.Remove(path)
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := SetSocketMode(path, 0o600); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("another user's socket at the path: %v; want refused", err)
	}
	if st, _ := os.Lstat(path); st.Mode().Perm() != 0o777 {
		t.Errorf("the other user's socket now has mode %v, want 0777 unchanged", st.Mode().Perm())
	}
}
