package tests

// Application state across upgrades (issue 10): the demo counts the requests its
// line of generations served (served=N in every answer) and hands the count to the
// next generation (Config.SaveState, LoadState, StateVersion).

import (
	"strconv"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// servedNow makes one request and returns the demo's count and who answered.
func servedNow(t testing.TB, addr string) (served, pid int) {
	t.Helper()
	resp, err := rawhttp.Get(addr, "/", 5*time.Second)
	if err != nil || resp.Status != 200 {
		t.Fatalf("request to %s: %v (%+v)", addr, err, resp)
	}
	return servedOf(resp.Body), resp.PID()
}

// TestStateCounterAcrossUpgrades: ten upgrades under the standard load (no failed
// request); the count each new generation answers with continues its parent's
// (the first probe the new generation answers sees a larger count than the
// probe before); at the end it covers every request answered but those an old
// generation answered after its last hand-off (at most one per client and
// upgrade); every new generation loaded both hand-offs.
func TestStateCounterAcrossUpgrades(t *testing.T) {
	d := startDemoSpec(t, demoSpec{addr: runPort(t)})
	r := startLoad(t, d.addr, 0.5)
	last, _ := servedNow(t, d.addr)
	probes := 1
	for i := 0; i < 10; i++ {
		_, cur := d.upgrade()
		// The old generation writes the PID file a moment before it stops
		// accepting: a probe may still reach it.
		var served, pid int
		if err := proc.WaitFor(func() bool {
			served, pid = servedNow(t, d.addr)
			probes++
			return pid == cur
		}, 5*time.Second, "an answer from the new generation"); err != nil {
			t.Fatal(err)
		}
		if served <= last {
			t.Errorf("upgrade %d: served=%d from %d; want more than %d", i+1, served, pid, last)
		}
		last = served
		pace(700 * time.Millisecond)
	}
	res := r.Stop()
	checkLoad(t, res)
	final, _ := servedNow(t, d.addr)
	probes++
	answered := res.Total() - res.FailureCount() + probes
	if lost := answered - final; lost < 0 || lost > 10*16 {
		t.Errorf("served=%d at the end, %d requests answered: %d not counted, want 0 to %d (one per client and upgrade)", final, answered, lost, 10*16)
	}
	t.Logf("served=%d, %d requests answered", final, answered)
	for _, final := range []string{"final=false", "final=true"} {
		if n := d.events().Count("state_loaded", "from=parent", final); n != 10 {
			t.Errorf("%d generations loaded their parent's state (%s), want 10", n, final)
		}
	}
	d.stop()
}

// TestStateRefusedByNewBuild: a build whose state version differs refuses the old
// generation's state (state_refused, for both hand-offs), starts its count at zero
// and takes over all the same.
func TestStateRefusedByNewBuild(t *testing.T) {
	d := startDemoSpec(t, demoSpec{addr: runPort(t)})
	for i := 0; i < 5; i++ {
		servedNow(t, d.addr)
	}
	copyFile(t, buildDemoLinked(t, "-X main.stateVersion=3"), d.bin, 0o755)
	old, cur := d.upgrade()
	if err := waitGone(old, d.drain); err != nil {
		t.Error(err)
	}
	// The final hand-off arrives after the handover: wait for its refusal.
	d.waitEvent(1, 10*time.Second, "state_refused", logs.KV("pid", cur))
	if served, pid := servedNow(t, d.addr); served != 1 || pid != cur {
		t.Errorf("served=%d from %d; want 1 (a cold start) from %d", served, pid, cur)
	}
	for _, final := range []string{"final=false", "final=true"} {
		if n := d.events().Count("state_refused", logs.KV("pid", cur), "version=2", final); n != 1 {
			t.Errorf("the new build refused version 2 (%s) %d times, want once", final, n)
		}
	}
	if n := d.events().Count("state_loaded"); n != 0 {
		t.Errorf("%d state_loaded lines, want none", n)
	}
	d.stop()
}

// TestStateOversize: a state over graceful.MaxStateSize (64 MiB) is refused by the
// old generation (state_failed reason=too_large, for both hand-offs), and the
// upgrade goes ahead without it: the new generation starts its count at zero.
func TestStateOversize(t *testing.T) {
	d := startDemoSpec(t, demoSpec{addr: runPort(t), args: []string{"-state-pad", strconv.Itoa(64 << 20)}})
	for i := 0; i < 3; i++ {
		servedNow(t, d.addr)
	}
	old, cur := d.upgrade()
	if err := waitGone(old, d.drain); err != nil {
		t.Error(err)
	}
	if served, pid := servedNow(t, d.addr); served != 1 || pid != cur {
		t.Errorf("served=%d from %d; want 1 (no state) from %d", served, pid, cur)
	}
	for _, final := range []string{"final=false", "final=true"} {
		if n := d.events().Count("state_failed", logs.KV("pid", old), "reason=too_large", final); n != 1 {
			t.Errorf("the old generation logged state_failed reason=too_large (%s) %d times, want once", final, n)
		}
	}
	if n := d.events().Count("state_loaded"); n != 0 {
		t.Errorf("%d state_loaded lines, want none", n)
	}
	d.stop()
}
