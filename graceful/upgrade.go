package graceful

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// The machine's side of an upgrade (attempt.go has the attempt's own): it starts an
// attempt, answers its "ready" with the go-ahead, and takes its outcome. A failure
// is reported; a handover makes this process drain.

// spawnSpec is what a new generation is started with.
type spawnSpec struct {
	child   childSpec
	reserve *fds.Child // the sockets kept for a replacement; nil: the process's own
	// batch makes the initial batch (see handoff.Message). It is called once the
	// new process has been started, while it starts: nothing in the batch is
	// needed before the new process reads it in New, after its runtime's start.
	batch func() []handoff.Message
}

// beginUpgrade starts an upgrade, or says why it cannot. reply, if not nil, is
// called on the machine with the outcome.
func (m *machine) beginUpgrade(trigger string, reply func(upgradeResult)) {
	m.startUpgrade(&attempt{trigger: trigger}, reply)
}

// startUpgrade starts a, an upgrade or a two-phase upgrade's prepare (a.prepare),
// or says why it cannot.
func (m *machine) startUpgrade(a *attempt, reply func(upgradeResult)) {
	if reason, moved, err := m.refusal(); err != nil {
		m.refuse(a.trigger, reason, moved, err, reply)
		return
	}
	m.log.Info("upgrade starting", "event", "upgrade_start", "trigger", a.trigger, "executable", m.exe, "prepare", a.prepare)
	if a.prepare {
		// Not RELOADING=1: the service manager hears of the upgrade at the commit.
		m.notify("STATUS=upgrading: preparing a new generation")
	} else {
		m.notify("RELOADING=1\n" + sdnotify.MonotonicUsec() + "\nSTATUS=upgrading: starting a new generation")
	}
	m.st = upgrading
	m.turn(carry.Upgrading)
	a.started = m.clock.Now()
	m.startAttempt(a, m.exe, reply)
}

// refuse logs why a request of an upgrade's (reason names it) cannot run and
// answers it.
func (m *machine) refuse(trigger, reason string, moved int, err error, reply func(upgradeResult)) {
	attrs := []any{"event", "upgrade_refused", "reason", reason, "trigger", trigger}
	if a := m.att; a != nil && !a.abandoned && a.pid != 0 {
		attrs = append(attrs, "child", a.pid)
	}
	if moved != 0 {
		attrs = append(attrs, "current", moved)
	}
	m.log.Warn("upgrade refused: "+err.Error(), attrs...)
	if reply != nil {
		reply(upgradeResult{err: err, moved: moved})
	}
}

// startAttempt starts a: its new generation runs path, with the process's sockets
// or with those kept for a replacement.
func (m *machine) startAttempt(a *attempt, path string, reply func(upgradeResult)) {
	a.ctx, a.cancel = context.WithCancelCause(context.Background())
	a.goAhead = make(chan goAheadMsg, 1)
	if reply != nil {
		a.waiters = append(a.waiters, reply)
	}
	m.att = a
	machinePart, carriers, prepare := m.initBatch(), m.carriers, a.prepare
	spec := spawnSpec{child: m.childSpec(path), reserve: m.next.reserve, batch: func() []handoff.Message {
		// Beside the machine, once the new process started: a carrier may take its
		// time (SaveState).
		batch := append(machinePart(), carrierBatch(carriers)...)
		if prepare {
			batch = append(batch, handoff.Message{Verb: handoff.Prepare})
		}
		return batch
	}}
	spawn := m.spawn
	go a.run(attemptEnv{
		spawn: func() (*generation, error) { return spawn(spec) },
		post:  m.post, log: m.log, clock: m.clock, notifier: m.notifier,
		timeout: m.cfg.UpgradeTimeout, killWait: m.killWait,
	})
}

// initBatch returns what makes the machine's part of a new generation's initial
// batch: the history, and how many generations drain above it. The carriers' parts
// follow. The history is copied now and encoded when the batch is made, beside the
// machine.
func (m *machine) initBatch() func() []handoff.Message {
	h, above := m.hist().clone(), m.line.above+1
	return func() []handoff.Message {
		return []handoff.Message{
			{Verb: handoff.History, Text: h.encode()},
			{Verb: handoff.Above, N: above},
		}
	}
}

// abandonAttempt cancels the attempt in progress: its outcome comes once its new
// process is dead.
func (m *machine) abandonAttempt() {
	if a := m.att; a != nil && !a.abandoned {
		a.abandoned = true
		a.cancel(nil)
	}
}

func (m *machine) onAttemptStarted(a *attempt, pid int) {
	a.pid = pid
	m.log.Info("new generation started", "event", "child_started", "child", pid, "sibling", m.notifier != nil, "replacement", a.replacement)
}

// onAttemptReady gives the go-ahead to the new generation, which says it is ready
// as pid, unless it is a prepared one: that waits for its commit.
func (m *machine) onAttemptReady(a *attempt, pid int) {
	if a.abandoned {
		return
	}
	if pid != a.pid {
		m.log.Warn("the new generation reports a different PID than the one started (a wrapper?)", "event", "child_pid_differs", "started", a.pid, "ready", pid)
	}
	a.ready = pid
	if a.prepare {
		m.onPrepared(a)
		return
	}
	m.goAhead(a)
}

// goAhead lets a's new generation take over: the history it keeps, with this
// upgrade in it.
func (m *machine) goAhead(a *attempt) {
	a.probation = m.probationWindow()
	if m.notifier != nil {
		// MAINPID= follows (startHandover): see service.handing.
		m.svc.handing = true
		m.stopWatchdog()
	}
	h := m.hist().clone()
	h.add(m.record(a, "ok", nil))
	if !a.replacement && m.st == upgrading {
		a.quiet = &quiescer{}
		for _, t := range m.drains.targets {
			a.quiet.ds = append(a.quiet.ds, t.d)
		}
	}
	a.goAhead <- goAheadMsg{history: h.encode(), quiet: a.quiet}
}

// quiescer pauses this process's listeners at a handover's last step
// (Drainer.quiesce), and lets them accept again if the handover fails; the second
// of the two to come does nothing. pause runs on the attempt's goroutine, undo on
// the machine's. The methods of a nil quiescer do nothing.
type quiescer struct {
	mu     sync.Mutex
	ds     []*Drainer
	undone bool
}

func (q *quiescer) pause() {
	if q == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.undone {
		for _, d := range q.ds {
			d.quiesce()
		}
	}
}

func (q *quiescer) undo() {
	if q == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.undone = true
	for _, d := range q.ds {
		d.unquiesce()
	}
}

func (m *machine) onAttemptEnded(e attemptEnded) {
	if e.a.stopTimer != nil {
		e.a.stopTimer()
	}
	switch {
	case e.err != nil:
		e.a.cancel(nil)
		m.attemptFailed(e)
	case e.a.abandoned:
		m.endLate(e)
	default:
		e.a.cancel(nil)
		m.handedOver(e)
	}
}

// endLate ends a new generation that took over just as a stop abandoned its
// attempt: it is killed, as it would have been a moment earlier, and the attempt
// ends once it is dead.
func (m *machine) endLate(e attemptEnded) {
	a, g := e.a, e.g
	clk, wait, post := m.clock, m.killWait, m.post
	go func() {
		err := &upgradeError{Cause: causeAbandoned, Err: errAbandoned, PID: g.proc.Pid()}
		status := g.end(errAbandoned.Error(), true, clk, wait)
		err.Stderr = g.out.String()
		post(attemptEnded{a: a, g: g, err: err, status: status})
	}()
}

// attemptFailed reports a failed attempt (logged, recorded, answered); its new
// process is dead.
func (m *machine) attemptFailed(e attemptEnded) {
	a, err := e.a, e.err
	a.quiet.undo() // accepting again, if the handover got as far as its last step
	m.att = nil
	m.line.relay = nil // in this process's history already; no new generation needs them
	if err.Cause == causeAborted {
		err.Stderr = "" // asked for: what it logged is no reason
	}
	if m.st == upgrading || m.st == prepared {
		m.st = serving
	}
	attrs := []any{"event", "upgrade_failed", "cause", err.Cause, "err", err}
	if err.PID != 0 {
		attrs = append(attrs, "child", err.PID)
		if e.status != "" {
			attrs = append(attrs, "status", e.status)
		}
	}
	outcome := "failed"
	switch err.Cause {
	case causeAbandoned:
		outcome = "abandoned"
	case causeAborted, causePrepareTime:
		outcome = "aborted"
	}
	m.hist().add(m.record(a, outcome, err))
	switch {
	case a.replacement:
		m.log.Error("replacement failed", attrs...)
	case err.Cause == causeAbandoned:
		m.lastErr = err
		m.log.Warn("upgrade abandoned: the process is stopping", attrs...)
	case err.Cause == causeAborted:
		m.log.Info("prepared generation aborted; still serving", append([]any{"event", "upgrade_aborted"}, attrs[2:]...)...)
	case err.Cause == causePrepareTime:
		m.lastErr = err
		m.log.Warn("the prepared generation waited too long for its commit: aborted; still serving", append([]any{"event", "upgrade_aborted"}, attrs[2:]...)...)
	default:
		m.lastErr = err
		m.log.Error("upgrade failed; still serving", attrs...)
	}
	m.svc.handing = false
	if m.st == serving && !a.replacement && err.Cause != causeAbandoned {
		if m.main {
			m.startWatchdog()
		}
		m.notify("READY=1\nSTATUS=" + m.statusLine())
		m.turn(carry.Serving)
	}
	m.reply(a, upgradeResult{err: err})
}

// handedOver: the new generation of attempt e took over. This process drains
// (unless it drained already: a replacement) and watches its successor.
func (m *machine) handedOver(e attemptEnded) {
	a := e.a
	if e.barrier != nil {
		m.log.Warn("systemd did not confirm MAINPID in time; handing over anyway", "event", "barrier_timeout", "err", e.barrier)
	}
	m.att = nil
	m.nextPID = a.ready
	m.lastErr = nil
	m.hist().add(m.record(a, "ok", nil))
	if m.cfg.PIDFile != "" {
		// The new generation writes it too, once it hears "main"; written here as
		// well, the file names it by the time whoever asked for the upgrade hears
		// the outcome.
		if err := pidfile.Write(m.cfg.PIDFile, a.ready); err != nil {
			m.log.Error("writing the PID file", "event", "pidfile_failed", "err", err)
		}
	}
	m.main, m.svc.handing = false, false
	m.set.KeepFiles()
	m.stopWatchdog()
	took := m.clock.Now().Sub(a.started)
	if !a.committed.IsZero() {
		took = m.clock.Now().Sub(a.committed) // a two-phase upgrade's: the commit's
	}
	m.log.Info("handed over", "event", "handed_over", "to", a.ready, "took", took.Round(time.Microsecond).String(), "replacement", a.replacement)
	m.keepRelaying(e.g)
	m.watchSuccessor(e.g, a.ready)
	m.startProbation(a)
	for _, d := range m.line.relay {
		m.tellDrained(d) // older drains that ended after its history was handed over
	}
	m.line.relay = nil
	if a.replacement {
		m.reply(a, upgradeResult{pid: a.ready})
		return // this process was draining already, and goes on
	}
	m.st = draining
	m.retire()
	m.exit.close()
	m.startDrains(m.notifier != nil)
	// Whoever asked hears the outcome once this process accepts no more: a
	// connection made after the answer reaches the new generation.
	m.reply(a, upgradeResult{pid: a.ready})
	m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: m.line.above + 1})
	m.turn(carry.HandedOver)
	m.checkDraining()
}

// keepRelaying keeps the process from finishing until g, which took over, has put
// its own standard error back (the end of the pipe this process relays), at most
// stderrWait: what g logs until then (its start, a SIGUSR2 it defers) would
// otherwise be lost with this process.
func (m *machine) keepRelaying(g *generation) {
	ended := g.out.Done()
	if ended == nil {
		return
	}
	release, clk := m.hold(), m.clock
	go func() {
		t := clk.NewTimer(stderrWait)
		select {
		case <-ended:
		case <-t.C():
		}
		t.Stop()
		release()
	}()
}

func (m *machine) reply(a *attempt, r upgradeResult) {
	for _, w := range a.waiters {
		w(r)
	}
	a.waiters = nil
}

// record makes the record of the upgrade a; e says why it failed, if it did.
func (m *machine) record(a *attempt, outcome string, e *upgradeError) Upgrade {
	r := Upgrade{
		Trigger: a.trigger, Start: a.started, End: m.clock.Now(), From: os.Getpid(),
		Generation: m.gen + 1, Outcome: outcome, To: a.pid,
	}
	if a.ready != 0 {
		r.To = a.ready
	}
	if outcome == "ok" {
		r.HandoverSeconds = r.End.Sub(r.Start).Seconds()
		r.ProbationUntil = a.probation
	}
	if !a.prepared.IsZero() {
		// A two-phase upgrade: its handover is the commit's.
		r.Prepared, r.PrepareSeconds, r.Committed = a.prepared, a.prepared.Sub(a.started).Seconds(), a.committed
		if outcome == "ok" {
			r.HandoverSeconds = r.End.Sub(a.committed).Seconds()
		}
	}
	if e != nil {
		r.Reason, r.Error, r.Stderr = e.Cause, e.Error(), e.Stderr
	}
	return r
}
