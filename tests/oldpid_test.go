package tests

// After the handover no new connection reaches the old generation (issue 16's
// mutation audit: an old generation that kept accepting was caught only through
// drain-deadline counts and load EOFs). Asserted directly: every answer carries
// X-Pid, and once the old generation has stopped accepting, not one of many new
// connections is answered by it, while it is still alive and draining.

import (
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/h2"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// TestNoNewConnectionToOldGeneration: through 5 upgrades, an h2c connection to the
// current generation holds a stream in flight (2 s) so that the generation outlives
// the handover. The first GOAWAY it gets proves that the old generation has stopped
// accepting (a Server sends it after its listeners stop). From then on, 50 new
// connections, one request each, are all answered by the new PID, while the old
// one is still alive; and the stream in flight completes from the old PID.
func TestNoNewConnectionToOldGeneration(t *testing.T) {
	d := startDemoSpec(t, demoSpec{drain: h2Drain, args: []string{"-protocols", "h1,h2c"}})
	const probes = 50
	for range 5 {
		c, err := h2.Dial(d.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		old := d.current()
		if r := h2Get(t, c, "/"); r.PID() != old {
			t.Fatalf("GET / on h2c: from %d, want %d", r.PID(), old)
		}
		held, err := c.Get("/stream?n=3&interval=1000")
		if err != nil {
			t.Fatal(err)
		}
		if err := held.WaitData(1, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		_, cur := d.upgrade()
		if _, err := c.WaitGoAway(h2Drain); err != nil {
			t.Fatalf("no GOAWAY from the old generation %d: %v", old, err)
		}
		byPID := map[int]int{}
		for range probes {
			r, err := rawhttp.Get(d.addr, "/", 5*time.Second)
			if err != nil {
				t.Fatalf("a new connection after the handover: %v", err)
			}
			byPID[r.PID()]++
		}
		if !proc.Alive(old) {
			t.Fatalf("the old generation %d exited before the new connections were made: the check proves nothing", old)
		}
		if byPID[cur] != probes {
			t.Errorf("%d new connections after the handover, answered by PID: %v; want all by the new generation %d (old: %d)", probes, byPID, cur, old)
		}
		if r, err := held.Wait(10 * time.Second); err != nil || r.Status != 200 || h2Lines(r.Body, 3, old) != nil {
			t.Errorf("the stream held across the handover: %v", err)
		}
		c.Close()
		if err := waitGone(old, h2Drain); err != nil {
			t.Error(err)
		}
	}
	d.stop()
}
