package graceful

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// controlUpgradeSlack is added to the upgrade timeout for an answer to reload.
const controlUpgradeSlack = time.Minute

// openControl claims or binds the control socket, if the process has one.
func (u *Upgrader) openControl() (net.Listener, error) {
	inherited := false
	for _, f := range u.set.Files() {
		inherited = inherited || f.Name == handoff.ControlName
	}
	path := u.cfg.ControlSocket
	if !inherited && path == "" {
		return nil, nil
	}
	ln, err := u.set.Listen(handoff.ControlName, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if !inherited {
		// Only the service's user (and root) may connect; peers are also checked.
		if err := fds.SetSocketMode(path, 0o600); err != nil {
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
	go control.Accept(tl, u.log, controlServer{u})
	return t
}

// controlServer is the Upgrader as its control socket answers for it.
type controlServer struct{ u *Upgrader }

func (s controlServer) Status() (Status, error) { return s.u.Status(), nil }

// Upgrade runs req for `handover reload` (control.Upgrade), `handover prepare`,
// `handover commit` or `handover abort`, and waits for its outcome.
func (s controlServer) Upgrade(req string) control.Outcome {
	u := s.u
	var r upgradeResult
	select {
	case r = <-u.ask(controlSteps[req], "control socket"):
	case <-u.done.ch:
		r.err = errStopping
	case <-time.After(u.cfg.UpgradeTimeout + controlUpgradeSlack):
		r.err = fmt.Errorf("no outcome within %s", u.cfg.UpgradeTimeout+controlUpgradeSlack)
	}
	stopping := errors.Is(r.err, errStopping) || errors.Is(r.err, errAbandoned)
	return control.Outcome{PID: r.pid, Generation: u.gen + 1, Err: r.err, Moved: r.moved, Stopping: stopping}
}

// controlSteps are the steps the control socket's requests ask for.
var controlSteps = map[string]step{control.Upgrade: stepUpgrade, control.Prepare: stepPrepare, control.Commit: stepCommit, control.Abort: stepAbort}

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
		if name == handoff.ControlName {
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
