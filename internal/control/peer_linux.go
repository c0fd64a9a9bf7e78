package control

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// PeerAllowed reports whether the peer of c, a unix socket connection (or one
// wrapping it: NetConn), runs as this process's user or as root (SO_PEERCRED), the
// only peers a control socket answers; uid is the peer's.
func PeerAllowed(c net.Conn) (uid int, ok bool, err error) {
	if nc, isWrapped := c.(interface{ NetConn() net.Conn }); isWrapped {
		c = nc.NetConn()
	}
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return -1, false, errors.New("not a unix socket")
	}
	rc, err := uc.SyscallConn()
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
