//go:build linux

package master

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// Two-phase upgrades: prepare, then commit. Only a child built with handover's
// library can be prepared: one that waits, not accepting, until it is told to
// serve. It says so in its READY=1 (X_HANDOVER=can-prepare); a program in another
// language accepts as soon as it starts, and a prepare is refused while such a
// child serves.
//
//	prepare   a new child is started as for an upgrade, with the read end of a pipe
//	          among its descriptors (handoff.PrepareName): the library holds its
//	          listeners and says READY=1 with X_HANDOVER=prepared once its start-up
//	          is done. The master answers the prepare with its PID; the serving child
//	          serves alone. A new child that says READY=1 without waiting (another
//	          build, which accepts at once) gets the stop signal and drains; the
//	          prepare fails (cause cannot_prepare).
//	commit    the master writes handoff.CommitLine into the pipe (the child starts
//	          accepting) and the child takes over, as after an upgrade: the old one
//	          gets the stop signal. systemd hears RELOADING=1, then READY=1.
//	abort     the prepared child (or one being prepared) is killed with its process
//	          group and reaped; the abort is answered then (outcome aborted).
//	timeout   a child prepared for longer than Config.PrepareTimeout is aborted
//	          (cause prepare_timeout).
//
// A serving child that exits while another is prepared is replaced by it at once:
// the prepared child is committed.

// Causes of a two-phase upgrade's failures (the record's Reason).
const (
	causeAborted        = "aborted"
	causePrepareTimeout = "prepare_timeout"
	causeCannotPrepare  = "cannot_prepare"
)

var errNoPrepared = errors.New("no prepared child: run handover prepare first")

func (m *machine) onUpgradeRequest(ev upgradeRequest) {
	switch ev.req {
	case control.Prepare:
		m.beginUpgrade(ev.trigger, true, ev.reply)
	case control.Commit:
		m.commit(ev.trigger, ev.reply)
	case control.Abort:
		m.abort(ev.trigger, ev.reply)
	default:
		m.beginUpgrade(ev.trigger, false, ev.reply)
	}
}

// refusal says why an upgrade (a prepare, with prepare) cannot start now, with the
// reason the log names; a nil error if it can.
func (m *machine) refusal(prepare bool) (string, error) {
	switch {
	case m.stopping:
		return "stopping", errStopping
	case m.up != nil && m.state == statePrepared:
		return "prepared", fmt.Errorf("a prepared child (PID %d) waits for its commit: run handover commit or handover abort first", m.cand.pid)
	case m.up != nil:
		return "in_progress", fmt.Errorf("one is already in progress (new child PID %d)", m.cand.pid)
	case m.serving == nil:
		return "not_ready", errors.New("no child is serving yet (the program is starting or restarting; see handover status)")
	case prepare && !m.serving.canPrepare:
		return "cannot_prepare", fmt.Errorf("the serving child (PID %d) cannot be prepared: only a program built with handover's library (Go) waits, not accepting, until it is committed; a program in another language accepts as soon as it starts. Use handover reload", m.serving.pid)
	}
	return "", nil
}

// refuse logs why a request of an upgrade's cannot run (reason names it) and
// answers it.
func (m *machine) refuse(trigger, reason string, err error, reply chan<- control.Outcome) {
	m.log.Warn("upgrade refused", "event", "upgrade_refused", "reason", reason, "trigger", trigger)
	if reply != nil {
		reply <- control.Outcome{Err: fmt.Errorf("upgrade refused: %w", err), Stopping: reason == "stopping"}
	}
}

// onPrepared handles the READY=1 of c, a candidate started to be prepared: waits
// says whether it said it waits for its commit (X_HANDOVER=prepared).
func (m *machine) onPrepared(c *child, waits bool) {
	if !waits {
		m.cannotPrepare(c)
		return
	}
	if !c.prepared.IsZero() {
		return // said READY=1 again
	}
	c.stopTimers()
	c.prepared = time.Now()
	m.state = statePrepared
	if r := c.rec; r != nil {
		r.Prepared, r.PrepareSeconds = c.prepared, c.prepared.Sub(r.Start).Seconds()
	}
	m.log.Info("new child prepared: ready, not accepting; waiting for its commit", "event", "prepared", "child", c.pid, "gen", c.gen,
		"took", c.prepared.Sub(c.started).Round(time.Microsecond).String(), "timeout", m.cfg.PrepareTimeout.String())
	m.sd("STATUS=" + m.statusLine())
	answer(m.up.waiters, control.Outcome{PID: c.pid, Generation: c.gen})
	m.up.waiters = nil
	c.timers = append(c.timers, m.after(m.cfg.PrepareTimeout, timerEvent{timerPrepare, c}))
}

// cannotPrepare ends c, a candidate started to be prepared that accepts already (it
// said READY=1 without waiting): it gets the stop signal and drains what it
// accepted, SIGKILL at its drain deadline; its exit fails the prepare.
func (m *machine) cannotPrepare(c *child) {
	c.stopTimers()
	c.role, c.failCause = roleFailed, causeCannotPrepare
	c.failReason = "said READY=1 without waiting to be committed: it accepts as soon as it starts (a program not built with handover's library, or an older build of it), so it cannot be prepared; it got the stop signal and drained. Use handover reload"
	closeCommit(c)
	m.log.Warn("the new child does not wait to be committed: stopping it", "event", "child_stop", "child", c.pid, "gen", c.gen, "signal", signalName(m.cfg.StopSignal))
	c.stopSent = true
	c.stoppedAt = time.Now()
	if err := m.signal(c, m.cfg.StopSignal, false); err != nil {
		m.kill(c)
	}
	c.timers = append(c.timers, m.after(m.cfg.DrainTimeout, timerEvent{timerDrain, c}))
}

// commit makes the prepared child serve; reply hears the outcome once it took over.
func (m *machine) commit(trigger string, reply chan<- control.Outcome) {
	c := m.cand
	if m.state != statePrepared || c == nil || c.prepared.IsZero() {
		err := errNoPrepared
		if m.up != nil && m.up.prepare && !m.stopping {
			err = errors.New("the new child is not ready yet: commit once handover prepare has answered")
		}
		m.refuse(trigger, "not_prepared", err, reply)
		return
	}
	if reply != nil {
		m.up.waiters = append(m.up.waiters, reply)
	}
	m.commitPrepared(c, trigger)
}

// commitPrepared lets c, the prepared child, accept, and makes it the serving child.
func (m *machine) commitPrepared(c *child, why string) {
	c.stopTimers()
	m.up.committed = time.Now()
	_, err := c.commit.WriteString(handoff.CommitLine)
	closeCommit(c)
	if err != nil {
		// It is dying: its exit fails the upgrade, and answers the waiters.
		m.log.Warn("could not commit the prepared child", "event", "commit", "child", c.pid, "why", why, "err", err)
		return
	}
	m.log.Info("committing the prepared child", "event", "commit", "child", c.pid, "gen", c.gen, "why", why,
		"waited", m.up.committed.Sub(c.prepared).Round(time.Millisecond).String())
	m.sd("RELOADING=1\n" + sdnotify.MonotonicUsec())
	m.takeOver(c, "commit")
}

// abort ends the prepared child, or the one being prepared: reply hears its PID once
// it is dead and reaped.
func (m *machine) abort(trigger string, reply chan<- control.Outcome) {
	c := m.cand
	if m.up == nil || !m.up.prepare || c == nil || c.role != roleCandidate {
		m.refuse(trigger, "not_prepared", errNoPrepared, reply)
		return
	}
	if reply != nil {
		m.up.aborts = append(m.up.aborts, reply)
	}
	m.endPrepared(c, causeAborted, "was aborted (handover abort)")
}

// prepareTimedOut aborts c if it is still prepared.
func (m *machine) prepareTimedOut(c *child) {
	if c != m.cand || c.reaped || c.killed || c.prepared.IsZero() {
		return
	}
	m.endPrepared(c, causePrepareTimeout, fmt.Sprintf("waited for its commit longer than %s (the prepare timeout) and was aborted", m.cfg.PrepareTimeout))
}

// endPrepared kills c, a child being prepared, with its process group; its exit
// ends the upgrade (candidateFailed).
func (m *machine) endPrepared(c *child, cause, reason string) {
	c.stopTimers()
	c.role, c.failCause, c.failReason = roleFailed, cause, reason
	closeCommit(c)
	m.kill(c)
}

// canPrepare records what child c says of itself in a notification (X_HANDOVER):
// whether it can be prepared, and whether it waits, prepared.
func canPrepare(c *child, fields []Field) (waits bool) {
	for _, f := range fields {
		if f.Key == handoff.NotifyField && (f.Value == handoff.CanPrepare || f.Value == handoff.Prepared) {
			c.canPrepare = true
			waits = waits || f.Value == handoff.Prepared
		}
	}
	return waits
}

// closeCommit closes the master's end of c's commit pipe, if any.
func closeCommit(c *child) {
	if c.commit != nil {
		c.commit.Close()
		c.commit = nil
	}
}

// commitPipe makes a commit pipe: the read end (close-on-exec, for the child's
// spawn) and the master's write end.
func commitPipe() (int, *os.File, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return 0, nil, err
	}
	return p[0], os.NewFile(uintptr(p[1]), "commit-pipe"), nil
}
