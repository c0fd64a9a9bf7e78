package fds

import (
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SetSocketMode sets the permission bits of the unix socket file at path, which
// this process has just bound, without following a symlink. (os.Chmod follows one:
// whoever can write to the socket's directory could replace the socket between the
// bind and the chmod by a symlink to any file, and have that file's mode changed,
// by root if the service runs as root.)
//
// The final component is opened with O_PATH|O_NOFOLLOW: a symlink is opened
// itself, not followed. The file opened must be a socket owned by this process's
// effective user, as bind creates it; anything else (a symlink, another file,
// another user's socket put there in the meantime) is refused with an error and
// left as it is. The mode is then set on that very inode through
// /proc/self/fd/N, whatever happens at path meanwhile. Alternatives that do not
// work: fchmod on the socket's own descriptor changes the socket's inode in sockfs,
// not the file; fchmodat(AT_EMPTY_PATH) needs Linux 6.6; a restrictive umask around
// bind is process-wide (other goroutines' files would get it); binding in a
// private directory and renaming into place leaves the temporary path as the
// socket's address, which every generation's listener would then unlink.
func SetSocketMode(path string, mode fs.FileMode) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unix socket %s: opening it to set its mode: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		what := "something else"
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			what = "a symlink"
		}
		return fmt.Errorf("unix socket %s: replaced by %s after it was bound (is someone else writing to its directory?); its mode is not changed", path, what)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("unix socket %s: owned by uid %d, not by this process's user (%d): replaced after it was bound (is someone else writing to its directory?); its mode is not changed", path, st.Uid, os.Geteuid())
	}
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(mode.Perm())); err != nil {
		return fmt.Errorf("unix socket %s: setting its mode (through /proc/self/fd, which needs /proc mounted): %w", path, err)
	}
	return nil
}
