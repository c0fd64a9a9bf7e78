//go:build linux

package graceful

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The lineage of draining generations driven by hand (see machine_test.go): the
// count of older generations that drain, the farewell that passes the upstream
// channel on, and MaxDraining.

// TestLineageAbove: "above" comes down the line; a generation that drains passes
// one more on to its successor; the end of its upstream means none drains above.
func TestLineageAbove(t *testing.T) {
	w := newWorld(t, nil)
	w.busy()
	up := newFakeChannel()
	w.readyWith(up)
	up.say(handoff.Message{Verb: handoff.Above, N: 2})
	stepTo[upstreamMessage](w)
	if st := w.m.status(); st.OlderDraining != 2 {
		t.Fatalf("OlderDraining %d; want 2", st.OlderDraining)
	}
	g := w.upgradeTo()
	if b := g.batch; b[1].Verb != handoff.Above || b[1].N != 3 {
		t.Fatalf("initial batch %v; want above 3", b)
	}
	up.expect(t, handoff.Done)
	if a := g.ch.expect(t, handoff.Above); a.N != 3 {
		t.Fatalf("at the handover, the successor heard above %d; want 3", a.N)
	}
	up.say(handoff.Message{Verb: handoff.Above, N: 1})
	stepTo[upstreamMessage](w)
	if a := g.ch.expect(t, handoff.Above); a.N != 2 {
		t.Fatalf("the successor heard above %d; want 2", a.N)
	}
	up.hangUp()
	stepTo[upstreamEnded](w)
	if a := g.ch.expect(t, handoff.Above); a.N != 1 || w.m.line.above != 0 || w.m.line.up != nil {
		t.Fatalf("after the upstream ended: the successor heard above %d (want 1), above %d", a.N, w.m.line.above)
	}
}

// TestLineageFarewell: a generation that has drained tells its successor how the
// drain went, and that it no longer drains; as it finishes (after the successor's
// probation), it passes on its channel to the older generation still draining.
func TestLineageFarewell(t *testing.T) {
	w := newWorld(t, nil)
	up := newFakeChannel()
	w.readyWith(up)
	up.say(handoff.Message{Verb: handoff.Above, N: 1})
	stepTo[upstreamMessage](w)
	g := w.upgradeTo()
	up.expect(t, handoff.Done)
	g.ch.expect(t, handoff.Above)
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained })
	var d drainStats
	if err := json.Unmarshal([]byte(g.ch.expect(t, handoff.Drained).Text), &d); err != nil || d.To != g.pid() || d.From == 0 {
		t.Fatalf("drained %+v, %v", d, err)
	}
	if a := g.ch.expect(t, handoff.Above); a.N != 1 {
		t.Fatalf("above %d once drained; want 1 (only the older generation drains)", a.N)
	}
	if w.m.line.farewell || up.isClosed() || up.readStopped() {
		t.Fatal("the channel to the older generation was passed on during the probation")
	}
	w.passProbation(10 * time.Second)
	if !up.readStopped() || up.isClosed() {
		t.Fatal("the farewell did not stop the reader of the channel to the older generation first (leaving it open)")
	}
	w.stepUntil("the channel is passed on", func() bool { return w.m.line.up == nil })
	if m := g.ch.expect(t, handoff.Upstream); m.N != 1 || len(m.Files) != 1 {
		t.Fatalf("upstream %d with %d files; want 1 and the channel", m.N, len(m.Files))
	}
	if !up.isClosed() {
		t.Fatal("this process still holds the channel it passed on")
	}
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	if r := w.m.status().Upgrades[0]; !r.Drained {
		t.Fatalf("record %+v", r)
	}
}

// TestLineageFarewellConns: connections the older generation hands over, which
// this process's reader of the upstream channel read (and said it has: the older
// generation lets its copies go) just as the farewell began, go on to the successor
// ahead of the channel itself. The successor stops reading this process's channel
// once "upstream" comes, so a "conns" after it would be lost: the connection closed
// unseen, the client's next request reset (TestSystemdSignalStorm/252,
// TestSystemdConcurrentReloads/252: a generation finishes as soon as it drained).
// The channel goes on, and the process finishes, only once its reader has ended.
func TestLineageFarewellConns(t *testing.T) {
	w := newWorld(t, nil)
	tl := w.withConnCarrier()
	up, g := w.drainedBelow()
	client, f := handedConn(t)
	up.say(handoff.Message{Verb: handoff.Conns, Text: originText(tl), Files: []*os.File{f}})
	up.expect(t, handoff.ConnsTaken) // read: posted to the machine, not handled yet
	w.passProbation(10 * time.Second)
	w.stepUntil("something is sent to the successor", func() bool { return len(g.ch.sent) > 0 })
	m := g.ch.expect(t, handoff.Conns)
	if len(m.Files) != 1 {
		t.Fatalf("the successor got %d descriptors; want the connection", len(m.Files))
	}
	sameConnFile(t, client, m.Files[0])
	g.ch.say(handoff.Message{Verb: handoff.ConnsTaken, N: 1})
	w.stepUntil("the channel is passed on", func() bool { return w.m.line.up == nil })
	if m := g.ch.expect(t, handoff.Upstream); len(m.Files) != 1 || !up.isClosed() {
		t.Fatalf("upstream with %d files, this end closed %v; want the channel passed on", len(m.Files), up.isClosed())
	}
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	g.ch.nothingSent(t, "after the farewell")
	if w.logged("conn_dropped") {
		t.Fatal("a connection was dropped")
	}
}

// TestLineageConnsAfterUpstream: connections that come on the channel to the
// previous generation after it passed on its own upstream channel ("upstream": a
// generation of an older build sent them after it) are served here, not closed.
func TestLineageConnsAfterUpstream(t *testing.T) {
	w := newWorld(t, nil)
	tl := w.withConnCarrier()
	up := newFakeChannel()
	w.readyWith(up)
	older, f, err := handoff.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(older.Close)
	t.Cleanup(func() {
		if w.m.line.up != nil {
			w.m.line.up.Close() // the channel passed on
		}
	})
	client, cf := handedConn(t)
	up.say(handoff.Message{Verb: handoff.Upstream, N: 1, Files: []*os.File{f}})
	up.say(handoff.Message{Verb: handoff.Conns, Text: originText(tl), Files: []*os.File{cf}})
	up.expect(t, handoff.ConnsTaken) // both read before the machine handles either
	stepTo[upstreamMessage](w)
	if w.m.line.up == channel(up) || !up.isClosed() {
		t.Fatal("the channel passed on did not replace the previous one")
	}
	stepTo[upstreamMessage](w)
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := tl.Accept(); err == nil {
			accepted <- c
		}
	}()
	select {
	case c := <-accepted:
		defer c.Close()
		sameConn(t, client, c)
	case <-time.After(waitBound):
		t.Fatal("the connection was not served")
	}
}

// TestLineageFarewellResumed: a successor that dies as this process says farewell
// (its reader of the upstream channel stopped, the channel not passed on yet) makes
// it serve again, as a death during the drain does; the channel is read again, and
// not passed on.
func TestLineageFarewellResumed(t *testing.T) {
	w := newWorld(t, nil)
	w.listening()
	up, g := w.drainedBelow()
	w.passProbation(10 * time.Second)
	if !up.readStopped() {
		t.Fatal("the farewell did not begin")
	}
	// Its death, judged before the end of the reader is handled.
	g.proc.exit("exit status 1")
	w.m.handle(successorExited{s: w.m.next.cur})
	if w.m.st != serving {
		t.Fatalf("state %s after the successor died; want serving", w.m.st)
	}
	up.expect(t, handoff.Current)
	stepTo[upstreamEnded](w)
	if up.readStopped() || up.isClosed() || w.m.line.up != channel(up) {
		t.Fatal("the channel to the older generation is not read again")
	}
	up.say(handoff.Message{Verb: handoff.Above, N: 2})
	stepTo[upstreamMessage](w)
	if w.m.line.above != 2 {
		t.Fatalf("above %d; want what the older generation said", w.m.line.above)
	}
}

// drainedBelow makes w a generation below an older one that drains (its upstream
// channel, returned): w upgrades to a new generation (returned), which takes over,
// and w drains at once and stands by for the probation.
func (w *fakeWorld) drainedBelow() (*fakeChannel, *fakeGen) {
	w.t.Helper()
	up := newFakeChannel()
	w.readyWith(up)
	up.say(handoff.Message{Verb: handoff.Above, N: 1})
	stepTo[upstreamMessage](w)
	g := w.upgradeTo()
	up.expect(w.t, handoff.Done)
	g.ch.expect(w.t, handoff.Above)
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained })
	g.ch.expect(w.t, handoff.Drained)
	g.ch.expect(w.t, handoff.Above)
	return up, g
}

// withConnCarrier gives the process a connection carrier and a target whose
// listener (of the process's socket "web") takes connections in; it returns the
// listener.
func (w *fakeWorld) withConnCarrier() *listener {
	w.t.Helper()
	c := newConnCarrier(w.m.log, w.m.set)
	c.h = &carryHost{log: w.m.log, set: w.m.set, hold: w.m.hold}
	w.m.carriers = []carry.Carrier{c}
	tl := w.listening().(*listener)
	c.serve(tl.d, tl, tl.Listener, passHTTP)
	if tl.in.kind != passHTTP {
		w.t.Fatal("the listener takes no connection in")
	}
	return tl
}

// originText is the text of a "conns" message for connections of tl's socket.
func originText(tl *listener) string {
	b, _ := json.Marshal(tl.in.origin)
	return string(b)
}

// handedConn makes a loopback connection and returns its client end and a copy of
// its server end's descriptor, as a previous generation hands it over (the server
// end itself is closed).
func handedConn(t *testing.T) (net.Conn, *os.File) {
	t.Helper()
	ln := listenLoopback(t)
	client, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept() // queued by the kernel: Dial returned
	if err != nil {
		t.Fatal(err)
	}
	f, err := dupConn(server)
	server.Close()
	if err != nil {
		t.Fatal(err)
	}
	return client, f
}

// sameConn checks that server is the other end of client: what the client sends,
// it reads.
func sameConn(t *testing.T, client, server net.Conn) {
	t.Helper()
	client.SetDeadline(time.Now().Add(waitBound))
	server.SetDeadline(time.Now().Add(waitBound))
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "ping" {
		t.Fatalf("read %q, %v; want what the client sent", b, err)
	}
}

// sameConnFile is sameConn for a descriptor of the server end (which stays open).
func sameConnFile(t *testing.T, client net.Conn, f *os.File) {
	t.Helper()
	nc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sameConn(t, client, nc)
}

// TestLineageMaxDraining: a handover that makes more generations drain than
// MaxDraining sends "finish" up the line; a generation in the middle passes it on;
// the oldest force-closes its connections at once, as at its deadline.
func TestLineageMaxDraining(t *testing.T) {
	w := newWorld(t, func(c *Config) { c.MaxDraining = 2 })
	w.busy()
	up := newFakeChannel()
	w.readyWith(up)
	up.say(handoff.Message{Verb: handoff.Above, N: 2})
	stepTo[upstreamMessage](w)
	g := w.upgradeTo()
	up.expect(t, handoff.Done)
	up.expect(t, handoff.Finish)
	if !w.logged("too_many_draining", "draining=3", "max=2") {
		t.Fatal("too_many_draining not logged")
	}
	g.ch.say(handoff.Message{Verb: handoff.Finish}) // from further down the line
	stepTo[successorFinish](w)
	up.expect(t, handoff.Finish)
	if w.m.st != draining {
		t.Fatalf("the middle generation finished (%s)", w.m.st)
	}

	oldest := newWorld(t, nil)
	_, client := oldest.busy()
	oldest.ready()
	g = oldest.upgradeTo()
	g.ch.say(handoff.Message{Verb: handoff.Finish})
	stepTo[successorFinish](oldest)
	if !oldest.logged("drain_finish_now") {
		t.Fatal("the oldest generation did not finish")
	}
	oldest.stepUntil("the end of the drain", func() bool { return oldest.m.line.drained })
	if r := oldest.m.status().Upgrades[0]; !r.Drained || r.DrainKilled != "max_draining" || r.ConnsForced != 1 {
		t.Fatalf("the record of the cut drain: %+v", r)
	}
	oldest.passProbation(10 * time.Second)
	oldest.stepUntil("the process is done", func() bool { return oldest.m.st == exited })
	if err := oldest.waitDone(); !errors.Is(err, ErrDrainDeadline) {
		t.Fatalf("Wait: %v; want ErrDrainDeadline", err)
	}
	client.SetReadDeadline(time.Now().Add(waitBound))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the open connection: %v; want it force-closed", err)
	}
}

// TestLineageSuccessorPassedOnHolds: connections this process handed to its
// successor wait, held here, until the other end of the channel says it has them.
// A successor that handed over in turn and said farewell passed that channel down
// the line (its "upstream"): its exit does not end the channel, and the generation
// that reads it now may still say "conns-taken". The exit of such a successor
// (retired) gives nothing back: had this process taken its copies back (a drain's
// connection is served here again, and handed over anew), one socket would have
// two readers in two generations, requests split between them (the 405s of
// TestSignalStorm). The copies go once the channel answers; only its end gives
// them back.
func TestLineageSuccessorPassedOnHolds(t *testing.T) {
	w := newWorld(t, nil)
	tl := w.withConnCarrier()
	w.ready()
	g := w.drainedAndStandingBy()
	c := w.m.carriers[0].(*connCarrier)
	client, f := handedConn(t)
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c.forward(tl, []arrival{{origin: tl.in.origin, nc: nc}})
	m := g.ch.next(t)
	for m.Verb != handoff.Conns { // what the drain said before
		m = g.ch.next(t)
	}
	defer closeFiles(m.Files)
	// The successor hands over in turn ("done"), passes this channel on at its
	// farewell, and exits; the channel stays open: a newer generation reads it.
	g.ch.say(handoff.Message{Verb: handoff.Done})
	stepTo[successorRetired](w)
	g.proc.exit("exit status 0")
	w.clock.waitTimer(t, w.clock.Now().Add(lastWordsWait), 1)
	w.clock.Advance(lastWordsWait)
	w.stepUntil("the successor's exit is judged", func() bool { return w.logged("successor_retired") })
	w.stepUntil("the forward is sent", func() bool { return w.m.holds.Load() == 0 })
	if w.logged("conn_dropped") || w.logged("conns_kept") || !heldCount(c, 1) {
		t.Fatal("the exit of a successor whose channel lives on gave the connection back")
	}
	g.ch.say(handoff.Message{Verb: handoff.ConnsTaken, N: 1})
	stepTo[successorTook](w)
	if w.logged("conn_dropped") || !heldCount(c, 0) {
		t.Fatal("the connection is still held after the channel said it was taken")
	}
	sameConnFile(t, client, m.Files[0])
	g.ch.hangUp()
	stepTo[successorGone](w)
	if w.logged("conn_dropped") {
		t.Fatal("a connection was dropped as the channel ended")
	}
}

// heldCount reports whether c holds n batches for a successor to take.
func heldCount(c *connCarrier, n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held) == n
}
