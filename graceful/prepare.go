package graceful

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// Two-phase upgrades: prepare, then commit. Prepare starts a new generation as an
// upgrade does, but tells it "prepare" in its initial batch: it inherits the
// sockets, loads the state and the TLS keys and runs its start-up up to Ready, and
// its listeners do not accept (the gate below) until it hears "main". The attempt
// holds it after "ready" (attempt.go) while this process serves alone, until
//
//	Commit          the go-ahead, as for an upgrade: MAINPID= and BARRIER=1 under
//	                systemd, then "main"; this process stops accepting and drains
//	Abort           the attempt is cancelled: the new process is told why, killed
//	                and waited for; this process serves on (outcome "aborted")
//	PrepareTimeout  the same, on its own (cause prepare_timeout)
//	a stop          the same, as for any upgrade in progress (abandoned)
//
// Under a `handover run` master the master prepares and commits its children: a
// child it prepares finds the read end of a pipe named handoff.PrepareName among
// its descriptors, and Ready says READY=1 with X_HANDOVER=prepared to the master
// and waits on the pipe for handoff.CommitLine (awaitCommit).

// step is what a request of an upgrade's asks for.
type step int

const (
	stepUpgrade step = iota // both phases at once
	stepPrepare
	stepCommit
	stepAbort
)

var (
	errAborted    = errors.New("the prepared generation was aborted (Abort, handover abort)")
	errNoPrepared = errors.New("graceful: no prepared generation: prepare one first (Prepare, handover prepare)")
	// errPreparing is why a commit is refused while the prepare is under way.
	errPreparing = errors.New("graceful: the new generation is not ready yet: commit once the prepare has answered (Prepare returned, handover prepare exited)")
)

// prepareTimeout fires when a's new generation has waited PrepareTimeout for its
// commit.
type prepareTimeout struct{ a *attempt }

func (e prepareTimeout) handle(m *machine) {
	if a := e.a; m.att == a && m.st == prepared {
		m.cancelAttempt(a, causePrepareTime, fmt.Errorf("the prepared generation (PID %d) waited for its commit longer than %s", a.ready, m.cfg.PrepareTimeout))
	}
}

func (m *machine) onUpgradeRequest(e upgradeRequest) {
	switch e.step {
	case stepUpgrade:
		m.beginUpgrade(e.trigger, e.reply)
	case stepPrepare:
		m.startUpgrade(&attempt{trigger: e.trigger, prepare: true}, e.reply)
	case stepCommit:
		m.commit(e.trigger, e.reply)
	case stepAbort:
		m.abort(e.trigger, e.reply)
	}
}

// onPrepared: a's new generation is ready and waits for its commit. Whoever asked
// for the prepare hears its PID.
func (m *machine) onPrepared(a *attempt) {
	a.prepared = m.clock.Now()
	m.st = prepared
	m.log.Info("new generation prepared: ready, not accepting; waiting for its commit", "event", "prepared", "child", a.ready,
		"took", a.prepared.Sub(a.started).Round(time.Microsecond).String(), "timeout", m.cfg.PrepareTimeout.String())
	m.notifyStatus()
	m.reply(a, upgradeResult{pid: a.ready})
	a.stopTimer = m.after(m.cfg.PrepareTimeout, prepareTimeout{a})
}

// commit makes the prepared generation take over: the go-ahead, as an upgrade
// gives it at once. reply hears the outcome, as an upgrade's requester does.
func (m *machine) commit(trigger string, reply func(upgradeResult)) {
	a := m.att
	if m.st != prepared {
		reason, moved, err := "not_prepared", 0, errNoPrepared
		switch {
		case m.st == upgrading && a != nil && a.prepare && !a.committed.IsZero():
			reason, err = "in_progress", ErrUpgradeInProgress // committed already
		case m.st == upgrading && a != nil && a.prepare && !a.abandoned:
			err = errPreparing
		case m.nextPID != 0 && (m.st == draining || m.st == exited):
			reason, moved, err = "handed_over", m.nextPID, fmt.Errorf("graceful: this process has handed over to PID %d; ask that one", m.nextPID)
		}
		m.refuse(trigger, reason, moved, err, reply)
		return
	}
	a.committed = m.clock.Now()
	a.stopTimer()
	m.st = upgrading
	m.log.Info("committing the prepared generation", "event", "commit", "child", a.ready, "trigger", trigger,
		"waited", a.committed.Sub(a.prepared).Round(time.Millisecond).String())
	m.notify("RELOADING=1\n" + sdnotify.MonotonicUsec() + "\nSTATUS=upgrading: committing the prepared generation")
	if reply != nil {
		a.waiters = append(a.waiters, reply)
	}
	m.goAhead(a)
}

// abort ends the prepared generation, or the one being prepared: reply hears its
// PID once it is dead.
func (m *machine) abort(trigger string, reply func(upgradeResult)) {
	a := m.att
	if a == nil || !a.prepare || a.abandoned || (m.st != prepared && m.st != upgrading) {
		m.refuse(trigger, "not_prepared", 0, errNoPrepared, reply)
		return
	}
	if !a.committed.IsZero() {
		m.refuse(trigger, "in_progress", 0, errors.New("graceful: the prepared generation is being committed: too late to abort it"), reply)
		return
	}
	if reply != nil {
		a.waiters = append(a.waiters, func(r upgradeResult) {
			var e *upgradeError
			if errors.As(r.err, &e) && e.Cause == causeAborted {
				r = upgradeResult{pid: e.PID}
			}
			reply(r)
		})
	}
	m.cancelAttempt(a, causeAborted, errAborted)
}

// cancelAttempt ends a, a prepare, with cause: its outcome (attemptFailed) comes
// once its new process is dead.
func (m *machine) cancelAttempt(a *attempt, cause string, err error) {
	a.abandoned = true
	a.cancel(&upgradeError{Cause: cause, Err: err})
}

// canPrepare is what a library child tells a `handover run` master with its
// READY=1: it can be prepared (it does not accept before it is committed).
func (m *machine) canPrepare() string {
	if m.set.Master() == 0 {
		return ""
	}
	return "\n" + handoff.NotifyField + "=" + handoff.CanPrepare
}

// hold makes this new generation a prepared one: its listeners do not accept until
// it is committed (release). Called while New runs, before any listener exists.
func (u *Upgrader) hold() {
	if u.held == nil {
		u.held = make(chan struct{})
	}
}

// release lets a prepared generation's listeners accept. Later calls do nothing.
func (u *Upgrader) release() {
	if u.held == nil {
		return
	}
	select {
	case <-u.held: // released already
	default:
		close(u.held)
		// The accepting goroutines run next, on this thread, instead of once
		// another thread has woken to take them: hundreds of µs on a virtual
		// machine, and the first answer after a commit waits for them.
		runtime.Gosched()
	}
}

// openPrepare takes the pipe a `handover run` master passes a child it prepares.
func (u *Upgrader) openPrepare() {
	if u.set.Master() == 0 {
		return
	}
	if fs := u.set.ClaimFiles(handoff.PrepareName); len(fs) > 0 {
		u.commitPipe = fs[0]
		closeFiles(fs[1:])
		u.hold()
	}
}

// awaitCommit, in a child a `handover run` master prepares, tells the master it is
// ready and waits (READY=1, X_HANDOVER=prepared), and returns once the master
// commits it; an error if the master gives it up instead (the pipe ends: it is
// being killed).
func (u *Upgrader) awaitCommit() error {
	f := u.commitPipe
	u.commitPipe = nil
	defer f.Close()
	n := u.m.notifier
	if n == nil {
		return errors.New("graceful: prepared by a handover run master, but NOTIFY_SOCKET is not set: cannot tell it this process is ready")
	}
	if err := n.Send("READY=1\n" + handoff.NotifyField + "=" + handoff.Prepared + "\nSTATUS=prepared: waiting for handover commit"); err != nil {
		return fmt.Errorf("graceful: telling the handover run master this prepared process is ready: %w", err)
	}
	u.log.Info("prepared: ready, not accepting; waiting for the master's commit", "event", "prepared", "master", u.set.Master())
	b := make([]byte, len(handoff.CommitLine))
	if _, err := io.ReadFull(f, b); err != nil || string(b) != handoff.CommitLine {
		return errors.New("graceful: the handover run master gave this prepared generation up (aborted) before committing it")
	}
	return nil
}

// ask asks the machine for s; the outcome comes on the channel.
func (u *Upgrader) ask(s step, trigger string) <-chan upgradeResult {
	res := make(chan upgradeResult, 1)
	u.post(upgradeRequest{trigger: trigger, step: s, reply: func(r upgradeResult) { res <- r }})
	return res
}

// Prepare is the first step of a two-phase upgrade. It starts a new generation and
// waits until it is ready and waiting: it has inherited the sockets, loaded the
// state (LoadState) and the TLS session-ticket keys and run its start-up up to
// Ready, but it does not accept connections; this process serves alone meanwhile.
// It returns the new process's PID. Commit then makes it serve in about a
// millisecond (no process starts at that moment); Abort ends it; one that waits
// longer than Config.PrepareTimeout is aborted (logged: event=upgrade_aborted,
// cause=prepare_timeout). A new generation that fails before it is ready (it exits,
// hangs past UpgradeTimeout, reports an error) is killed, and the error says why;
// this process serves on, as after any failed upgrade. ctx bounds only the wait.
//
// While a generation is prepared, Upgrade, SIGUSR2 and `handover reload` are refused,
// and a stop (SIGTERM, Stop) ends it as it ends any upgrade in progress. In the new
// generation, only the listeners served by a Server or a Drainer wait for the commit:
// a program that accepts on a listener of its own (or reads a datagram socket) does
// so once Ready has returned, which, in a prepared generation, is at the commit.
// Before it says it is ready, a prepared generation maps its executable's code into
// its page tables (madvise MADV_POPULATE_READ), so that its first requests after
// the commit do not fault it in a page at a time.
// Like Upgrade, Prepare is not supported on systems other than Linux.
func (u *Upgrader) Prepare(ctx context.Context) (int, error) {
	return u.wait(ctx, u.ask(stepPrepare, "API"))
}

// Commit is the second step of a two-phase upgrade: it makes the prepared
// generation (Prepare) the current one, as Upgrade makes a new generation once it is
// ready (under systemd: MAINPID= and BARRIER=1 first; the watchdog moves with it):
// it starts accepting, and this process stops accepting and drains. It returns the
// new generation's PID once it has taken over. It fails when no generation is
// prepared (or its prepare has not answered yet), and when the prepared one died
// meanwhile (this process serves on). ctx bounds only the wait.
func (u *Upgrader) Commit(ctx context.Context) (int, error) {
	return u.wait(ctx, u.ask(stepCommit, "API"))
}

// Abort ends the prepared generation (Prepare), or the one being prepared, without
// it having served: it is told why, killed, and waited for (and reaped, when it is
// this process's child) before Abort returns. This process serves on; the upgrade's
// record says "aborted". It fails when no generation is prepared. ctx bounds only
// the wait.
func (u *Upgrader) Abort(ctx context.Context) error {
	_, err := u.wait(ctx, u.ask(stepAbort, "API"))
	return err
}

func (u *Upgrader) wait(ctx context.Context, res <-chan upgradeResult) (int, error) {
	select {
	case r := <-res:
		return r.pid, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
