package tests

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// longOnes are the long-lived connections opened on one generation.
type longOnes struct {
	pid    int
	stream <-chan inflight // /stream: four lines a second apart
	events <-chan inflight // /events: server-sent events until the drain says bye
	ws     *wsClient
	wsDone <-chan time.Time
}

func openLongOnes(t *testing.T, d *demo) longOnes {
	t.Helper()
	l := longOnes{pid: d.current()}
	l.stream = streamOn(t, d.addr, "/stream?n=4&interval=1000")
	l.events = streamOn(t, d.addr, "/events?n=600&interval=100")
	l.ws, l.wsDone = dialWS(t, d.addr, "/ws")
	if l.ws.pid != l.pid {
		t.Fatalf("websocket answered by %d, want %d", l.ws.pid, l.pid)
	}
	return l
}

// TestBackToBackUpgrades: five upgrades a second apart while each generation has a
// long stream, server-sent events and a websocket open, under load. Several old
// generations drain at once, each on its own; every stream completes on the
// generation it started on, every websocket and event stream is closed politely
// (bye) when its generation drains, every old generation exits once its connections
// are done (before its deadline), and no request of the load fails.
func TestBackToBackUpgrades(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 20 * time.Second, args: []string{"-max-draining", "8"}})
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	var longs []longOnes
	maxAlive := 0
	for i := 0; i < 5; i++ {
		longs = append(longs, openLongOnes(t, d))
		d.upgrade()
		alive := 0
		for _, p := range d.pids[:len(d.pids)-1] {
			if proc.Alive(p) {
				alive++
			}
		}
		maxAlive = max(maxAlive, alive)
		pace(time.Second)
	}
	for _, l := range longs {
		s := <-l.stream
		if s.err != nil || len(s.lines) != 4 {
			t.Errorf("stream on %d: %d lines, %v; want all 4", l.pid, len(s.lines), s.err)
		}
		for _, line := range s.lines {
			if !strings.Contains(line, fmt.Sprintf("pid=%d ", l.pid)) {
				t.Errorf("stream on %d: line %q from another process", l.pid, line)
			}
		}
		e := <-l.events
		if e.err != nil || !slices.Contains(lastN(e.lines, 5), "event: bye") {
			t.Errorf("events on %d: %v, ending %q; want a polite bye", l.pid, e.err, lastN(e.lines, 5))
		}
		select {
		case <-l.wsDone:
		case <-time.After(10 * time.Second):
			t.Errorf("websocket on %d still open", l.pid)
		}
		if got := l.ws.received(); len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "bye ") {
			t.Errorf("websocket on %d received %q; want a bye last", l.pid, got)
		}
		// Its generation exits once its connections are done, before its deadline.
		if err := waitGone(l.pid, 15*time.Second); err != nil {
			t.Error(err)
		}
	}
	t.Logf("at most %d old generations drained at once", maxAlive)
	if maxAlive < 3 {
		t.Errorf("at most %d old generations drained at once; the test needs several", maxAlive)
	}
	checkLoad(t, r.Stop())
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestMaxDraining: with -max-draining 2, an upgrade that would make three
// generations drain at once makes the oldest finish now: its long stream is cut and
// it exits long before its drain deadline, while the two younger ones drain on.
// Nothing else is refused: the upgrade goes through, and the load (whose short
// requests have left the old generations by then) sees no failure.
func TestMaxDraining(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 40 * time.Second, args: []string{"-max-draining", "2"}})
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	var streams []<-chan inflight
	var gens []int
	for i := 0; i < 3; i++ {
		gens = append(gens, d.current())
		streams = append(streams, streamOn(t, d.addr, "/stream?n=30&interval=1000"))
		d.upgrade()
		// The load's short requests on the old generation end meanwhile: only
		// the long stream keeps it draining.
		pace(time.Second)
	}
	// The third upgrade: generations 1, 2 and 3 would drain; 1 finishes now.
	oldest := streams[0]
	select {
	case s := <-oldest:
		if len(s.lines) >= 30 {
			t.Errorf("the oldest generation's stream completed (%d lines); want it cut", len(s.lines))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the oldest generation's stream was not cut")
	}
	if err := waitGone(gens[0], 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := d.events().Count("drain_finish_now", logs.KV("pid", gens[0])); n != 1 {
		t.Errorf("the oldest generation logged drain_finish_now %d times, want once", n)
	}
	if n := d.events().Count("too_many_draining", logs.KV("pid", gens[2])); n != 1 {
		t.Errorf("the third generation logged too_many_draining %d times, want once", n)
	}
	for _, p := range gens[1:] {
		if !proc.Alive(p) {
			t.Errorf("generation %d stopped draining; only the oldest should have", p)
		}
	}
	checkLoad(t, r.Stop())
	// The rest is not this test's: stop everything.
	for _, p := range append(gens[1:], d.current()) {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// TestDrainingChainContracts: generations tell each other how many older ones still
// drain, and a generation that is done passes its channel to an older one on to its
// successor. Here generation 2 finishes before generation 1 (whose stream is longer):
// generation 3 then talks to generation 1 directly. With -max-draining 2, when
// generations 1, 3 and 4 would drain, generation 4's "finish" reaches generation 1
// through generation 3, and generation 1 finishes now.
func TestDrainingChainContracts(t *testing.T) {
	ctl := t.TempDir() + "/control.sock"
	d := startDemoSpec(t, demoSpec{control: ctl, drain: 40 * time.Second, args: []string{"-max-draining", "2"}})
	g1 := d.current()
	s1 := streamOn(t, d.addr, "/stream?n=40&interval=1000")
	d.upgrade()
	g2 := d.current()
	s2 := streamOn(t, d.addr, "/stream?n=2&interval=500")
	d.upgrade()
	g3 := d.current()
	// Generation 2 is done after its short stream; generation 3 then counts one older
	// generation draining (1), not two.
	if s := <-s2; s.err != nil || len(s.lines) != 2 {
		t.Fatalf("generation 2's stream: %d lines, %v", len(s.lines), s.err)
	}
	if err := waitGone(g2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitFor(func() bool {
		st, err := ctlStatus(t, ctl)
		return err == nil && st.PID == g3 && st.OlderDraining == 1
	}, 10*time.Second, "generation 3 to count one older generation draining"); err != nil {
		st, _ := ctlStatus(t, ctl)
		t.Fatalf("%v: %+v", err, st)
	}
	s3 := streamOn(t, d.addr, "/stream?n=40&interval=1000")
	d.upgrade() // 1 and 3 drain: two, the limit
	g4 := d.current()
	if !proc.Alive(g1) || !proc.Alive(g3) {
		t.Fatal("a generation stopped draining at the limit")
	}
	s4 := streamOn(t, d.addr, "/stream?n=40&interval=1000")
	d.upgrade() // 1, 3 and 4 would drain: 1 finishes now
	select {
	case s := <-s1:
		if len(s.lines) >= 40 {
			t.Errorf("generation 1's stream completed; want it cut")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("generation 1's stream was not cut")
	}
	if err := waitGone(g1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{g3, g4} {
		if !proc.Alive(p) {
			t.Errorf("generation %d stopped draining; only the oldest should have", p)
		}
	}
	// The rest is not this test's.
	for _, p := range []int{g3, g4, d.current()} {
		syscall.Kill(p, syscall.SIGKILL)
	}
	_, _ = s3, s4
}
