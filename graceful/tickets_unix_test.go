//go:build unix

package graceful

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loadKeyFileWithin runs loadKeyFile, failing the test if it has not returned
// within a few seconds (it would wait for ever for a FIFO's writer). unblock, if
// the load hangs, is called to let the stuck open return, so that the test ends.
func loadKeyFileWithin(t *testing.T, path string, unblock func()) ([]ticketKey, error) {
	t.Helper()
	type result struct {
		keys []ticketKey
		err  error
	}
	done := make(chan result, 1)
	go func() {
		keys, err := loadKeyFile(path)
		done <- result{keys, err}
	}()
	select {
	case r := <-done:
		return r.keys, r.err
	case <-time.After(5 * time.Second):
		if unblock != nil {
			unblock()
		}
		<-done
		t.Fatalf("loadKeyFile(%s) blocked for 5s: the start would hang", path)
		return nil, nil
	}
}

// TestLoadKeyFileFIFO: a named pipe at the key file's path, directly or through a
// symlink: the load returns at once (no writer is waited for) with an error that
// says it is a FIFO, not a regular file, and what to do.
func TestLoadKeyFileFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "keys.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, link} {
		// If the open blocks, a writer lets it go on (then it reads an empty pipe).
		unblock := func() {
			if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				w.Close()
			}
		}
		_, err := loadKeyFileWithin(t, path, unblock)
		if err == nil || !strings.Contains(err.Error(), "named pipe (FIFO), not a regular file") || !strings.Contains(err.Error(), "install -m 600") {
			t.Errorf("%s: %v; want an error saying it is a FIFO, not a regular file, and what to do", path, err)
		}
	}
}

// TestLoadKeyFileOwner: a key file of mode 0600 that belongs to another user (uid
// 65534, nobody) is refused, also by root and through a symlink: its owner could
// change the keys. Owned by the process's user (root here) it is accepted.
func TestLoadKeyFileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("not root: cannot give a file to another user")
		}
		t.Skip("not root: cannot give a file to another user")
	}
	dir := t.TempDir()
	key := strings.Repeat("ab", 32) + "\n"
	mine := filepath.Join(dir, "mine")
	theirs := filepath.Join(dir, "theirs")
	for _, p := range []string{mine, theirs} {
		if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if keys, err := loadKeyFileWithin(t, mine, nil); err != nil || len(keys) != 1 {
		t.Errorf("a 0600 file of the process's user: %v", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(theirs, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{theirs, link} {
		_, err := loadKeyFileWithin(t, path, nil)
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") || !strings.Contains(err.Error(), "chown") {
			t.Errorf("%s: %v; want an error naming the owner (uid 65534) and saying to chown it", path, err)
		}
	}
}

// TestLoadKeyFileModes: 0600 and 0640 are accepted; 0644 (readable by others), 0604,
// 0660 and 0620 (writable by the group) are refused with the chmod to run, also
// through a symlink, whose own mode (0777) does not count: the checks are made on
// the file it leads to.
func TestLoadKeyFileModes(t *testing.T) {
	dir := t.TempDir()
	key := strings.Repeat("cd", 32) + "\n"
	for _, c := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o640, true}, {0o400, true}, {0o644, false}, {0o604, false}, {0o660, false}, {0o620, false}} {
		p := filepath.Join(dir, c.mode.String())
		if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, c.mode); err != nil {
			t.Fatal(err)
		}
		link := p + ".link"
		if err := os.Symlink(p, link); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{p, link} {
			_, err := loadKeyFileWithin(t, path, nil)
			switch {
			case c.ok && err != nil:
				t.Errorf("mode %04o (%s): %v; want it accepted", c.mode, path, err)
			case !c.ok && (err == nil || !strings.Contains(err.Error(), "chmod 600")):
				t.Errorf("mode %04o (%s): %v; want it refused, saying chmod 600", c.mode, path, err)
			}
		}
	}
}
