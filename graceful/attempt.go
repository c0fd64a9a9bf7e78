package graceful

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
)

// One upgrade attempt is one goroutine (attempt.run) with a local select over the
// phases still to come, each a channel set to nil once it is over (the model is
// cloudflare/tableflip's doUpgrade):
//
//	spawn ──► "ready" ──► the machine's go-ahead ──► handover ──► took over
//	  │         │                                    (MAINPID= READY=1, BARRIER=1,
//	  │         │                                     the history, "main")
//	  └─────────┴── any of, before it took over: it exits (its last words are read
//	                first: the channel and its stderr to their end, at most
//	                lastWordsWait); it closes the channel (its exit gets lastWordsWait
//	                to come); it says something unexpected; UpgradeTimeout passes; the
//	                machine cancels the attempt (a stop); or the handover fails
//
// Every way out but the handover is one failure: the new process is told why
// ("abort"), killed, and waited for (at most killWait), and only then is the failure
// posted, so that whoever hears of it never finds the failed build alive or
// unreaped. The machine hears of an attempt three times: attemptStarted (its PID,
// for Status), attemptReady (it answers with the go-ahead: the history to hand
// over), and attemptEnded, once. Between "ready" and the go-ahead the new process
// waits, ready, while this one serves. A two-phase upgrade (prepare.go) holds it
// there until it is committed: it was told "prepare" in its initial batch, so it
// does not accept before "main"; its UpgradeTimeout ends at "ready" (the prepare
// timeout, the machine's, bounds the wait), and an abort cancels the attempt as a
// stop does, with its own cause.

// Why an attempt failed, as upgrade_failed's cause= and the record's Reason say.
const (
	causeStart         = "start"           // the process could not be started
	causeExited        = "exited"          // it exited before it was ready
	causeChannelClosed = "channel_closed"  // it closed the handover channel before it was ready
	causeTimeout       = "timeout"         // it was not ready within UpgradeTimeout
	causeProtocol      = "protocol"        // it said something unexpected
	causeNotify        = "notify"          // systemd could not be told MAINPID=
	causeConfirm       = "confirm"         // it went away as it was told "main"
	causeAbandoned     = "abandoned"       // the process is stopping
	causeAborted       = "aborted"         // a prepared generation was aborted (Abort)
	causePrepareTime   = "prepare_timeout" // a prepared generation waited past PrepareTimeout
)

// upgradeError is why an attempt failed, with what the new process left behind.
type upgradeError struct {
	Cause  string // causeStart, causeExited, ...
	Err    error  // what happened
	PID    int    // the new process, 0 if none started
	Status string // how it exited, when it exited by itself
	Said   string // its own last "error ..." message
	Stderr string // its last lines on its standard error
}

func (e *upgradeError) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	if e.Status != "" {
		b.WriteString(" (" + e.Status + ")")
	}
	if e.Said != "" {
		b.WriteString(": " + e.Said)
	}
	if e.Stderr != "" {
		b.WriteString("\nits last lines on stderr:\n  " + strings.ReplaceAll(e.Stderr, "\n", "\n  "))
	}
	return b.String()
}

func (e *upgradeError) Unwrap() error { return e.Err }

// upgradeResult is the outcome of an upgrade for whoever asked for it.
type upgradeResult struct {
	pid   int
	err   error
	moved int // set when this process has handed over to that PID
}

// attempt is one upgrade attempt. The fields before waiters are set before run
// starts, and only read after.
type attempt struct {
	trigger     string
	started     time.Time
	replacement bool            // the last good build, started for a successor that died
	prepare     bool            // a two-phase upgrade's: no go-ahead before the commit
	goAhead     chan goAheadMsg // the machine's go-ahead after "ready"
	ctx         context.Context
	cancel      context.CancelCauseFunc // the cause: an *upgradeError, or nil (errAbandoned)

	// Owned by the machine.
	waiters   []func(upgradeResult)
	pid       int       // the new process, once started
	ready     int       // the PID it said it is ready as
	probation time.Time // set at the go-ahead: when its probation ends (zero: none)
	abandoned bool      // cancelled by a stop or an abort
	prepared  time.Time
	committed time.Time
	stopTimer func() bool // the prepare timeout's, once prepared
	quiet     *quiescer   // set at the go-ahead: undone if the handover fails
}

// goAheadMsg is the machine's go-ahead to a new generation that said "ready".
type goAheadMsg struct {
	history string    // the history to hand over, with this upgrade in it
	quiet   *quiescer // pauses this process's listeners just before "main"; nil: none
}

// attemptEnv is what an attempt's goroutine uses, fixed when it starts.
type attemptEnv struct {
	spawn    func() (*generation, error)
	post     func(event)
	log      *slog.Logger
	clock    clock
	notifier notifier
	timeout  time.Duration // UpgradeTimeout
	killWait time.Duration
}

// Events of an attempt.
type (
	attemptStarted struct {
		a   *attempt
		pid int
	}
	attemptReady struct {
		a   *attempt
		pid int
	}
	attemptEnded struct {
		a       *attempt
		g       *generation   // the new generation, if one started
		err     *upgradeError // nil: it took over
		barrier error         // systemd did not confirm MAINPID= in time (it took over anyway)
		status  string        // how the failed process ended
	}
)

func (e attemptStarted) handle(m *machine) { m.onAttemptStarted(e.a, e.pid) }
func (e attemptReady) handle(m *machine)   { m.onAttemptReady(e.a, e.pid) }
func (e attemptEnded) handle(m *machine)   { m.onAttemptEnded(e) }

// channel is one end of the handover channel (handoff.Channel).
type channel interface {
	Send(m handoff.Message, timeout time.Duration) error
	Receive() (handoff.Message, error)
	SetReadDeadline(t time.Time) error // a Receive past t fails, taking no message
	Close()
	File() (*os.File, error)
}

// generation is a new process as the one that started it sees it.
type generation struct {
	proc child
	ch   channel
	out  *proc.Tail             // its standard error, until the handover
	msgs <-chan handoff.Message // what it says, read beside; closed when the channel ends
}

// newGeneration starts reading what p says on ch.
func newGeneration(p child, ch channel, out *proc.Tail) *generation {
	msgs := make(chan handoff.Message)
	go func() {
		defer close(msgs)
		for {
			m, err := ch.Receive()
			if err != nil {
				return
			}
			msgs <- m
		}
	}()
	return &generation{proc: p, ch: ch, out: out, msgs: msgs}
}

// discard drops what g still says, until its channel (closed by the caller) ends.
func (g *generation) discard() {
	go func() {
		for m := range g.msgs {
			closeFiles(m.Files)
		}
	}()
}

// end gives g up: it is told why ("abort") and, unless it is dead, killed and
// waited for, at most killWait. It returns how the process ended.
func (g *generation) end(why string, kill bool, clk clock, killWait time.Duration) string {
	ch := g.ch
	go func() {
		ch.Send(handoff.Message{Verb: handoff.Abort, Text: why}, lastWordsWait)
		ch.Close()
	}()
	if kill {
		g.proc.Kill()
		t := clk.NewTimer(killWait)
		select {
		case <-g.proc.Exited():
		case <-t.C():
		}
		t.Stop()
	}
	g.proc.Release()
	g.discard()
	return g.proc.ExitStatus()
}

// run takes the attempt from the start of the new process to its outcome, which it
// posts (attemptEnded).
func (a *attempt) run(env attemptEnv) {
	g, err := env.spawn()
	if err != nil {
		env.post(attemptEnded{a: a, err: &upgradeError{Cause: causeStart, Err: err}})
		return
	}
	env.post(attemptStarted{a, g.proc.Pid()})
	p := &phases{a: a, env: env, g: g, msgs: g.msgs, exited: g.proc.Exited(), stderr: g.out.Done(),
		timeout: env.clock.NewTimer(env.timeout)}
	env.post(p.wait())
}

// phases are the local state of an attempt's goroutine: each channel is a phase
// still to come, nil once it is over (or before it may come).
type phases struct {
	a   *attempt
	env attemptEnv
	g   *generation

	msgs      <-chan handoff.Message // until the channel ends
	exited    <-chan struct{}        // until the process exits
	stderr    <-chan struct{}        // until its stderr pipe ends
	goAhead   <-chan goAheadMsg      // once it said "ready"
	handed    <-chan handoverOutcome // once the handover started
	lastWords timer                  // armed once it died or closed its channel
	timeout   timer                  // UpgradeTimeout

	dead  bool
	said  string // its last "error" message
	ready int
}

func (p *phases) wait() attemptEnded {
	defer p.stopTimeout()
	for {
		var fail *upgradeError
		select {
		case msg, ok := <-p.msgs:
			fail = p.onMessage(msg, ok)
		case <-p.exited:
			fail = p.onExit()
		case <-p.stderr:
			p.stderr = nil
			fail = p.lastWordsRead()
		case <-timerC(p.lastWords):
			fail = p.onLastWordsWait()
		case <-timerC(p.timeout):
			fail = p.failure(causeTimeout, fmt.Errorf("the new generation (PID %d) was not ready within %s", p.g.proc.Pid(), p.env.timeout))
		case <-p.a.ctx.Done():
			fail = p.cancelled()
		case g := <-p.goAhead:
			p.goAhead = nil
			if p.a.ctx.Err() != nil {
				fail = p.cancelled()
				break
			}
			p.handed = p.startHandover(g)
		case o := <-p.handed:
			if o.err == nil {
				p.stopLastWords()
				return attemptEnded{a: p.a, g: p.g, barrier: o.barrier}
			}
			fail = o.err
		}
		if fail != nil {
			return p.giveUp(fail)
		}
	}
}

func (p *phases) onMessage(msg handoff.Message, ok bool) *upgradeError {
	if !ok {
		p.msgs = nil
		if p.dead {
			return p.lastWordsRead()
		}
		// A process that dies closes the channel a moment before its exit is seen:
		// give the exit a moment, so that the error says what happened.
		p.armLastWords()
		return nil
	}
	closeFiles(msg.Files)
	switch {
	case msg.Verb == handoff.Error:
		p.said = msg.Text
		p.env.log.Error("the new generation reports an error", "event", "child_error", "child", p.g.proc.Pid(), "err", msg.Text)
		return nil
	case msg.Verb == handoff.Ready && p.ready == 0:
		p.ready = msg.PID
		p.goAhead = p.a.goAhead
		if p.a.prepare {
			p.stopTimeout() // ready: the prepare timeout bounds the wait for the commit
		}
		p.env.post(attemptReady{p.a, msg.PID})
		return nil
	}
	return p.failure(causeProtocol, fmt.Errorf("the new generation (PID %d) sent an unexpected message %q", p.g.proc.Pid(), msg.String()))
}

func (p *phases) onExit() *upgradeError {
	p.exited = nil
	p.dead = true
	if p.msgs == nil && p.stderr == nil {
		return p.exitedEarly()
	}
	// Its last words ("error ...", a panic on stderr) may still be on their way
	// through the channel and the pipe, which its exit has closed.
	p.armLastWords()
	return nil
}

// lastWordsRead fails the attempt of a dead process once its channel and its stderr
// are read to their end.
func (p *phases) lastWordsRead() *upgradeError {
	if p.dead && p.msgs == nil && p.stderr == nil {
		return p.exitedEarly()
	}
	return nil
}

func (p *phases) onLastWordsWait() *upgradeError {
	p.lastWords = nil
	if p.dead {
		return p.exitedEarly()
	}
	return p.failure(causeChannelClosed, fmt.Errorf("the new generation (PID %d) closed the handover channel before it was ready", p.g.proc.Pid()))
}

func (p *phases) exitedEarly() *upgradeError {
	return p.failure(causeExited, fmt.Errorf("the new generation (PID %d) exited before it was ready", p.g.proc.Pid()))
}

func (p *phases) failure(cause string, err error) *upgradeError {
	return &upgradeError{Cause: cause, Err: err}
}

// cancelled is the failure of an attempt the machine cancelled: an abort's cause,
// or a stop's.
func (p *phases) cancelled() *upgradeError {
	if e, ok := context.Cause(p.a.ctx).(*upgradeError); ok {
		return &upgradeError{Cause: e.Cause, Err: e.Err}
	}
	return &upgradeError{Cause: causeAbandoned, Err: errAbandoned}
}

func (p *phases) stopTimeout() {
	if p.timeout != nil {
		p.timeout.Stop()
		p.timeout = nil
	}
}

// armLastWords starts the wait for a dying process's last words, once: from the
// first of its exit and the end of its channel.
func (p *phases) armLastWords() {
	if p.lastWords == nil {
		p.lastWords = p.env.clock.NewTimer(lastWordsWait)
	}
}

func (p *phases) stopLastWords() {
	if p.lastWords != nil {
		p.lastWords.Stop()
		p.lastWords = nil
	}
}

// giveUp ends the attempt with e once the new process is dead.
func (p *phases) giveUp(e *upgradeError) attemptEnded {
	p.stopLastWords()
	e.PID, e.Said = p.g.proc.Pid(), p.said
	if p.dead {
		e.Status = p.g.proc.ExitStatus()
	}
	status := p.g.end(e.Err.Error(), !p.dead, p.env.clock, p.env.killWait)
	e.Stderr = p.g.out.String()
	return attemptEnded{a: p.a, g: p.g, err: e, status: status}
}

// handoverOutcome is how the handover went.
type handoverOutcome struct {
	err     *upgradeError
	barrier error
}

func (p *phases) startHandover(g goAheadMsg) <-chan handoverOutcome {
	out := make(chan handoverOutcome, 1)
	n, ch, pid := p.env.notifier, p.g.ch, p.ready
	go func() { out <- handOver(n, ch, pid, g) }()
	return out
}

// handOver makes the new generation, ready as pid, the current one. systemd must
// learn the new main PID (MAINPID=, confirmed by BARRIER=1) before the new process
// hears "main" and this one stops accepting, or systemd stops the unit with it.
// This process stops accepting (g.quiet) just before "main": from then on the
// connections that arrive are the new generation's, which accepts at "main" if it
// was prepared, or accepts already and no longer races this one for them.
func handOver(n notifier, ch channel, pid int, g goAheadMsg) handoverOutcome {
	var o handoverOutcome
	if n != nil {
		p := strconv.Itoa(pid)
		if err := n.Send("MAINPID=" + p + "\nREADY=1\nSTATUS=handing over to PID " + p); err != nil {
			o.err = &upgradeError{Cause: causeNotify, Err: fmt.Errorf("telling systemd MAINPID=%d: %w", pid, err)}
			return o
		}
		o.barrier = n.Barrier(barrierTimeout)
	}
	ch.Send(handoff.Message{Verb: handoff.History, Text: g.history}, sendTimeout)
	g.quiet.pause()
	if err := ch.Send(handoff.Message{Verb: handoff.Main}, sendTimeout); err != nil && n == nil {
		o.err = &upgradeError{Cause: causeConfirm, Err: fmt.Errorf("the new generation (PID %d) went away right after it was ready: %v", pid, err)}
	}
	return o
}

func timerC(t timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C()
}
