package tests

// Issue 20 under `handover run`: a library child hands its idle connections and the
// application's state to the next child (graceful/masterlink.go), as an old
// generation does to the one it started itself.

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/pool"
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
	log := checkPoolRun(t, m, p, children)
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
	checkStateHandOffs(t, log, 10)
	if code := m.stop(20 * time.Second); code != 0 {
		t.Errorf("the master exited %d", code)
	}
}

// TestRunLinkOlderBuild: a library build without handoff.NextMark (built before the
// master opened each new child's channel to the serving child) is still started
// directly, and gets the serving child's link (handover-link) instead of a channel
// (handover-next): it sends a channel of its own on it. Across three `handover
// reload`s every connection of the pool is answered by each child in turn (each old
// child handed every one over), no request fails, and each child loaded both
// hand-offs of its predecessor's state, as with the master's channel.
func TestRunLinkOlderBuild(t *testing.T) {
	data, err := os.ReadFile(proc.Binary(t, demoPkg))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, handoff.NextMark[:]); n != 1 {
		t.Fatalf("the demo holds the next mark %d times; want once", n)
	}
	older := filepath.Join(t.TempDir(), "handover-demo")
	if err := os.WriteFile(older, bytes.Replace(data, handoff.NextMark[:], make([]byte, len(handoff.NextMark)), 1), 0o755); err != nil {
		t.Fatal(err)
	}
	m := startMaster(t, masterSpec{prog: []string{older}})
	children := []int{m.status().Child}
	p := startPool(t, m.addr, poolConns)
	pace(200 * time.Millisecond)
	for i := 0; i < 3; i++ {
		cur := reloadChild(t, m, i)
		env := environ(t, cur)
		if env["LISTEN_FDNAMES"] != "http:handover-link" || env["HANDOVER_DIRECT"] == "" {
			t.Errorf("child %d: LISTEN_FDNAMES=%q HANDOVER_DIRECT=%q; want the link, and a direct start", cur, env["LISTEN_FDNAMES"], env["HANDOVER_DIRECT"])
		}
		children = append(children, cur)
		pace(250 * time.Millisecond)
	}
	log := checkPoolRun(t, m, p, children)
	checkStateHandOffs(t, log, 3)
	if code := m.stop(20 * time.Second); code != 0 {
		t.Errorf("the master exited %d", code)
	}
}

// checkPoolRun stops the pool p and checks it (each connection answered by each of
// children in turn, no failure), then, once the master settled, that each old child
// handed every connection over; it returns the master's log.
func checkPoolRun(t *testing.T, m *master, p *pool.Pool, children []int) logs.Log {
	t.Helper()
	checkPool(t, p.Stop(), children)
	m.waitSettled(15 * time.Second)
	log := logs.Parse(m.log())
	checkHandedOver(t, log, children[:len(children)-1], poolConns)
	return log
}

// checkStateHandOffs fails t unless n children loaded both hand-offs of their
// predecessor's state (at the upgrade, and once it drained).
func checkStateHandOffs(t *testing.T, log logs.Log, n int) {
	t.Helper()
	for _, final := range []string{"final=false", "final=true"} {
		if got := log.Count("state_loaded", "from=parent", final); got != n {
			t.Errorf("%d children loaded their predecessor's state (%s), want %d", got, final, n)
		}
	}
}
