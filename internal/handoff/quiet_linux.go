package handoff

import (
	"os"

	"golang.org/x/sys/unix"
)

// QuietFile makes an *os.File of fd, a descriptor this process owns, that the Go
// runtime's poller does not watch; the file keeps fd's number. It is for
// descriptors a process only holds or passes on: a listening socket kept for the
// next generation, a copy for a child, the sockets a master holds. Reads and
// writes through the file block their thread (and get EAGAIN from a non-blocking
// descriptor): make a listener or a connection of it to serve on it. When it
// fails, fd is as it was (the caller may fall back on os.NewFile).
//
// os.NewFile registers a non-blocking descriptor with the poller, until the file
// is closed. O_NONBLOCK belongs to the open socket, shared by every process that
// has a copy of it, and a Go program that serves on a socket makes it
// non-blocking. A listening socket registered by a process that does not accept
// on it wakes one of its sleeping threads for every connection that arrives: a
// holder (a `handover run` master; a generation with its reserve copies, or one
// that starts and has not listened yet) takes CPU in proportion to the load, from
// the process that serves. So os.NewFile is given fd's number while it refers to
// /dev/null, which blocks, and the socket is put back under that number once the
// file is made.
func QuietFile(fd int, name string) (*os.File, error) {
	saved, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	defer unix.Close(saved)
	f, err := newQuietFile(fd, name)
	if err != nil {
		return nil, err
	}
	// A dup3 onto an open descriptor cannot fail (EBUSY is for one being opened),
	// so the socket is back under fd.
	return f, dupTo(saved, fd)
}

// newQuietFile makes a file of number fd while fd refers to /dev/null (it is
// opened, and fd made a copy of it, here); the caller then puts what it wants
// under fd (dupTo). The file is close-on-exec.
func newQuietFile(fd int, name string) (*os.File, error) {
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("open /dev/null", err)
	}
	if fd < 0 {
		return os.NewFile(uintptr(null), name), nil
	}
	defer unix.Close(null)
	if err := dupTo(null, fd); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// dupTo makes to a close-on-exec copy of from.
func dupTo(from, to int) error {
	return os.NewSyscallError("dup3", unix.Dup3(from, to, unix.O_CLOEXEC))
}
