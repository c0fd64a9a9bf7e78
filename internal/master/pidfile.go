//go:build linux

package master

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The master's PID file, written like graceful's (graceful/pidfile.go): atomically
// (a temporary file beside it, synced, renamed over it), mode 0644, never through a
// symlink.

func checkPIDTarget(path string) error {
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

// writePIDFile atomically replaces path with pid.
func writePIDFile(path string, pid int) error {
	if err := checkPIDTarget(path); err != nil {
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

// removePIDFile removes path if it still names pid.
func removePIDFile(path string, pid int) {
	if checkPIDTarget(path) != nil {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		return
	}
	os.Remove(path)
}
