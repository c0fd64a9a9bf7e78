// Package pidfile writes PID files the way handover's processes need them: checked
// before a process starts serving, written atomically (a temporary file beside it,
// synced, renamed over it), mode 0644, never through a symlink, and removed only by
// the process it names. graceful's Upgrader and `handover run`'s master use it.
package pidfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Check checks, at start-up, that path can be written: its directory exists
// and is writable, and path is not a symlink or anything but a regular file.
func Check(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("PID file %s: directory %s: %w (create it first)", path, dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("PID file %s: %s is not a directory", path, dir)
	}
	// Try it: the PID file is written the same way (a file beside it, renamed).
	probe, err := os.CreateTemp(dir, "."+filepath.Base(path)+".check*")
	if err != nil {
		return fmt.Errorf("PID file %s: directory %s is not writable: %w", path, dir, errors.Unwrap(err))
	}
	probe.Close()
	os.Remove(probe.Name())
	return CheckTarget(path)
}

// CheckTarget checks that path, if it exists, is a regular file and not a symlink.
func CheckTarget(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("PID file %s is a symlink; refusing to write through it (remove it or point -pidfile at a plain path)", path)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("PID file %s exists and is not a regular file (%s)", path, st.Mode().Type())
	}
	return nil
}

// Write atomically replaces path with pid: a new file of mode 0644 beside it,
// synced, then renamed over path. A symlink at path is refused, not followed.
func Write(path string, pid int) error {
	if err := CheckTarget(path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	if _, err := tmp.WriteString(strconv.Itoa(pid) + "\n"); err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("PID file %s: %w", path, err)
	}
	ok = true
	return nil
}

// Remove removes path if it still names pid (a later generation may own it).
func Remove(path string, pid int) {
	if CheckTarget(path) != nil {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		return
	}
	os.Remove(path)
}
