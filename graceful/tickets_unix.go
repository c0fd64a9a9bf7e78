//go:build unix

package graceful

import (
	"fmt"
	"os"
	"syscall"
)

// openNonBlocking opens path read-only without waiting: open(2) of a FIFO with no
// writer would block, O_NONBLOCK makes it return at once (reads of a regular file
// are not affected). O_NOCTTY: a terminal at the path does not become the
// process's controlling terminal.
func openNonBlocking(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
}

// checkKeyFileOwner requires the key file to belong to the process's (effective)
// user or to root: any other owner could change the keys, or read them by changing
// the mode back.
func checkKeyFileOwner(path string, st os.FileInfo) error {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); s.Uid != 0 && int(s.Uid) != euid {
		return fmt.Errorf("%s belongs to uid %d, neither this process's user (uid %d) nor root: that user could change the keys; chown it to uid %d or root (chown %d %s)",
			path, s.Uid, euid, euid, euid, path)
	}
	return nil
}
