//go:build linux

package graceful

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Two-phase upgrades driven by hand (see machine_test.go): the prepare holds the
// new generation after "ready" (no go-ahead, no "main"), the commit gives the
// go-ahead, an abort or the prepare timeout ends it as a failed attempt.

// ask sends the machine a request for step s, as the API and the control socket do.
func (w *fakeWorld) ask(s step) *reply {
	rep := &reply{}
	w.m.handle(upgradeRequest{trigger: "API", step: s, reply: func(r upgradeResult) { rep.got, rep.r = true, r }})
	return rep
}

// prepared runs a prepare up to the new generation's "ready": it is prepared.
func (w *fakeWorld) prepared() *fakeGen {
	w.t.Helper()
	rep := w.ask(stepPrepare)
	g := w.child()
	if b := g.spec.batch(); len(b) == 0 || b[len(b)-1].Verb != handoff.Prepare {
		w.t.Fatalf("initial batch %v: no %q", b, handoff.Prepare)
	}
	if rep.got {
		w.t.Fatalf("Prepare answered before the new generation was ready: %+v", rep)
	}
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	if !rep.got || rep.r.err != nil || rep.r.pid != g.pid() {
		w.t.Fatalf("Prepare = %+v; want PID %d", rep, g.pid())
	}
	return g
}

// pendingTimers counts the fake clock's timers due at when.
func (w *fakeWorld) pendingTimers(when time.Time) int {
	w.clock.mu.Lock()
	defer w.clock.mu.Unlock()
	n := 0
	for t := range w.clock.timers {
		if t.when.Equal(when) {
			n++
		}
	}
	return n
}

// prepareTimer returns the machine's pending prepare timeout.
func (w *fakeWorld) prepareTimer() *pendingAfter {
	w.t.Helper()
	for _, p := range w.afters {
		if _, ok := p.ev.(prepareTimeout); ok && !p.stopped {
			return p
		}
	}
	w.t.Fatal("no prepare timeout pending")
	return nil
}

// TestPrepareCommit: the prepared generation hears nothing until the commit (no
// history, no "main": it does not accept); meanwhile a plain upgrade is refused and
// Status shows it prepared. The commit hands over as an upgrade does, and the record
// has the prepare's and the commit's times.
func TestPrepareCommit(t *testing.T) {
	w := newWorld(t, func(c *Config) { c.PrepareTimeout = time.Minute })
	w.ready()
	if rep := w.ask(stepCommit); !errors.Is(rep.r.err, errNoPrepared) || !w.logged("upgrade_refused", "reason=not_prepared") {
		t.Fatalf("Commit with nothing prepared: %+v", rep)
	}
	upgradeDue := w.clock.Now().Add(w.m.cfg.UpgradeTimeout)
	g := w.prepared()
	if w.pendingTimers(upgradeDue) != 0 {
		t.Fatal("the UpgradeTimeout still runs for a prepared generation")
	}
	if p := w.prepareTimer(); p.d != time.Minute {
		t.Fatalf("prepare timeout %s", p.d)
	}
	g.ch.nothingSent(t, "prepared")
	st := w.m.status()
	if st.State != "prepared" || st.Prepared != g.pid() || st.Upgrading != 0 || !w.logged("prepared", fmt.Sprintf("child=%d", g.pid())) {
		t.Fatalf("Status while prepared: %+v", st)
	}
	if rep := w.upgrade(); rep.r.err == nil || !w.logged("upgrade_refused", "reason=prepared") {
		t.Fatalf("Upgrade while prepared: %+v", rep)
	}
	if rep := w.ask(stepPrepare); rep.r.err == nil {
		t.Fatalf("a second Prepare: %+v", rep)
	}
	w.clock.Advance(3 * time.Second)
	rep := w.ask(stepCommit)
	if !w.logged("commit", fmt.Sprintf("child=%d", g.pid())) {
		t.Fatal("no commit logged")
	}
	// Committing: too late to abort, and one commit is enough.
	if r := w.ask(stepAbort); r.r.err == nil || !w.logged("upgrade_refused", "reason=in_progress") {
		t.Fatalf("Abort while committing: %+v", r)
	}
	if r := w.ask(stepCommit); !errors.Is(r.r.err, ErrUpgradeInProgress) {
		t.Fatalf("a second Commit: %+v", r)
	}
	h, err := decodeHistory(g.ch.expect(t, handoff.History).Text)
	if err != nil || len(h.Records) != 1 || h.Records[0].Prepared.IsZero() {
		t.Fatalf("history handed over: %+v, %v", h, err)
	}
	g.ch.expect(t, handoff.Main)
	g.stderr.Close()
	stepTo[attemptEnded](w)
	if !rep.got || rep.r.err != nil || rep.r.pid != g.pid() || !w.exitClosed() || w.m.nextPID != g.pid() {
		t.Fatalf("Commit = %+v, exit closed %v", rep, w.exitClosed())
	}
	for _, p := range w.afters {
		if _, ok := p.ev.(prepareTimeout); ok && !p.stopped {
			t.Fatal("the prepare timeout runs on after the commit")
		}
	}
	r := w.m.status().Upgrades[0]
	if r.Outcome != "ok" || r.To != g.pid() || r.Start != epoch || !r.Prepared.Equal(epoch) || !r.Committed.Equal(epoch.Add(3*time.Second)) || r.HandoverSeconds != 0 || r.PrepareSeconds != 0 {
		t.Fatalf("record %+v", r)
	}
	if again := w.ask(stepCommit); again.r.moved != g.pid() {
		t.Fatalf("Commit after the handover: %+v; want a pointer to %d", again, g.pid())
	}
}

// TestPrepareAbort: an abort kills the prepared generation (told why first) and
// answers with its PID once it is dead; the process serves on, and no error is
// left: it was asked for. A second abort has nothing to abort.
func TestPrepareAbort(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	g := w.prepared()
	rep := w.ask(stepAbort)
	if m := g.ch.expect(t, handoff.Abort); !strings.Contains(m.Text, "aborted") {
		t.Fatalf("abort says %q", m.Text)
	}
	e := stepTo[attemptEnded](w)
	if e.err == nil || e.err.Cause != causeAborted || !g.proc.wasKilled() {
		t.Fatalf("attempt ended with %v, killed %v", e.err, g.proc.wasKilled())
	}
	if !rep.got || rep.r.err != nil || rep.r.pid != g.pid() {
		t.Fatalf("Abort = %+v; want PID %d", rep, g.pid())
	}
	st := w.m.status()
	if st.State != "serving" || st.Prepared != 0 || st.LastError != "" || w.exitClosed() || !w.logged("upgrade_aborted", "cause=aborted") {
		t.Fatalf("after the abort: %+v", st)
	}
	if r := st.Upgrades[0]; r.Outcome != "aborted" || r.Reason != causeAborted || r.Prepared.IsZero() || !r.Committed.IsZero() {
		t.Fatalf("record %+v", r)
	}
	if again := w.ask(stepAbort); !errors.Is(again.r.err, errNoPrepared) {
		t.Fatalf("a second Abort: %+v", again)
	}
	w.upgradeTo() // it upgrades as before
}

// TestPrepareAbortWhilePreparing: an abort before the new generation is ready ends
// it too; whoever asked for the prepare hears why. A commit meanwhile is refused.
func TestPrepareAbortWhilePreparing(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	prep := w.ask(stepPrepare)
	g := w.child()
	if rep := w.ask(stepCommit); !errors.Is(rep.r.err, errPreparing) {
		t.Fatalf("Commit while preparing: %+v", rep)
	}
	rep := w.ask(stepAbort)
	g.ch.expect(t, handoff.Abort)
	stepTo[attemptEnded](w)
	if rep.r.err != nil || rep.r.pid != g.pid() || !errors.Is(prep.r.err, errAborted) {
		t.Fatalf("Abort = %+v, Prepare = %+v", rep, prep)
	}
}

// TestPrepareTimeout: a prepared generation that waits PrepareTimeout is aborted:
// logged, recorded (cause prepare_timeout), and the process serves on.
func TestPrepareTimeout(t *testing.T) {
	w := newWorld(t, func(c *Config) { c.PrepareTimeout = time.Second })
	w.ready()
	g := w.prepared()
	p := w.prepareTimer()
	p.stopped = true
	w.m.handle(p.ev)
	g.ch.expect(t, handoff.Abort)
	e := stepTo[attemptEnded](w)
	if e.err == nil || e.err.Cause != causePrepareTime || !g.proc.wasKilled() {
		t.Fatalf("attempt ended with %v", e.err)
	}
	st := w.m.status()
	if st.State != "serving" || !strings.Contains(st.LastError, "longer than 1s") || !w.logged("upgrade_aborted", "cause=prepare_timeout") {
		t.Fatalf("after the timeout: %+v", st)
	}
	if r := st.Upgrades[0]; r.Outcome != "aborted" || r.Reason != causePrepareTime {
		t.Fatalf("record %+v", r)
	}
	w.m.handle(p.ev) // a late timer changes nothing
	if w.m.st != serving {
		t.Fatal(w.m.st)
	}
}

// TestPrepareFailsOrStops: a prepare whose new generation dies before it is ready
// fails as any upgrade does; a stop while prepared ends the prepared generation.
func TestPrepareFailsOrStops(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	rep := w.ask(stepPrepare)
	g := w.child()
	g.die("exit status 1")
	w.failed(rep, causeExited)
	checkServesOn(t, w, causeExited, "exited before it was ready")

	g = w.prepared()
	w.m.handle(stopRequest{"test", make(chan struct{})})
	g.ch.expect(t, handoff.Abort)
	e := stepTo[attemptEnded](w)
	if e.err == nil || e.err.Cause != causeAbandoned || !g.proc.wasKilled() || w.m.st != stopping && w.m.st != exited {
		t.Fatalf("stop while prepared: %v, state %s", e.err, w.m.st)
	}
}

// TestPrepareUnderSystemd: systemd hears nothing of a prepare but its status; the
// commit is the reload: RELOADING=1, then MAINPID= and BARRIER=1 before "main".
func TestPrepareUnderSystemd(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.ready()
	g := w.prepared()
	if w.sd.count("RELOADING=1") != 0 || w.sd.count("MAINPID=") != 1 || w.sd.count("STATUS=prepared") != 1 {
		t.Fatalf("systemd heard while prepared: %q", w.sd.sent)
	}
	w.ask(stepCommit)
	select {
	case <-w.sd.barriers:
	case <-time.After(waitBound):
		t.Fatal("no barrier")
	}
	if w.sd.count("RELOADING=1") != 1 || w.sd.count(fmt.Sprintf("MAINPID=%d\nREADY=1", g.pid())) != 1 {
		t.Fatalf("systemd heard at the commit: %q", w.sd.sent)
	}
	g.ch.expect(t, handoff.History)
	g.ch.expect(t, handoff.Main)
	g.stderr.Close()
	if e := stepTo[attemptEnded](w); e.err != nil {
		t.Fatal(e.err)
	}
}

// TestHeldListener: a prepared generation's listener does not accept before it is
// committed: the connection waits in the kernel's accept queue, then the commit lets
// the pending Accept take it.
func TestHeldListener(t *testing.T) {
	raw := listenLoopback(t)
	d := &Drainer{}
	l := d.Listener(raw).(*listener)
	held := make(chan struct{})
	l.held = held
	defer l.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		got <- c
	}()
	c, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The handshake is over for the client when Dial returns; the server's side
	// queues the connection as it processes the client's last ACK.
	eventually(t, "the connection to wait in the accept queue", func() bool { return acceptQueue(t, raw) == 1 })
	select {
	case <-got:
		t.Fatal("accepted before the commit")
	default:
	}
	close(held)
	select {
	case a := <-got:
		if a == nil {
			t.Fatal("Accept failed")
		}
		a.Close()
	case <-time.After(waitBound):
		t.Fatal("not accepted after the commit")
	}
	// Close ends an Accept that waits for the commit.
	l2 := (&Drainer{}).Listener(listenLoopback(t)).(*listener)
	l2.held = make(chan struct{})
	errc := make(chan error, 1)
	go func() { _, err := l2.Accept(); errc <- err }()
	l2.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}
