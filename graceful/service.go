package graceful

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
)

// What the state loop tells the service manager (sd_notify), writes to the PID
// file, and logs about the sockets: helpers of upgrader.go, run on the loop.

// notify sends state to the service manager, if there is one.
func (u *Upgrader) notify(state string) {
	if err := u.notifier.Send(state); err != nil {
		u.log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
	}
}

func (u *Upgrader) notifyStatus() {
	// After a handover this process is no longer the main one: systemd would
	// reject (and log) its notifications.
	if u.notifier == nil || !u.main {
		return
	}
	if line := u.statusLine(); line != u.lastStat {
		u.lastStat = line
		u.notify("STATUS=" + line)
	}
}

// statusLine is the one-line status systemctl status shows.
func (u *Upgrader) statusLine() string {
	s := u.status()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: generation %d, PID %d", s.State, s.Generation, s.PID)
	switch u.st {
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

func (u *Upgrader) writePIDFile() {
	if u.cfg.PIDFile == "" {
		return
	}
	if err := pidfile.Write(u.cfg.PIDFile, os.Getpid()); err != nil {
		u.log.Error("writing the PID file", "event", "pidfile_failed", "err", err)
	}
}

// startWatchdog pings the service manager's watchdog at half its interval while this
// process is the main one.
func (u *Upgrader) startWatchdog() {
	if u.watchdog == nil || u.notifier == nil || u.wdStop != nil {
		return
	}
	stop := make(chan struct{})
	u.wdStop = stop
	every := u.watchdog.Interval / 2
	n := u.notifier
	log := u.log
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if err := n.Send("WATCHDOG=1"); err != nil {
				log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
			}
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	}()
}

func (u *Upgrader) stopWatchdog() {
	if u.wdStop != nil {
		close(u.wdStop)
		u.wdStop = nil
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

func removeInt(s []int, v int) []int {
	out := s[:0]
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}
