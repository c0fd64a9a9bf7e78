//go:build linux

package graceful

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"
	"time"

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
	if w.m.line.farewell || up.isClosed() {
		t.Fatal("the channel to the older generation was passed on during the probation")
	}
	w.passProbation(10 * time.Second)
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

// TestLineageFarewellConns: connections the older generation hands over, read from
// the upstream channel as this process passes it on, go on to the successor (which
// reads that channel from then on); the process finishes only once its reader of
// that channel has ended, so that nothing it read is left unhandled.
func TestLineageFarewellConns(t *testing.T) {
	w := newWorld(t, nil)
	up := newFakeChannel()
	w.readyWith(up)
	up.say(handoff.Message{Verb: handoff.Above, N: 1})
	stepTo[upstreamMessage](w)
	g := w.upgradeTo()
	up.expect(t, handoff.Done)
	g.ch.expect(t, handoff.Above)
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained })
	g.ch.expect(t, handoff.Drained)
	g.ch.expect(t, handoff.Above)
	w.passProbation(10 * time.Second)
	g.ch.expect(t, handoff.Upstream)
	if w.m.st == exited {
		t.Fatal("finished before the reader of the channel it passed on ended")
	}
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	wr.Close()
	// What the reader had read as the channel closed.
	w.m.handle(upstreamMessage{ch: up, m: handoff.Message{Verb: handoff.Conns, Text: `{"name":"http"}`, Files: []*os.File{r}}})
	if m := g.ch.expect(t, handoff.Conns); m.Text != `{"name":"http"}` || len(m.Files) != 1 {
		t.Fatalf("the successor got %q with %d files; want the connections", m.Text, len(m.Files))
	}
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
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
