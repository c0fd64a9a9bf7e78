//go:build linux

package graceful

import (
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The successor watch driven by hand (see machine_test.go): what this process does
// when the generation it handed over to dies, or retires.

// busy gives the process a target with one open connection on a listener of its
// own (held by its socket set): its drain lasts until the connection closes, or the
// drain is cut or taken back. It returns the Drainer's listener and the client's
// end of the connection.
func (w *fakeWorld) busy() (net.Listener, net.Conn) {
	w.t.Helper()
	ln, err := w.m.set.Listen("web", "tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	d := &Drainer{}
	tl := d.Listener(ln)
	w.m.adopt(&target{d: d})
	client := dialAccept(w.t, tl)
	w.t.Cleanup(func() {
		client.Close()
		tl.Close()
	})
	return tl, client
}

// dialAccept connects to ln and accepts the connection through it; the server's
// end is closed at the end of the test, and the client's end returned.
func dialAccept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	client, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-accepted:
		t.Cleanup(func() { c.Close() })
	case <-time.After(waitBound):
		t.Fatal("the connection was not accepted")
	}
	return client
}

// TestSuccessorDiesResume: without a service manager, a successor that dies while
// this process drains (without having said "done") makes this process take its
// drains back and serve again: the listeners accept, Exit is a new channel, the
// previous generation hears "current", and the upgrade is recorded as died.
func TestSuccessorDiesResume(t *testing.T) {
	w := newWorld(t, nil)
	ln, _ := w.busy()
	up := newFakeChannel()
	w.readyWith(up)
	g := w.upgradeTo()
	if w.m.st != draining || !w.exitClosed() {
		t.Fatalf("after the handover: %s", w.m.st)
	}
	up.expect(t, handoff.Done)
	g.die("signal: segmentation fault")
	w.stepUntil("the successor's death is judged", func() bool { return w.m.next.cur == nil })
	if w.m.st != serving || w.m.nextPID != 0 || w.exitClosed() || !w.logged("successor_died", "action=resume") || !w.logged("resumed") {
		t.Fatalf("after the successor died: %s, exit closed %v", w.m.st, w.exitClosed())
	}
	up.expect(t, handoff.Current)
	if r := w.m.status().Upgrades[0]; r.Outcome != "died" || r.To != g.pid() {
		t.Fatalf("record %+v", r)
	}
	dialAccept(t, ln).Close() // the listener accepts again
	w.upgradeTo()             // and the process may upgrade again
}

// A stop while draining makes the drain final: a successor that dies then is not
// resumed.
func TestSuccessorDiesAfterStop(t *testing.T) {
	w := newWorld(t, nil)
	w.busy()
	w.ready()
	g := w.upgradeTo()
	w.m.handle(stopRequest{"SIGTERM", make(chan struct{})})
	if !w.logged("stop_ignored") || !w.m.final {
		t.Fatal("a stop while draining did not make the drain final")
	}
	g.die("exit status 1")
	w.stepUntil("the successor's death is judged", func() bool { return w.m.next.cur == nil })
	if w.m.st != draining || !w.logged("successor_died", "action=none") {
		t.Fatalf("after the successor died: %s", w.m.st)
	}
}

// TestSuccessorRetires: a successor that said "done" (it handed over in turn, or
// stopped) exits without consequence; its channel is kept until it ends.
func TestSuccessorRetires(t *testing.T) {
	w := newWorld(t, nil)
	w.busy()
	up := newFakeChannel()
	w.readyWith(up)
	g := w.upgradeTo()
	up.expect(t, handoff.Done)
	g.ch.say(handoff.Message{Verb: handoff.Done})
	// "finish" goes up the line; once it is posted, "done" was read before it.
	g.ch.say(handoff.Message{Verb: handoff.Finish})
	stepTo[successorFinish](w)
	up.expect(t, handoff.Finish)
	g.proc.exit("exit status 0")
	w.clock.waitTimer(t, w.clock.Now().Add(lastWordsWait), 1)
	w.clock.Advance(lastWordsWait)
	stepTo[successorExited](w)
	if !w.logged("successor_retired") || w.m.next.cur == nil || g.ch.isClosed() {
		t.Fatal("a retired successor's exit: its channel is not kept")
	}
	// Its own successor, which holds the channel now, says "current", then hangs up.
	g.ch.say(handoff.Message{Verb: handoff.Current})
	g.stderr.Close()
	g.ch.hangUp()
	stepTo[successorGone](w)
	if w.m.next.cur != nil || !g.ch.isClosed() || w.logged("successor_died") || w.m.st != draining {
		t.Fatalf("after the channel ended: state %s", w.m.st)
	}
	select {
	case <-w.spawned:
		t.Fatal("a replacement was started for a successor that retired")
	default:
	}
}

// TestSuccessorReplacement: a successor that dies when this process cannot take
// its drain back (the application took Exit) is replaced by this process's own
// build (the last good build) on the sockets kept open, at most three times. The
// process drained long ago: it stands by for each new generation's probation
// while it can still start a replacement, and finishes once it cannot.
func TestSuccessorReplacement(t *testing.T) {
	w := newWorld(t, nil)
	w.ready()
	w.m.exit.take()
	g := w.upgradeTo()
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained && w.m.holds.Load() == 0 })
	if w.m.next.reserve == nil || !w.m.standingBy() {
		t.Fatal("no sockets kept for a replacement, or not standing by")
	}
	reserve := w.m.next.reserve
	for i := 1; i <= maxReplacements; i++ {
		g.die("signal: segmentation fault")
		r := w.child()
		if !w.logged("successor_died", "action=replace", "attempt="+strconv.Itoa(i)) {
			t.Fatalf("death %d: no replacement logged", i)
		}
		if r.spec.child.path != selfExecutable || r.spec.reserve != reserve {
			t.Fatalf("replacement %d started from %q (reserve %v)", i, r.spec.child.path, r.spec.reserve != nil)
		}
		if st := w.m.status(); st.Upgrading != r.pid() {
			t.Fatalf("Status while replacing: %+v", st)
		}
		w.takeOver(r)
		// The last sender's release posts the wake that finishes the process just
		// after holds reaches 0: after the last replacement, wait for that too.
		last := i == maxReplacements
		w.stepUntil("the messages are sent (and, after the last replacement, the process is done)", func() bool {
			return w.m.holds.Load() == 0 && (!last || w.m.st == exited)
		})
		if w.m.next.cur == nil || w.m.next.cur.pid != r.pid() {
			t.Fatalf("after replacement %d took over: watching %v", i, w.m.next.cur)
		}
		if last != (w.m.st == exited) {
			t.Fatalf("after replacement %d took over: %s (standing by while a replacement is left, done once none is)", i, w.m.st)
		}
		g = r
	}
	if w.m.next.reserve != nil {
		t.Fatal("the sockets kept for a replacement are still open once the process is done")
	}
	g.die("signal: segmentation fault")
	w.stepUntil("the last death is judged", func() bool { return w.m.next.cur == nil })
	if !w.logged("successor_died", "action=none") {
		t.Fatal("no word of the last death")
	}
	select {
	case <-w.spawned:
		t.Fatal("a fourth replacement was started")
	default:
	}
	var outcomes []string
	for _, r := range w.m.status().Upgrades {
		if r.Trigger == "replacement" {
			outcomes = append(outcomes, r.Outcome)
		}
	}
	// The third replacement died after its probation: its upgrade stays "ok".
	if want := []string{"died", "died", "ok"}; !slices.Equal(outcomes, want) {
		t.Fatalf("replacements recorded as %v; want %v", outcomes, want)
	}
}
