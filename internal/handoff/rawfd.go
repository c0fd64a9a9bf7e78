package handoff

import "os"

// RawFD returns f's descriptor for a system call made while f is open, without
// changing its blocking mode (os.File.Fd makes a non-blocking one blocking, for
// every process that shares its open file: a socket passed on would block its
// other holders).
func RawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(d uintptr) { fd = int(d) }); err != nil {
		return -1, err
	}
	return fd, nil
}
