package handoff

import (
	"os"

	"golang.org/x/sys/unix"
)

// A descriptor this process only holds or passes on (a listening socket kept for
// the next generation, a copy for a child, a socket a master holds) must not be
// watched by the Go runtime's poller. os.NewFile registers a non-blocking
// descriptor with it, and O_NONBLOCK belongs to the open socket, which every
// process that serves on it shares: a socket passed on by a Go program is
// non-blocking. Registered, a listening socket that nothing here accepts on
// wakes a sleeping thread of this process for every connection that arrives, so
// an idle process burns CPU in proportion to the load, and takes it from the one
// that serves (a `handover run` master, a generation that drains or waits in
// probation, a new generation as it starts). The registration lasts until the
// file is closed, and nothing else takes it back.
//
// quietFile and newQuietFile make such files: os.NewFile is given the descriptor
// number while it refers to /dev/null, which blocks, and the socket is put back
// under that number once the file is made.

// QuietFile makes an *os.File of fd, a descriptor this process owns, that the
// runtime's poller does not watch (see above); the file keeps fd's number. For
// holding and passing descriptors on: reads and writes through the file block
// their thread, and a file of a non-blocking descriptor returns EAGAIN.
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
