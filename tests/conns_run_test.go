package tests

// Issue 20 under `handover run`: a library child hands its idle connections and the
// application's state to the next child (graceful/masterlink.go), as an old
// generation does to the one it started itself.

import (
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// reloadChild runs `handover reload`, fails the test unless it succeeded, and
// returns the serving child's PID.
func reloadChild(t *testing.T, m *master, i int) int {
	t.Helper()
	if out, code := m.reload(); code != 0 {
		t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
	}
	return m.status().Child
}

// TestConnsRunReload: the pool of keep-alive connections across ten `handover
// reload`s of the demo under `handover run`: no request fails, the server closes no
// connection, no connection is redialled, and each connection is answered by every
// child in turn; each old child handed every connection over.
func TestConnsRunReload(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	children := []int{m.status().Child}
	p := startPool(t, m.addr, poolConns)
	pace(200 * time.Millisecond)
	for i := 0; i < poolUpgrades; i++ {
		children = append(children, reloadChild(t, m, i))
		pace(250 * time.Millisecond)
	}
	res := p.Stop()
	checkPool(t, res, children)
	m.waitSettled(15 * time.Second)
	log := logs.Parse(m.log())
	checkHandedOver(t, log, children[:len(children)-1], poolConns)
	for _, pid := range children[:len(children)-1] {
		if n := log.Count("link_ready", logs.KV("pid", pid)); n != 1 {
			t.Errorf("child %d noted %d new children on its link; want 1", pid, n)
		}
	}
	if code := m.stop(20 * time.Second); code != 0 {
		t.Errorf("the master exited %d", code)
	}
}

// TestStateCounterRun: the demo's served=N continues across ten `handover reload`s
// under load: the first probe each new child answers sees a larger count than the
// probe before; at the end the count covers every request answered but those an
// old child answered after its last hand-off (at most one per client and reload);
// every new child loaded both hand-offs of its predecessor.
func TestStateCounterRun(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	r := startLoad(t, m.addr, 0.5)
	last, _ := servedNow(t, m.addr)
	probes := 1
	for i := 0; i < 10; i++ {
		cur := reloadChild(t, m, i)
		var served, pid int
		if err := proc.WaitFor(func() bool {
			served, pid = servedNow(t, m.addr)
			probes++
			return pid == cur
		}, 5*time.Second, "an answer from the new child"); err != nil {
			t.Fatal(err)
		}
		if served <= last {
			t.Errorf("reload %d: served=%d from %d; want more than %d", i+1, served, pid, last)
		}
		last = served
		pace(700 * time.Millisecond)
	}
	res := r.Stop()
	checkLoad(t, res)
	final, _ := servedNow(t, m.addr)
	probes++
	answered := res.Total() - res.FailureCount() + probes
	if lost := answered - final; lost < 0 || lost > 10*16 {
		t.Errorf("served=%d at the end, %d requests answered: %d not counted, want 0 to %d (one per client and reload)", final, answered, lost, 10*16)
	}
	t.Logf("served=%d, %d requests answered", final, answered)
	m.waitSettled(15 * time.Second)
	log := logs.Parse(m.log())
	for _, final := range []string{"final=false", "final=true"} {
		if n := log.Count("state_loaded", "from=parent", final); n != 10 {
			t.Errorf("%d children loaded their predecessor's state (%s), want 10", n, final)
		}
	}
	if code := m.stop(20 * time.Second); code != 0 {
		t.Errorf("the master exited %d", code)
	}
}
