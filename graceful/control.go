package graceful

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"golang.org/x/sys/unix"
)

// ControlName is the name of the control socket among the passed descriptors: give a
// socket unit's control socket FileDescriptorName=handover-control, or let the
// service bind Config.ControlSocket itself. Either way it is passed on to every new
// generation like the other listeners.
const ControlName = "handover-control"

// openControl claims or binds the control socket, if the process has one.
func (u *Upgrader) openControl() (net.Listener, error) {
	inherited := false
	for _, f := range u.set.Files() {
		inherited = inherited || f.Name == ControlName
	}
	path := u.cfg.ControlSocket
	if !inherited && path == "" {
		return nil, nil
	}
	if !inherited {
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
	}
	ln, err := u.set.Listen(ControlName, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if !inherited {
		// Only the service's user (and root) may connect; peers are also checked.
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: %w", err)
		}
	}
	return ln, nil
}

// removeStaleSocket removes a unix socket file at path that nothing listens on (left
// by a generation that was killed): the control socket's path belongs to the service.
// Anything else at path is an error.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: a %s is in the way; remove it", path, st.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another process is serving it (is the service already running?)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	return os.Remove(path)
}

// serveControl answers control requests until the process stops accepting.
func (u *Upgrader) serveControl(ln net.Listener) {
	go func() {
		<-u.exit
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go u.handleControl(c)
	}
}

// peerAllowed reports whether the peer runs as our user or as root.
func peerAllowed(c net.Conn) (uid int, ok bool, err error) {
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

func (u *Upgrader) handleControl(c net.Conn) {
	defer c.Close()
	reply := func(r control.Response) {
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(control.Encode(r))
	}
	uid, ok, err := peerAllowed(c)
	if err != nil || !ok {
		u.log.Warn("control socket: refused a peer", "event", "control_refused", "uid", uid, "err", err)
		reply(control.Response{Error: fmt.Sprintf("permission denied: uid %d may not control this service (only uid %d or root)", uid, os.Geteuid())})
		return
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	req, err := control.ReadRequest(c)
	if err != nil {
		reply(control.Response{Error: "bad request: " + err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	switch req {
	case control.Status:
		st := u.Status()
		b, err := json.Marshal(st)
		if err != nil {
			reply(control.Response{Error: "encoding the status: " + err.Error()})
			return
		}
		reply(control.Response{OK: true, PID: st.PID, Generation: st.Generation, Status: b})
	case control.Upgrade:
		done := make(chan struct{})
		u.do(func() {
			u.beginUpgrade("control socket", func(r upgradeResult) {
				switch {
				case r.err == nil:
					reply(control.Response{OK: true, PID: r.pid, Generation: u.gen + 1})
				case r.moved != 0:
					reply(control.Response{Moved: r.moved, Error: r.err.Error()})
				default:
					stopping := errors.Is(r.err, ErrStopping) || errors.Is(r.err, errAbandoned)
					reply(control.Response{Error: r.err.Error(), Stopping: stopping})
				}
				close(done)
			})
		})
		select {
		case <-done:
		case <-time.After(u.cfg.UpgradeTimeout + time.Minute):
		}
	}
}

// storeFDs hands the process's sockets to systemd's fd store (FDSTORE=1), so that
// they survive `systemctl restart` and crashes. systemd ignores a socket it already
// stores.
func (u *Upgrader) storeFDs() {
	if !u.cfg.FDStore || u.notifier == nil {
		return
	}
	kids, err := u.set.ForChild()
	if err != nil {
		u.log.Warn("fd store: could not duplicate the sockets", "event", "fdstore_failed", "err", err)
		return
	}
	defer kids.Close()
	stored := 0
	for i, f := range kids.Files {
		name := kids.Names[i]
		if name == ControlName {
			// Its file lives in the service's runtime directory, which a restart
			// removes: a new one is bound instead.
			continue
		}
		if name == "" {
			name = "unknown"
		}
		if err := u.notifier.Send("FDSTORE=1\nFDNAME="+name, int(f.Fd())); err != nil {
			u.log.Warn("fd store: systemd refused a socket", "event", "fdstore_failed", "name", name, "err", err)
			continue
		}
		stored++
	}
	u.log.Info("stored sockets in systemd's fd store", "event", "fdstore", "count", stored)
}
