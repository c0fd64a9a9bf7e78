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

// An upgrade attempt's ways to fail, driven by hand (see machine_test.go). Each is
// reported once (logged with its cause, recorded, answered), and only once the new
// process is dead; the old generation serves on.

// checkServesOn checks that the process serves after a failed upgrade, the failure
// recorded.
func checkServesOn(t *testing.T, w *fakeWorld, cause, errText string) {
	t.Helper()
	st := w.m.status()
	if st.State != "serving" || st.Upgrading != 0 || !strings.Contains(st.LastError, errText) || w.exitClosed() {
		t.Fatalf("after a failed upgrade: %+v, exit closed %v; want serving, last error %q", st, w.exitClosed(), errText)
	}
	if r := st.Upgrades[len(st.Upgrades)-1]; r.Outcome != "failed" || r.Reason != cause || !strings.Contains(r.Error, errText) {
		t.Fatalf("record %+v", r)
	}
}

func TestAttemptStartFails(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	w.spawnErr = errors.New("new binary /opt/app/current/app does not exist (was it removed or renamed during the deploy?)")
	rep := w.upgrade()
	w.failed(rep, causeStart)
	checkServesOn(t, w, causeStart, "does not exist")
	if r := w.m.status().Upgrades[0]; r.To != 0 {
		t.Fatalf("record of a start that failed: %+v", r)
	}
	w.spawnErr = nil
	w.upgradeTo() // the next attempt may succeed
	if st := w.m.status(); st.LastError != "" {
		t.Fatalf("LastError after a successful upgrade: %q", st.LastError)
	}
}

// A new generation that cannot start says why ("error ...") and dies: the failure
// says how it exited, what it said and its last lines on stderr, read to the end.
func TestAttemptExitsWithLastWords(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	rep := w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Error, Text: "listen tcp :80: bind: permission denied"})
	fmt.Fprintln(g.stderr, "starting")
	fmt.Fprintln(g.stderr, "panic: no port")
	g.die("exit status 1")
	e := w.failed(rep, causeExited)
	want := fmt.Sprintf("the new generation (PID %d) exited before it was ready (exit status 1): listen tcp :80: bind: permission denied\nits last lines on stderr:\n  starting\n  panic: no port", g.pid())
	if e.Error() != want {
		t.Fatalf("error:\n%s\nwant:\n%s", e, want)
	}
	if g.proc.wasKilled() || !g.proc.wasReleased() || !w.logged("child_error") {
		t.Fatalf("killed %v, released %v", g.proc.wasKilled(), g.proc.wasReleased())
	}
	checkServesOn(t, w, causeExited, "permission denied")
	if r := w.m.status().Upgrades[0]; r.Stderr != "starting\npanic: no port" || r.To != g.pid() {
		t.Fatalf("record %+v", r)
	}
}

// A dead process whose stderr stays open (a child of its own holds it) is given
// lastWordsWait for its last words.
func TestAttemptLastWordsWait(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	rep := w.upgrade()
	g := w.child()
	g.ch.hangUp()
	g.proc.exit("exit status 2")
	w.clock.waitTimer(t, w.clock.Now().Add(lastWordsWait), 1)
	w.quiet("before lastWordsWait passed")
	w.clock.Advance(lastWordsWait)
	if e := w.failed(rep, causeExited); !strings.Contains(e.Error(), "(exit status 2)") {
		t.Fatalf("error %q", e)
	}
}

func TestAttemptProtocolError(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	rep := w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Main}) // a new generation does not say that
	if m := g.ch.expect(t, handoff.Abort); !strings.Contains(m.Text, `unexpected message "main"`) {
		t.Fatalf("abort says %q", m.Text)
	}
	w.failed(rep, causeProtocol)
	if !g.proc.wasKilled() {
		t.Fatal("not killed")
	}
	checkServesOn(t, w, causeProtocol, "unexpected message")
}

// A process that closes its channel and lives on fails once lastWordsWait has
// passed without its exit; one that exits meanwhile fails as exited.
func TestAttemptChannelClosed(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	rep := w.upgrade()
	g := w.child()
	g.ch.hangUp()
	w.clock.waitTimer(t, w.clock.Now().Add(lastWordsWait), 1)
	w.clock.Advance(lastWordsWait)
	w.failed(rep, causeChannelClosed)
	if !g.proc.wasKilled() {
		t.Fatal("not killed")
	}
	checkServesOn(t, w, causeChannelClosed, "closed the handover channel before it was ready")

	rep = w.upgrade()
	g = w.child()
	g.ch.hangUp()
	w.clock.waitTimer(t, w.clock.Now().Add(lastWordsWait), 1)
	g.stderr.Close()
	g.proc.exit("exit status 3")
	w.failed(rep, causeExited)
}

// TestAttemptTimeout: a new generation not ready within UpgradeTimeout is told why,
// killed, and reported; systemd hears READY=1 again, with the failure in STATUS=.
func TestAttemptTimeout(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.ready()
	rep := w.upgrade()
	if w.sd.count("RELOADING=1\nMONOTONIC_USEC=") != 1 {
		t.Fatalf("no RELOADING=1: %q", w.sd.sent)
	}
	g := w.child()
	w.clock.Advance(w.m.cfg.UpgradeTimeout)
	if m := g.ch.expect(t, handoff.Abort); !strings.Contains(m.Text, "not ready within 30s") {
		t.Fatalf("abort says %q", m.Text)
	}
	w.failed(rep, causeTimeout)
	if !g.proc.wasKilled() {
		t.Fatal("not killed")
	}
	checkServesOn(t, w, causeTimeout, "not ready within 30s")
	if w.sd.count("READY=1\nSTATUS=serving: generation 1") != 1 || w.sd.count("last upgrade failed: the new generation") == 0 {
		t.Fatalf("systemd heard %q", w.sd.sent)
	}
}

// TestAttemptFailureReportedOnceDead: a failure is reported only once the killed
// process is dead (reaped, when it is a child): whoever hears of it never finds the
// failed build still running. One that does not die within killWait is reported
// then, and no longer watched.
func TestAttemptFailureReportedOnceDead(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	w.slowDeath = true
	rep := w.upgrade()
	g := w.child()
	w.clock.Advance(w.m.cfg.UpgradeTimeout)
	g.ch.expect(t, handoff.Abort)
	w.clock.waitTimer(t, w.clock.Now().Add(w.m.killWait), 1) // killed, waited for
	if !g.proc.wasKilled() {
		t.Fatal("not killed")
	}
	w.quiet("while the killed process lives")
	if st := w.m.status(); st.LastError != "" || len(st.Upgrades) != 0 || rep.got {
		t.Fatalf("reported while the killed process lives: %+v, answered %v", st, rep.got)
	}
	g.proc.exit("signal: killed")
	w.failed(rep, causeTimeout)
	if !w.logged("upgrade_failed", `status="signal: killed"`) {
		t.Fatal("the failure does not say how the process ended")
	}
	checkServesOn(t, w, causeTimeout, "not ready within")

	rep = w.upgrade()
	g = w.child()
	w.clock.Advance(w.m.cfg.UpgradeTimeout)
	w.clock.waitTimer(t, w.clock.Now().Add(w.m.killWait), 1)
	w.clock.Advance(w.m.killWait)
	w.failed(rep, causeTimeout)
	if !g.proc.wasReleased() {
		t.Fatal("a process that did not die is still watched")
	}
}

// Under systemd, a MAINPID= that cannot be sent fails the upgrade: systemd would
// stop the unit with this process.
func TestAttemptNotifyFails(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.ready()
	w.sd.fail = "MAINPID="
	rep := w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	w.failed(rep, causeNotify)
	if !g.proc.wasKilled() {
		t.Fatal("not killed")
	}
	checkServesOn(t, w, causeNotify, "telling systemd MAINPID=")
}

// Without systemd, a new generation that goes away as it is told "main" fails the
// upgrade; the process, which stopped accepting just before (see
// TestHandoverQuiescesBeforeMain), accepts again.
func TestAttemptConfirmFails(t *testing.T) {
	w := newWorld(t, nil)
	tl := w.listening()
	w.ready()
	rep := w.upgrade()
	g := w.child()
	g.ch.failSend.Store(true)
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	w.failed(rep, causeConfirm)
	if !g.proc.wasKilled() {
		t.Fatal("not killed")
	}
	checkServesOn(t, w, causeConfirm, "went away right after it was ready")
	if !acceptsWithin(t, tl) {
		t.Fatal("the listener does not accept after the failed handover")
	}
}

// TestAttemptAbandoned: a stop abandons the attempt: the new process is told so and
// killed; the upgrade is reported abandoned once it is dead, and the process
// finishes only then.
func TestAttemptAbandoned(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	w.slowDeath = true
	rep := w.upgrade()
	g := w.child()
	w.m.handle(stopRequest{"Stop called", make(chan struct{})})
	if w.m.st != stopping || !w.exitClosed() || w.m.status().Upgrading != 0 {
		t.Fatalf("after Stop: %s, exit closed %v", w.m.st, w.exitClosed())
	}
	if m := g.ch.expect(t, handoff.Abort); m.Text != errAbandoned.Error() {
		t.Fatalf("abort says %q", m.Text)
	}
	w.clock.waitTimer(t, w.clock.Now().Add(w.m.killWait), 1)
	w.quiet("while the abandoned process lives")
	if w.m.st != stopping {
		t.Fatalf("finished (%s) while the abandoned process lives", w.m.st)
	}
	g.proc.exit("signal: killed")
	w.failed(rep, causeAbandoned)
	if r := w.m.status().Upgrades[0]; r.Outcome != "abandoned" || w.m.st != exited {
		t.Fatalf("record %+v, state %s", r, w.m.st)
	}
	if again := w.upgrade(); !errors.Is(again.r.err, errStopping) {
		t.Fatalf("Upgrade after Stop: %+v", again)
	}
}

// A new generation that took over just as a stop abandoned its attempt is killed,
// as it would have been a moment earlier.
func TestAttemptAbandonedAfterHandover(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	rep := w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	g.ch.expect(t, handoff.History)
	g.ch.expect(t, handoff.Main)
	eventually(t, "the attempt's outcome to be posted", func() bool { return len(w.events) > 0 })
	w.m.handle(stopRequest{"Stop called", make(chan struct{})})
	if e := w.step().(attemptEnded); e.err != nil {
		t.Fatalf("the attempt failed (%v); want it to have taken over", e.err)
	}
	w.failed(rep, causeAbandoned)
	if !g.proc.wasKilled() || w.m.nextPID != 0 {
		t.Fatalf("killed %v, handed over to %d", g.proc.wasKilled(), w.m.nextPID)
	}
}

// acceptsWithin reports whether ln, a Drainer's listener, accepts a connection
// dialled now within waitBound; the connection accepted (if any) is closed.
func acceptsWithin(t *testing.T, ln net.Listener) bool {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		got <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case a := <-got:
		if a == nil {
			return false
		}
		a.Close()
		return true
	case <-time.After(waitBound):
		ln.Close() // ends the Accept
		<-got
		return false
	}
}

// TestHandoverQuiescesBeforeMain: the process stops accepting just before it tells
// the new generation "main", before it hears the handover's outcome and drains: a
// connection that arrives from then on waits in the accept queue for the new
// generation instead of racing to the first of the two processes to accept.
func TestHandoverQuiescesBeforeMain(t *testing.T) {
	w := newWorld(t, nil)
	tl := w.listening()
	sock := socketOf(t, tl.(*listener).Listener)
	w.ready()
	w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	g.ch.expect(t, handoff.History)
	g.ch.expect(t, handoff.Main)
	if w.m.st != upgrading {
		t.Fatalf("state %s once \"main\" was sent; want upgrading (the outcome not heard yet)", w.m.st)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := tl.Accept()
		accepted <- c
	}()
	d := tl.(*listener).d
	eventually(t, "the Accept to wait out the pause", func() bool { return d.accepting.Load() == 0 })
	c, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eventually(t, "the connection to wait in the accept queue", func() bool { return acceptQueueOf(t, sock, tl.Addr().String()) == 1 })
	select {
	case a := <-accepted:
		t.Fatalf("accepted %v after \"main\" was sent", a)
	default:
	}
	select {
	case <-d.Draining():
		t.Fatal("draining before the handover's outcome")
	default:
	}
	if e := stepTo[attemptEnded](w); e.err != nil {
		t.Fatalf("the handover failed: %v", e.err)
	}
	if w.m.st != draining {
		t.Fatalf("state %s after the handover; want draining", w.m.st)
	}
	select {
	case a := <-accepted:
		t.Fatalf("accepted %v while draining", a)
	default:
	}
}
