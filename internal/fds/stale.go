package fds

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/proc"
)

// RemoveStaleSocket removes a unix socket file at path that nobody accepts on
// (connect is refused): one left by a process that was killed. A socket somebody
// serves, or a file of another kind, is an error that says so; a missing file, or an
// abstract socket name ("@..."), is fine.
func RemoveStaleSocket(path string) error {
	if path == "" || path[0] == '@' {
		return nil
	}
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("unix socket %s: %s is in the way (not a socket); remove it or choose another path", path, proc.FileType(st.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("unix socket %s: another process is serving it (is the service already running?)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unix socket %s: removing the stale socket file: %w", path, err)
	}
	return nil
}
