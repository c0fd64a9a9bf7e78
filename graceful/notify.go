package graceful

import (
	"fmt"
	"os"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// What the machine tells the service manager (sd_notify: STATUS=, the watchdog, the
// sockets for its fd store) and writes to the PID file.

// service is the machine's part of the service manager's protocol.
type service struct {
	lastStat string // the last STATUS= sent
	// handing: the MAINPID= of a new generation is on its way to the service
	// manager, or there already. Until the attempt ends, this process may no
	// longer be the main one: systemd would refuse (and log) what it says, so it
	// says nothing (no STATUS=, no watchdog ping) unless the upgrade fails.
	handing  bool
	watchdog *sdnotify.Watchdog
	wdStop   chan struct{} // closed to stop the pings
	wdDone   chan struct{} // closed once the pings stopped
}

// notify sends state to the service manager, if there is one.
func (m *machine) notify(state string) {
	if m.notifier == nil {
		return
	}
	if err := m.notifier.Send(state); err != nil {
		m.log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
	}
}

func (m *machine) notifyStatus() {
	// After a handover this process is no longer the main one: systemd would
	// reject (and log) its notifications.
	if m.notifier == nil || !m.main || m.svc.handing {
		return
	}
	if line := m.statusLine(); line != m.svc.lastStat {
		m.svc.lastStat = line
		m.notify("STATUS=" + line)
	}
}

// statusLine is the one-line status systemctl status shows.
func (m *machine) statusLine() string {
	s := m.status()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: generation %d, PID %d", s.State, s.Generation, s.PID)
	switch m.st {
	case draining, stopping:
		fmt.Fprintf(&b, ", draining %d connections", s.Connections.Total())
	default:
		fmt.Fprintf(&b, ", %d connections", s.Connections.Total())
	}
	if s.LastError != "" {
		fmt.Fprintf(&b, "; last upgrade failed: %s", s.LastError)
	}
	return handoff.OneLine(b.String())
}

func (m *machine) writePIDFile() {
	if m.cfg.PIDFile == "" {
		return
	}
	if err := pidfile.Write(m.cfg.PIDFile, os.Getpid()); err != nil {
		m.log.Error("writing the PID file", "event", "pidfile_failed", "err", err)
	}
}

// startWatchdog pings the service manager's watchdog at half its interval while this
// process is the main one.
func (m *machine) startWatchdog() {
	if m.svc.watchdog == nil || m.notifier == nil || m.svc.wdStop != nil {
		return
	}
	stop, done := make(chan struct{}), make(chan struct{})
	m.svc.wdStop, m.svc.wdDone = stop, done
	every := m.svc.watchdog.Interval / 2
	n, clk, log := m.notifier, m.clock, m.log
	go func() {
		defer close(done)
		for {
			if err := n.Send("WATCHDOG=1"); err != nil {
				log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
			}
			t := clk.NewTimer(every)
			select {
			case <-t.C():
			case <-stop:
				t.Stop()
				return
			}
		}
	}()
}

func (m *machine) stopWatchdog() {
	if m.svc.wdStop != nil {
		close(m.svc.wdStop)
		m.svc.wdStop = nil
	}
}

func describeHeld(hs []fds.Held) string {
	parts := make([]string, 0, len(hs))
	for _, h := range hs {
		name := h.Name
		if name == "" {
			name = "unnamed"
		}
		addr := "?"
		if h.Addr != nil {
			addr = h.Addr.Network() + ":" + h.Addr.String()
		}
		parts = append(parts, fmt.Sprintf("%s=%s (%s)", name, addr, h.Source))
	}
	return strings.Join(parts, ", ")
}

func closeMessages(ms []handoff.Message) {
	for _, m := range ms {
		closeFiles(m.Files)
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
