//go:build linux

package pidfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// onlyEntries fails unless dir holds exactly names (no temporary file left over).
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

func TestWritePIDFile(t *testing.T) {
	// The umask is process-wide: these subtests do not run in parallel.
	for _, mask := range []int{0o022, 0o077, 0o777, 0o000, 0o002} {
		t.Run(fmt.Sprintf("umask%03o", mask), func(t *testing.T) {
			dir := t.TempDir()
			old := syscall.Umask(mask)
			defer syscall.Umask(old)
			path := filepath.Join(dir, "app.pid")
			if err := Write(path, 4242); err != nil {
				t.Fatal(err)
			}
			syscall.Umask(old)
			if got := readFile(t, path); got != "4242\n" {
				t.Fatalf("content %q", got)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode() != 0o644 {
				t.Fatalf("mode %v with umask %03o; want -rw-r--r--", st.Mode(), mask)
			}
			onlyEntries(t, dir, "app.pid")
		})
	}
}

func TestWritePIDFileReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.pid")
	if err := os.WriteFile(path, []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Someone holding the old file open still sees the old, complete content: the
	// new one was renamed over it, not rewritten in place.
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := Write(path, 99999); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != "99999\n" {
		t.Fatalf("content %q", got)
	}
	b := make([]byte, 16)
	n, _ := old.Read(b)
	if string(b[:n]) != "1\n" {
		t.Fatalf("the old file was modified in place: %q", b[:n])
	}
	if st, _ := os.Stat(path); st.Mode() != 0o644 {
		t.Fatalf("mode %v after replacing a 0600 file", st.Mode())
	}
	onlyEntries(t, dir, "app.pid")
}

func TestWritePIDFileRefusesSymlink(t *testing.T) {
	for _, dangling := range []bool{false, true} {
		name := "to a file"
		if dangling {
			name = "dangling"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "precious")
			if !dangling {
				if err := os.WriteFile(target, []byte("do not touch\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, "app.pid")
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			err := Write(path, 4242)
			if err == nil || !strings.Contains(err.Error(), "symlink") {
				t.Fatalf("writePIDFile through a symlink: %v; want a refusal", err)
			}
			if err := Check(path); err == nil || !strings.Contains(err.Error(), "symlink") {
				t.Fatalf("checkPIDFile of a symlink: %v; want a refusal", err)
			}
			if dest, err := os.Readlink(path); err != nil || dest != target {
				t.Fatalf("the symlink changed: %q, %v", dest, err)
			}
			if dangling {
				if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("the dangling symlink's target was created: %v", err)
				}
				onlyEntries(t, dir, "app.pid")
				return
			}
			if got := readFile(t, target); got != "do not touch\n" {
				t.Fatalf("the symlink's target now holds %q", got)
			}
			if st, _ := os.Stat(target); st.Mode() != 0o600 {
				t.Fatalf("the symlink's target mode is now %v", st.Mode())
			}
			onlyEntries(t, dir, "app.pid", "precious")
		})
	}
}

func TestWritePIDFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.pid")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, 1); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("writePIDFile over a directory: %v", err)
	}
	if err := Check(path); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("checkPIDFile of a directory: %v", err)
	}
}

func TestCheckPIDFile(t *testing.T) {
	dir := t.TempDir()
	if err := Check(filepath.Join(dir, "app.pid")); err != nil {
		t.Fatalf("fresh path in a writable directory: %v", err)
	}
	existing := filepath.Join(dir, "old.pid")
	os.WriteFile(existing, []byte("1\n"), 0o644)
	if err := Check(existing); err != nil {
		t.Fatalf("existing regular file: %v", err)
	}

	missing := filepath.Join(dir, "no", "such", "dir", "app.pid")
	err := Check(missing)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), filepath.Join(dir, "no", "such", "dir")) || !strings.Contains(err.Error(), "create it") {
		t.Fatalf("missing directory: %v; want an error naming the directory and saying to create it", err)
	}
	if err := Write(missing, 1); err == nil {
		t.Fatal("writePIDFile in a missing directory succeeded")
	}

	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if err := Check(filepath.Join(file, "app.pid")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("parent is a file: %v", err)
	}
}

func TestCheckPIDFileReadOnlyDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	makeReadOnly(t, dir)
	path := filepath.Join(dir, "app.pid")
	err := Check(path)
	if err == nil || !strings.Contains(err.Error(), "not writable") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("read-only directory: %v; want an error saying %s is not writable", err, dir)
	}
	if err := Write(path, 1); err == nil {
		t.Fatal("writePIDFile in a read-only directory succeeded")
	}
}

// skipOrFail skips the test, or fails it when $CI is set, so that CI never skips a
// test silently. (The tests/internal/sdns.SkipOrFail of the end-to-end tests, which
// this package cannot import.)
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (CI is set, so this is a failure, not a skip)", args...)
	}
	t.Skipf(format, args...)
}

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h (chattr +i).
const fsImmutableFL = 0x10

// makeReadOnly makes dir unwritable for this process: by mode for an ordinary user,
// with the immutable attribute for root (which ignores modes).
func makeReadOnly(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFL))
	}
	if err != nil {
		skipOrFail(t, "running as root and cannot make %s immutable (the file system must support chattr +i): %v", dir, err)
	}
	t.Cleanup(func() {
		f, err := os.Open(dir)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags)); err != nil {
			t.Errorf("clearing the immutable attribute of %s: %v", dir, err)
		}
	})
}

func TestRemovePIDFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.pid")
	if err := Write(path, 4242); err != nil {
		t.Fatal(err)
	}
	Remove(path, 42) // a prefix of the PID is another PID
	Remove(path, 424242)
	if got := readFile(t, path); got != "4242\n" {
		t.Fatalf("removePIDFile of another PID touched the file: %q", got)
	}
	Remove(path, 4242)
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("removePIDFile of the PID it names: %v; want it removed", err)
	}
	Remove(path, 4242) // gone already: nothing happens

	// A symlink whose target names the PID is left alone, as is its target.
	target := filepath.Join(dir, "elsewhere")
	os.WriteFile(target, []byte("4242\n"), 0o644)
	os.Symlink(target, path)
	Remove(path, 4242)
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("removePIDFile removed a symlink: %v", err)
	}
	if got := readFile(t, target); got != "4242\n" {
		t.Fatalf("symlink target: %q", got)
	}
}
