package control

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Timeouts of a control socket's connection.
const (
	// readTimeout bounds how long a client may take to send its request.
	readTimeout = 10 * time.Second
	// writeTimeout bounds the write of an answer.
	writeTimeout = 2 * time.Second
	// acceptPause is the wait before accepting again after a failed accept.
	acceptPause = 10 * time.Millisecond
)

// Accept answers every connection of ln, the control socket, each in a goroutine of
// its own (Serve), until ln is closed. An accept that fails otherwise (the process
// is out of descriptors) is tried again after a pause.
func Accept(ln net.Listener, log *slog.Logger, s Server) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(acceptPause)
			continue
		}
		go Serve(c, log, s)
	}
}

// Serve answers one connection c of a control socket, then closes it. A peer that
// runs neither as this process's user nor as root is refused, and log says so
// (event=control_refused). Otherwise the request is read (within 10 s) and s's
// answer to it (Answer) is written.
func Serve(c net.Conn, log *slog.Logger, s Server) {
	defer c.Close()
	reply := func(r Response) {
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		c.Write(Encode(r))
	}
	uid, ok, err := PeerAllowed(c)
	if err != nil || !ok {
		log.Warn("control socket: refused a peer", "event", "control_refused", "uid", uid, "err", err)
		reply(Response{Error: fmt.Sprintf("permission denied: uid %d may not control this service (only uid %d or root)", uid, os.Geteuid())})
		return
	}
	c.SetReadDeadline(time.Now().Add(readTimeout))
	req, err := ReadRequest(c)
	if err != nil {
		reply(Response{Error: "bad request: " + err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	reply(Answer(req, s))
}

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
