package control

import (
	"errors"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// PeerAllowed reports whether the peer of c, a unix socket connection (or one
// wrapping it: NetConn), runs as this process's user or as root (SO_PEERCRED), the
// only peers a control socket answers; uid is the peer's.
func PeerAllowed(c net.Conn) (uid int, ok bool, err error) {
	rc, err := unixConn(c)
	if err != nil {
		return -1, false, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, false, err
	}
	if cerr != nil {
		return -1, false, cerr
	}
	uid = int(cred.Uid)
	return uid, uid == 0 || uid == os.Geteuid(), nil
}

// unixConn returns the descriptor of c, a unix socket connection (or one wrapping
// it: NetConn).
func unixConn(c net.Conn) (syscall.RawConn, error) {
	if nc, isWrapped := c.(interface{ NetConn() net.Conn }); isWrapped {
		c = nc.NetConn()
	}
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return nil, errors.New("not a unix socket")
	}
	return uc.SyscallConn()
}

// peerGone reports whether the peer of c, a unix socket connection, has closed its
// end: POLLHUP, which Linux reports on a unix stream socket once the peer's socket
// is released (closed, or its process gone). A peer that only shut down its writing
// side (shutdown(SHUT_WR), as socat does at the end of its input) can still read an
// answer: it has not gone.
func peerGone(c net.Conn) bool {
	rc, err := unixConn(c)
	if err != nil {
		return false
	}
	gone := false
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			gone = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return gone
}
