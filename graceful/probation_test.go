//go:build linux

package graceful

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
)

// The successor's probation driven by hand (see machine_test.go): a process that
// drained quickly (nothing to drain here) stands by, its listeners stopped but
// open, until the new generation's probation is over.

// listening gives the process a target with a listener of its own (held by its
// socket set) and no connection: its drain ends at once.
func (w *fakeWorld) listening() net.Listener {
	w.t.Helper()
	ln, err := w.m.set.Listen("web", "tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	d := &Drainer{}
	tl := d.Listener(ln)
	w.m.adopt(&target{d: d})
	w.t.Cleanup(func() { tl.Close() })
	return tl
}

// drainedAndStandingBy upgrades w to a new generation, which takes over, and waits
// until w's drain has ended: it stands by. It returns the new generation.
func (w *fakeWorld) drainedAndStandingBy() *fakeGen {
	w.t.Helper()
	g := w.upgradeTo()
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained && w.m.holds.Load() == 0 })
	if w.m.st != draining || !w.m.standingBy() {
		w.t.Fatalf("state %s, standing by %v; want it standing by", w.m.st, w.m.standingBy())
	}
	if w.doneClosed() {
		w.t.Fatal("Wait returned while the process stands by")
	}
	return g
}

func (w *fakeWorld) doneClosed() bool {
	select {
	case <-w.m.done.ch:
		return true
	default:
		return false
	}
}

// TestProbationDeathResumes: a new generation that dies within its probation, after
// this process has drained (the case of a busy keep-alive server, which drains in
// milliseconds), makes this process serve again, as a death during the drain does:
// its listener accepts again, the upgrade's record says died, Wait has not
// returned. The record and Status show the probation's end.
func TestProbationDeathResumes(t *testing.T) {
	w := newWorld(t, nil)
	ln := w.listening()
	up := newFakeChannel()
	w.readyWith(up)
	start := w.clock.Now()
	g := w.drainedAndStandingBy()
	up.expect(t, handoff.Done)
	until := start.Add(10 * time.Second)
	if r := w.m.status().Upgrades[0]; !r.Drained || !r.ProbationUntil.Equal(until) {
		t.Fatalf("record %+v; want drained, probation until %s", r, until)
	}
	if st := w.m.status(); !st.ProbationUntil.Equal(until) || st.State != "draining" {
		t.Fatalf("Status while standing by: %+v", st)
	}
	w.clock.Advance(9 * time.Second) // within the probation
	g.die("exit status 1")
	w.stepUntil("the successor's death is judged", func() bool { return w.m.next.cur == nil })
	if w.m.st != serving || !w.logged("successor_died", "action=resume") || !w.logged("resumed") || w.doneClosed() || w.exitClosed() {
		t.Fatalf("after a death within the probation: %s, done %v", w.m.st, w.doneClosed())
	}
	up.expect(t, handoff.Current)
	if r := w.m.status().Upgrades[0]; r.Outcome != "died" {
		t.Fatalf("record %+v; want died", r)
	}
	if p := w.probationTimer(); p != nil {
		t.Fatalf("the probation timer is still pending: %+v", p)
	}
	// The listener accepts again.
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	client.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(waitBound):
		t.Fatal("the listener does not accept after the resume")
	}
	// The next upgrade drains and stands by again.
	g = w.drainedAndStandingBy()
	w.passProbation(10 * time.Second)
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	_ = g
}

// TestProbationOver: once the probation is over, the process finishes (Wait
// returns, its listeners are closed, so are the copies of its sockets), and a new
// generation that dies after that is not met: nothing is started, its upgrade
// stays ok.
func TestProbationOver(t *testing.T) {
	w := newWorld(t, nil)
	ln := w.listening()
	w.ready()
	g := w.drainedAndStandingBy()
	if w.m.next.reserve == nil {
		t.Fatal("no copies of the sockets kept during the probation")
	}
	w.passProbation(10 * time.Second)
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	if !w.doneClosed() || w.m.next.reserve != nil || !w.logged("probation_over", "reason=passed") {
		t.Fatalf("after the probation: done %v, reserve %v", w.doneClosed(), w.m.next.reserve != nil)
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("the listener accepts after the process finished")
	}
	g.die("signal: segmentation fault")
	w.stepUntil("the successor's death is judged", func() bool { return w.m.next.cur == nil })
	if w.m.st != exited || !w.logged("successor_died", "action=none") {
		t.Fatalf("after a death past the probation: %s", w.m.st)
	}
	select {
	case <-w.spawned:
		t.Fatal("a replacement was started for a death past the probation")
	default:
	}
	if r := w.m.status().Upgrades[0]; r.Outcome != "ok" {
		t.Fatalf("record %+v; want ok", r)
	}
}

// TestProbationStop: a stop during the probation finishes the process at once.
func TestProbationStop(t *testing.T) {
	w := newWorld(t, nil)
	w.listening()
	w.ready()
	g := w.drainedAndStandingBy()
	w.m.handle(signalEvent{syscall.SIGTERM})
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	if !w.doneClosed() || !w.logged("probation_over", "reason=stop") || w.probationTimer() != nil {
		t.Fatalf("after a stop: done %v", w.doneClosed())
	}
	g.die("exit status 1")
	w.stepUntil("the successor's death is judged", func() bool { return w.m.next.cur == nil })
	if w.m.st != exited || !w.logged("successor_died", "action=none") {
		t.Fatalf("after the stop, a death: %s", w.m.st)
	}
}

// TestProbationRetired: a new generation that hands over in turn (or stops) says
// "done": its probation is over, and this process finishes.
func TestProbationRetired(t *testing.T) {
	w := newWorld(t, nil)
	w.listening()
	w.ready()
	g := w.drainedAndStandingBy()
	g.ch.say(handoff.Message{Verb: handoff.Done})
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	if !w.doneClosed() || !w.logged("probation_over", "reason=retired") {
		t.Fatal("not done after the successor retired")
	}
}

// TestProbationWhere: there is none under systemd (its main process is not ours to
// watch), none with a negative Config.Probation, and none for a process that can
// neither resume nor start a replacement; a drained process then finishes at once.
// A process that cannot resume (it took Exit) but can start a replacement stands
// by.
func TestProbationWhere(t *testing.T) {
	for _, c := range []struct {
		name    string
		w       *fakeWorld
		standBy bool
	}{
		{"systemd", newWorld(t, nil).withSystemd(), false},
		{"negative", newWorld(t, func(c *Config) { c.Probation = -1 }), false},
		{"exit taken", newWorld(t, nil), true},
		{"seconds", newWorld(t, func(c *Config) { c.Probation = 3 * time.Second }), true},
	} {
		w := c.w
		w.listening()
		w.ready()
		if c.name == "exit taken" {
			w.m.exit.take()
		}
		w.upgradeTo()
		w.stepUntil("the end of the drain", func() bool { return w.m.line.drained && w.m.holds.Load() == 0 })
		r := w.m.status().Upgrades[0]
		if c.standBy {
			if w.m.st != draining || r.ProbationUntil.IsZero() {
				t.Errorf("%s: %s, record %+v; want it standing by", c.name, w.m.st, r)
			}
			w.m.handle(stopRequest{"test", make(chan struct{})})
			continue
		}
		if w.m.st != exited || !r.ProbationUntil.IsZero() || w.probationTimer() != nil {
			t.Errorf("%s: %s, record %+v; want it done, no probation", c.name, w.m.st, r)
		}
	}
	w := newWorld(t, func(c *Config) { c.Probation = 3 * time.Second })
	w.listening()
	w.ready()
	w.drainedAndStandingBy()
	w.passProbation(3 * time.Second)
}

// TestProbationStoppedSuccessorRetires: a new generation told to stop right after
// it took over says "done" and exits at once, while this process's last news (how
// its drain went) is still on its way to it, unread. Over a real handover channel,
// as between two processes: Linux marks this end reset when the other end closes
// with messages unread, and a SOCK_SEQPACKET read reports that before what is
// queued, the "done" among it. This process reads the channel only once the other
// end is closed (as when the exit comes before its reader runs again): the "done"
// is read all the same, its exit is no crash, the probation is over (retired), and
// this process finishes rather than serving again. One that crashes the same way,
// without a "done", is met as a death: this process serves again.
func TestProbationStoppedSuccessorRetires(t *testing.T) {
	for _, c := range []struct {
		name   string
		said   []handoff.Message
		status string
	}{
		{"stopped", []handoff.Message{{Verb: handoff.Done}}, "exit status 0"},
		{"crashed", nil, "exit status 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, nil)
			w.listening()
			w.ready()
			g := w.standingByReal()
			for _, m := range c.said {
				if err := g.end.Send(m, waitBound); err != nil {
					t.Fatal(err)
				}
			}
			g.end.Close()
			g.proc.exit(c.status)
			g.read()
			w.stepUntil("the successor's exit is judged", func() bool { return w.logged("successor_retired") || w.logged("successor_died") })
			w.stepUntil("the process is done, or serves", func() bool { return w.m.st == exited || w.m.st == serving })
			switch {
			case c.said == nil && (w.m.st != serving || !w.logged("successor_died", "action=resume")):
				t.Fatalf("after the new generation crashed: %s; want it serving again", w.m.st)
			case c.said != nil && (w.m.st != exited || !w.doneClosed() || !w.logged("probation_over", "reason=retired") || w.logged("successor_died") || w.logged("resumed")):
				t.Fatalf("after the new generation stopped: %s, done %v; want it done, the probation over (retired), no resume", w.m.st, w.doneClosed())
			}
		})
	}
}

// standingByReal upgrades w to a new generation over a real channel, which takes
// over, and waits until w's drain has ended: it stands by, and the new generation
// has not read what w said after "main" (how the drain went).
func (w *fakeWorld) standingByReal() realGen {
	w.t.Helper()
	g := w.spawnReal()
	rep := w.upgrade()
	stepTo[attemptStarted](w)
	if err := g.end.Send(handoff.Message{Verb: handoff.Ready, PID: g.proc.pid}, waitBound); err != nil {
		w.t.Fatal(err)
	}
	stepTo[attemptReady](w)
	for _, verb := range []string{handoff.History, handoff.Main} {
		if m, err := g.end.Receive(); err != nil || m.Verb != verb {
			w.t.Fatalf("the new generation heard %+v, %v; want %s", m, err, verb)
		}
	}
	g.stderr.Close()
	if e := stepTo[attemptEnded](w); e.err != nil || !rep.got || rep.r.pid != g.proc.pid {
		w.t.Fatalf("the handover failed: %v", e.err)
	}
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained && w.m.holds.Load() == 0 })
	if !w.m.standingBy() {
		w.t.Fatalf("state %s; want it standing by", w.m.st)
	}
	return g
}

// realGen is a new generation that talks over a real handover channel; the test
// plays it through its end.
type realGen struct {
	proc   *fakeProc
	end    *handoff.Channel // the new generation's end
	stderr *os.File         // the write end of its stderr pipe
	read   func()           // this process reads past the first message from now on
}

// heldChannel is this process's end of a real channel, whose reads after the first
// wait until read is closed.
type heldChannel struct {
	*handoff.Channel
	read  chan struct{}
	reads atomic.Int32
}

func (c *heldChannel) Receive() (handoff.Message, error) {
	if c.reads.Add(1) > 1 {
		<-c.read
	}
	return c.Channel.Receive()
}

// spawnReal makes w's next new generation one over a real channel.
func (w *fakeWorld) spawnReal() realGen {
	w.t.Helper()
	ours, theirs, err := handoff.SocketPair()
	if err != nil {
		w.t.Fatal(err)
	}
	end, err := handoff.NewChannel(theirs)
	if err != nil {
		w.t.Fatal(err)
	}
	r, wr, err := os.Pipe()
	if err != nil {
		w.t.Fatal(err)
	}
	read := make(chan struct{})
	g := realGen{proc: &fakeProc{pid: 3000, exited: make(chan struct{})}, end: end, stderr: wr, read: sync.OnceFunc(func() { close(read) })}
	w.t.Cleanup(func() {
		g.read()
		ours.Close()
		end.Close()
		wr.Close()
		g.proc.exit("")
	})
	end.SetDeadline(time.Now().Add(waitBound))
	w.m.spawn = func(spawnSpec) (*generation, error) {
		return newGeneration(g.proc, &heldChannel{Channel: ours, read: read}, proc.Relay(r, io.Discard)), nil
	}
	return g
}
