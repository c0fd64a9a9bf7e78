//go:build linux

package master

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

// An upgrade and the children it starts: a new child is started (startCandidate),
// takes over when ready (takeOver) or fails (candidateFailed, upgradeFailed); a new
// build that dies during its probation is replaced by the last good build
// (upgradeDied, startReplacement).

// errStopping is why an upgrade is refused, or abandoned, while the master stops.
var errStopping = errors.New("handover run is stopping")

// startCandidate starts the next generation: the first child and an upgrade's from
// PROG as it is on disk now; a restart or a replacement from the last good build,
// kept open. rec, if not nil, is the record of the upgrade or replacement.
func (m *machine) startCandidate(trigger string, rec *wire.Upgrade) error {
	kept := (trigger == triggerRestart || trigger == triggerReplacement) && m.lastGood != nil
	var b *build
	if kept {
		b = m.lastGood
	} else {
		exe, err := m.resolve(m.cfg.Prog)
		if err != nil {
			return err
		}
		if b, err = m.open(exe); err != nil {
			return err
		}
		b = m.dedupe(b)
	}
	m.hold(b)
	c := &child{gen: m.gen + 1, role: roleCandidate, trigger: trigger, started: time.Now(), exe: b.path, build: b, kept: kept, rec: rec,
		upgrade: trigger != triggerStart && trigger != triggerRestart && trigger != triggerReplacement, stored: slices.Clone(m.store)}
	if kept {
		c.launch = m.goodLaunch
	} else {
		c.launch = m.launch(b)
	}
	var commitEnd int
	if c.upgrade && m.up != nil && m.up.prepare {
		// The child's end of the commit pipe, passed after the fd store.
		var err error
		if commitEnd, c.commit, err = m.pipe(); err != nil {
			m.drop(b)
			return fmt.Errorf("a commit pipe for the prepared child: %w", err)
		}
		c.stored = append(c.stored, storedFD{name: handoff.PrepareName, fd: commitEnd})
		defer unix.Close(commitEnd)
	}
	if err := m.spawn(c); err != nil {
		m.drop(b)
		closeCommit(c)
		return err
	}
	m.children[c.pid] = c
	m.cand = c
	c.timers = append(c.timers, m.after(m.cfg.UpgradeTimeout, timerEvent{timerReadyTimeout, c}))
	if m.cfg.ReadyAfter > 0 {
		c.timers = append(c.timers, m.after(m.cfg.ReadyAfter, timerEvent{timerReadyAfter, c}))
	}
	from := "disk"
	if kept {
		from = "last_good"
	}
	m.log.Info("child started", "event", "child_started", "child", c.pid, "gen", c.gen, "trigger", trigger, "exe", b.String(), "build", from,
		"args", strings.Join(c.launch.args, " "), "dir", c.launch.dir)
	return nil
}

// takeOver makes candidate c, now ready (via says how it was seen ready: "notify",
// "delay"), the serving child; the one it replaces drains.
func (m *machine) takeOver(c *child, via string) {
	c.stopTimers()
	m.cand = nil
	old := m.serving
	c.role, c.readyAt = roleServing, time.Now()
	if b := m.ran(c.build, c.pid); b != nil {
		// The file at PROG's path was replaced between its opening and the exec.
		m.log.Info("the child runs the file now at its path, not the one opened for it", "event", "build_reopened", "child", c.pid, "exe", b.String())
		b = m.dedupe(b)
		m.hold(b)
		m.drop(c.build)
		c.build = b
	}
	m.serving, m.gen = c, c.gen
	m.state = stateServing
	m.applyHeld(c)
	took := c.readyAt.Sub(c.started).Round(time.Microsecond).String()
	m.log.Info("child ready", "event", "child_ready", "child", c.pid, "gen", c.gen, "via", via, "took", took)
	switch {
	case c.upgrade:
		// A new build: on probation (a restart or replacement runs the last good build).
		c.onProbation = true
		c.timers = append(c.timers, m.after(m.probation(), timerEvent{timerProbation, c}))
	case m.lastGood == nil:
		m.setLastGood(c) // the first child: nothing else to fall back on
	}
	if old != nil {
		m.stopChild(old, m.cfg.StopSignal)
		m.limitDraining()
	}
	if rec := c.rec; rec != nil {
		rec.To, rec.Generation, rec.End, rec.Outcome = c.pid, c.gen, c.readyAt, wire.OK
		rec.HandoverSeconds = c.readyAt.Sub(rec.Start).Seconds()
		if !c.prepared.IsZero() && m.up != nil {
			// A two-phase upgrade: its handover is the commit's.
			rec.Committed, rec.HandoverSeconds = m.up.committed, c.readyAt.Sub(m.up.committed).Seconds()
		}
		m.record(rec)
		if old != nil {
			old.drainRec = rec
		}
	}
	up := m.up
	if up != nil {
		m.up = nil
		m.lastErr = nil
		from := 0
		if old != nil {
			from = old.pid
		}
		took := time.Since(up.started)
		if !up.committed.IsZero() {
			took = time.Since(up.committed) // a two-phase upgrade's: the commit's
		}
		m.log.Info("handed over", "event", "handed_over", "from", from, "to", c.pid, "gen", c.gen, "took", took.Round(time.Microsecond).String())
	}
	// systemd first, then whoever asked: when `handover reload` (ExecReload=) returns,
	// systemd has the new status (it reads notifications before SIGCHLD).
	if !m.everReady {
		m.everReady = true
		m.sd("READY=1\nMAINPID=" + strconv.Itoa(m.pid) + "\nSTATUS=" + m.statusLine())
	} else {
		m.sd("READY=1\nSTATUS=" + m.statusLine())
	}
	if up != nil {
		if m.cfg.Settle > 0 {
			// Answered once it has served Settle, or with the reason if it dies first.
			c.waiters = up.waiters
			c.timers = append(c.timers, m.after(m.cfg.Settle, timerEvent{timerSettle, c}))
		} else {
			answer(up.waiters, control.Outcome{PID: c.pid, Generation: c.gen})
		}
	}
}

// settled answers those waiting for c's upgrade: it took over and did not die.
func (m *machine) settled(c *child) {
	answer(c.waiters, control.Outcome{PID: c.pid, Generation: c.gen})
	c.waiters = nil
}

// answer sends o to every waiter.
func answer(waiters []chan<- control.Outcome, o control.Outcome) {
	for _, w := range waiters {
		w <- o
	}
}

// limitDraining kills the oldest old children, at once, while more than
// MaxDraining drain. A deploy is not refused for a long-lived connection; those
// connections would be cut at their deadline anyway, the oldest first.
func (m *machine) limitDraining() {
	var old []*child
	for _, c := range m.children {
		if c.role == roleOld && !c.reaped && !c.killed {
			old = append(old, c)
		}
	}
	if len(old) <= m.cfg.MaxDraining {
		return
	}
	slices.SortFunc(old, func(a, b *child) int { return a.gen - b.gen })
	for _, c := range old[:len(old)-m.cfg.MaxDraining] {
		m.log.Warn("more old children drain than -max-draining: killing the oldest", "event", "too_many_draining",
			"child", c.pid, "gen", c.gen, "draining", len(old), "max", m.cfg.MaxDraining, "drained_for", time.Since(c.stoppedAt).Round(time.Millisecond).String())
		c.killWhy = killedMaxDraining
		m.kill(c)
	}
}

// beginUpgrade starts an upgrade, or a two-phase upgrade's prepare, or says why it
// cannot. reply, if not nil, gets the outcome.
func (m *machine) beginUpgrade(trigger string, prepare bool, reply chan<- control.Outcome) {
	if reason, err := m.refusal(prepare); err != nil {
		m.refuse(trigger, reason, err, reply)
		return
	}
	m.log.Info("upgrade starting", "event", "upgrade_start", "trigger", trigger, "prepare", prepare)
	now := time.Now()
	m.up = &upgrade{trigger: trigger, started: now, prepare: prepare, rec: &wire.Upgrade{Trigger: trigger, Start: now, From: m.serving.pid, Generation: m.gen + 1}}
	if reply != nil {
		m.up.waiters = append(m.up.waiters, reply)
	}
	m.state = stateUpgrading
	if prepare {
		m.sd("STATUS=" + m.statusLine()) // systemd hears RELOADING=1 at the commit
	} else {
		m.sd("RELOADING=1\n" + sdnotify.MonotonicUsec() + "\nSTATUS=" + m.statusLine())
	}
	if err := m.startCandidate(trigger, m.up.rec); err != nil {
		f := &proc.Failure{Cause: "start", Err: err}
		m.recordFailure(m.up.rec, f)
		m.upgradeFailed(f, nil)
	}
}

// upgradeFailed ends the upgrade in progress, which failed as f (with c, its new
// child, if it started one); the serving child serves on.
func (m *machine) upgradeFailed(f *proc.Failure, c *child) {
	up := m.up
	m.up = nil
	args := []any{"cause", f.Cause, "err", firstLine(f.Err.Error())}
	if c != nil {
		args = append(args, "child", c.pid)
		answer(up.aborts, control.Outcome{PID: c.pid, Generation: c.gen})
	}
	switch f.Cause {
	case causeAborted:
		m.log.Info("prepared child aborted; the serving child serves on", append([]any{"event", "upgrade_aborted"}, args...)...)
	case causePrepareTimeout:
		m.lastErr = f
		m.log.Warn("the prepared child waited too long for its commit: aborted; the serving child serves on", append([]any{"event", "upgrade_aborted"}, args...)...)
	default:
		m.lastErr = f
		m.log.Warn("upgrade failed; the serving child serves on", append([]any{"event", "upgrade_failed"}, args...)...)
	}
	if m.serving != nil {
		m.state = stateServing
		m.sd("READY=1\nSTATUS=" + m.statusLine())
	} else {
		// The serving child died meanwhile: restart.
		m.scheduleRestart()
	}
	answer(up.waiters, control.Outcome{Err: fmt.Errorf("upgrade failed: %w", f)})
}

// recordFailure completes rec, the record of an upgrade or replacement that failed
// as f, and lists it.
func (m *machine) recordFailure(rec *wire.Upgrade, f *proc.Failure) {
	rec.End, rec.Outcome, rec.Reason, rec.Error, rec.Stderr = time.Now(), wire.Failed, f.Cause, f.Err.Error(), strings.Join(f.Stderr, "\n")
	switch f.Cause {
	case "abandoned":
		rec.Outcome = wire.Abandoned
	case causeAborted, causePrepareTimeout:
		rec.Outcome = wire.Aborted
	}
	m.record(rec)
}

// candidateFailed handles a candidate that exited (or was killed and reaped) before it
// was ready.
func (m *machine) candidateFailed(c *child) {
	m.clearLeftovers(c, "leftovers_killed")
	cause, reason := c.failCause, c.failReason
	if cause == "" {
		cause, reason = "exited", fmt.Sprintf("exited before it was ready (%s)", proc.Describe(c.status))
	}
	f := &proc.Failure{Cause: cause, Err: fmt.Errorf("new child PID %d (%s, generation %d) %s", c.pid, c.exe, c.gen, reason), Stderr: c.out.Lines()}
	if r := c.rec; r != nil {
		r.To, r.Generation = c.pid, c.gen
		m.recordFailure(r, f)
		c.rec = nil
	}
	switch {
	case m.up != nil:
		m.upgradeFailed(f, c)
	case m.stopping:
		// Abandoned, or stopped before it was ready: nothing to report.
	case !m.everReady:
		m.lastErr = f
		m.log.Error("the first child failed; exiting", "event", "start_failed", "cause", cause, "child", c.pid, "err", f.Err)
		m.exitCode = 1
		m.stopping, m.state = true, stateStopping
	default:
		m.lastErr = f
		m.log.Warn("restart failed", "event", "restart_failed", "cause", cause, "child", c.pid, "err", f.Err)
		m.scheduleRestart()
	}
}

// upgradeDied handles the exit of c, a new build's child, during its probation: its
// upgrade died. The last good build is started in its place, at once; the bad build
// is not started again (the next upgrade the operator asks for is a normal one).
func (m *machine) upgradeDied(c *child) {
	c.onProbation = false
	after := c.reapedAt.Sub(c.readyAt).Round(time.Millisecond)
	what := fmt.Sprintf("new child PID %d (%s, generation %d) died %s after taking over (%s)", c.pid, c.build, c.gen, after, proc.Describe(c.status))
	good := "no last good build is kept"
	if m.lastGood != nil {
		good = "the last good build (" + m.lastGoodString() + ") is started again"
	}
	f := &proc.Failure{Cause: "died", Err: fmt.Errorf("%s; %s", what, good), Stderr: c.out.Lines()}
	m.lastErr = f
	if r := c.rec; r != nil {
		r.Outcome, r.Reason, r.Error, r.Stderr = wire.Died, f.Cause, what, strings.Join(f.Stderr, "\n")
	}
	m.log.Error("the new child died after taking over; starting the last good build", "event", "upgrade_died",
		"child", c.pid, "gen", c.gen, "after", after.String(), "status", proc.Describe(c.status), "last_good", m.lastGoodString())
	answer(c.waiters, control.Outcome{Err: f})
	c.waiters = nil
	if m.up != nil {
		// Another upgrade is under way: its new child takes over when ready (or a
		// restart, from the last good build, follows its failure); a prepared one
		// at once.
		if m.state == statePrepared {
			m.commitPrepared(m.cand, "the serving child exited")
			return
		}
		m.sd("STATUS=" + m.statusLine())
		return
	}
	m.startReplacement(c)
}

// startReplacement starts the last good build for dead, a child that died after
// taking over; should that fail, restarts follow with backoff.
func (m *machine) startReplacement(dead *child) {
	if m.stopping || m.restartT != nil || m.cand != nil {
		return
	}
	m.state = stateStarting
	now := time.Now()
	rec := &wire.Upgrade{Trigger: triggerReplacement, Start: now, From: dead.pid, Generation: m.gen + 1}
	if err := m.startCandidate(triggerReplacement, rec); err != nil {
		m.recordFailure(rec, &proc.Failure{Cause: "start", Err: err})
		m.lastErr = err
		m.log.Warn("restart failed", "event", "restart_failed", "cause", "start", "err", err)
		m.scheduleRestart()
		return
	}
	m.sd("STATUS=" + m.statusLine())
}
