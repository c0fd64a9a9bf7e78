package graceful

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// pending returns the number of bytes waiting in c's receive queue (0 if unknown).
func pending(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n
}
