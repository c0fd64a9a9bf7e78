package graceful

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
)

// controlName is the name of the control socket among the passed descriptors: a
// socket unit's FileDescriptorName=handover-control, or the one the first generation
// bound (Config.ControlSocket). It is passed on to every new generation like the
// other listeners.
const controlName = "handover-control"

// controlUpgradeSlack is added to the upgrade timeout for an answer to reload.
const controlUpgradeSlack = time.Minute

// openControl claims or binds the control socket, if the process has one.
func (u *Upgrader) openControl() (net.Listener, error) {
	inherited := false
	for _, f := range u.set.Files() {
		inherited = inherited || f.Name == controlName
	}
	path := u.cfg.ControlSocket
	if !inherited && path == "" {
		return nil, nil
	}
	ln, err := u.set.Listen(controlName, "unix", path)
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

// serveControl answers control requests until the process has drained, and
// returns the socket's drain target: it is drained with the servers (and taken back
// with them). The machine calls it once the process is ready.
func (u *Upgrader) serveControl(ln net.Listener) *target {
	d := &Drainer{server: true}
	tl := d.Listener(ln)
	t := &target{d: d, internal: true}
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go u.handleControl(c)
		}
	}()
	return t
}

func (u *Upgrader) handleControl(c net.Conn) {
	control.Serve(c, u.log, u.answerControl)
}

// answerControl answers a control request.
func (u *Upgrader) answerControl(req string) control.Response {
	if req == control.Status {
		st := u.Status()
		return control.StatusResponse(st.PID, st.Generation, st)
	}
	var r upgradeResult
	select {
	case r = <-u.upgrade("control socket"):
	case <-u.done.ch:
		r.err = errStopping
	case <-time.After(u.cfg.UpgradeTimeout + controlUpgradeSlack):
		r.err = fmt.Errorf("no outcome within %s", u.cfg.UpgradeTimeout+controlUpgradeSlack)
	}
	switch {
	case r.err == nil:
		return control.Response{OK: true, PID: r.pid, Generation: u.gen + 1}
	case r.moved != 0:
		return control.Response{Moved: r.moved, Error: r.err.Error()}
	default:
		stopping := errors.Is(r.err, errStopping) || errors.Is(r.err, errAbandoned)
		return control.Response{Error: r.err.Error(), Stopping: stopping}
	}
}

// storeFDs hands the process's sockets to systemd's fd store (FDSTORE=1), so that
// they survive `systemctl restart` and crashes. systemd ignores a socket it already
// stores. Under a `handover run` master, which holds the sockets itself, nothing is
// stored.
func (m *machine) storeFDs() {
	if !m.cfg.FDStore || m.notifier == nil || m.set.Master() != 0 {
		return
	}
	kids, err := m.set.ForChild()
	if err != nil {
		m.log.Warn("fd store: could not duplicate the sockets", "event", "fdstore_failed", "err", err)
		return
	}
	defer kids.Close()
	stored := 0
	for i, f := range kids.Files {
		name := kids.Names[i]
		if name == controlName {
			// Its file lives in the service's runtime directory, which a restart
			// removes: a new one is bound instead.
			continue
		}
		if name == "" {
			name = "unknown"
		}
		if err := m.notifier.Send("FDSTORE=1\nFDNAME="+name, int(f.Fd())); err != nil {
			m.log.Warn("fd store: systemd refused a socket", "event", "fdstore_failed", "name", name, "err", err)
			continue
		}
		stored++
	}
	m.log.Info("stored sockets in systemd's fd store", "event", "fdstore", "count", stored)
}
