package tests

// Issue 17: promises of the README that did not hold in users' programs. Each test
// here failed on the code before it.

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// TestProbationBuildDiesAfterDrain: "a build that takes over and dies moments
// later does not leave nothing serving", when the old generation has nothing long
// to drain: a keep-alive load makes it drain in milliseconds, and the new build
// (testdata/brokendemo serve-die) serves for a second, then dies. The old
// generation, drained but standing by for the new one's probation (the library's
// default, 10 s), serves again: a client that sends a request every 50 ms, each on a
// new connection, never retrying, sees no failure over 5 s, answered by the bad
// build then by the old PID again. The record says the upgrade died, after a
// completed drain. The keep-alive load loses at most the one request per client
// that the dying build closed under it. A later `handover reload` works. (Before:
// the old generation exited once drained, and 112 of 120 requests failed.)
func TestProbationBuildDiesAfterDrain(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl, args: []string{"-probation", "0s"}}) // 0: the library's default
	old := d.current()
	r, err := load.Start(load.Config{Addr: d.addr, Concurrency: 8, KeepAliveFraction: 1, SlowEvery: -1, Duration: 30 * time.Second, MaxRequests: 500_000})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if err := proc.WaitFor(func() bool { ok, _, _ := r.Progress(); return ok > 100 }, 10*time.Second, "the load to get answers"); err != nil {
		t.Fatal(err)
	}
	copyFile(t, buildVariant(t, "testdata/brokendemo", "serve-die"), d.bin, 0o755)

	probes := probeEvery(d.addr, 50*time.Millisecond, 5*time.Second)
	d.signal(syscall.SIGUSR2)
	bad := d.waitNewPID(10*time.Second, old)
	d.waitEvent(0, 10*time.Second, "resumed", logs.KV("pid", old))
	as := <-probes
	res := r.Stop()

	failed, seen := tally(as)
	t.Logf("%d probes: %v answered by pid; bad build %d, old %d", len(as), seen, bad, old)
	if len(failed) > 0 {
		t.Errorf("%d of %d probes failed:\n%s", len(failed), len(as), strings.Join(failed, "\n"))
	}
	if seen[bad] == 0 || seen[old] == 0 || len(as) < 50 {
		t.Errorf("%d probes answered by %v: want the bad build %d (before it died), then the old generation %d", len(as), seen, bad, old)
	}
	t.Log(res.Summary())
	perWorker := map[uint16]int{}
	for _, f := range res.FailureSamples(res.FailureCount()) {
		perWorker[f.Worker]++
		if (f.Kind != rawhttp.Reset && f.Kind != rawhttp.EOF) || !f.Reused || perWorker[f.Worker] > 1 {
			t.Errorf("a keep-alive request failed other than once per client on a connection the dying build closed: %s", f)
		}
	}
	st, err := ctlStatus(t, ctl)
	if err != nil || st.PID != old || st.State != "serving" {
		t.Fatalf("status after the death: %+v, %v; want %d serving", st, err, old)
	}
	rec := st.Upgrades[len(st.Upgrades)-1]
	if rec.To != bad || rec.Outcome != "died" || !rec.Drained || rec.ProbationUntil.Before(rec.End.Add(9*time.Second)) {
		t.Errorf("the upgrade's record %+v; want died after a completed drain, probation until 10 s after the handover", rec)
	}
	if err := waitGone(bad, 5*time.Second); err != nil {
		t.Error(err)
	}
	copyFile(t, d.good, d.bin, 0o755)
	out, err := exec.Command(proc.Binary(t, handoverPkg), "reload", "-control", ctl).CombinedOutput()
	if err != nil {
		t.Fatalf("handover reload after the resume: %v\n%s", err, out)
	}
	cur := d.waitNewPID(10*time.Second, old, bad)
	d.pids = append(d.pids, bad, cur)
	if _, pid := servedNow(t, d.addr); pid != cur {
		t.Errorf("answered by %d after the reload; want %d", pid, cur)
	}
	d.stop()
}

// TestStateLastWritesKept: the last state blob is the last. Eight clients PUT keys
// that are written once each (PUT /kv/KEY), on keep-alive connections, through ten
// upgrades: an old generation answers the PUTs already on its connections after it
// stopped accepting. Every PUT answered 201 is in the current generation's state at
// the end: the old generation's SaveState(true) runs after its drain (its last
// request answered), and the new one merges it. (Before: 60 to 81 acknowledged
// writes lost over 10 upgrades.)
func TestStateLastWritesKept(t *testing.T) {
	d := startDemoSpec(t, demoSpec{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var acked []string
	var failures []string
	writer := func(w int) {
		defer wg.Done()
		var c *rawhttp.Conn
		for n := 0; n < 20000; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if c == nil {
				var err error
				if c, err = rawhttp.Dial(d.addr, 5*time.Second); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("writer %d: %v", w, err))
					mu.Unlock()
					return
				}
			}
			key := fmt.Sprintf("w%d-%d", w, n)
			resp, err := c.Send(http.MethodPut, "/kv/"+key, nil, []byte(key), 5*time.Second)
			mu.Lock()
			if err == nil && resp.Status == http.StatusCreated {
				acked = append(acked, key)
			} else {
				failures = append(failures, fmt.Sprintf("PUT %s: %v (%+v)", key, err, resp))
			}
			mu.Unlock()
			if err != nil || !c.Reusable() {
				c.Close()
				c = nil
			}
			pace(time.Millisecond) // spread the writes over the ten upgrades
		}
	}
	for w := range 8 {
		wg.Add(1)
		go writer(w)
	}
	for range 10 {
		pace(400 * time.Millisecond)
		d.upgrade()
	}
	pace(400 * time.Millisecond)
	close(stop)
	wg.Wait()
	// The last old generation's final state comes once its drain has ended.
	last := d.pids[len(d.pids)-2]
	if err := waitGone(last, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cur := d.current()
	d.waitEvent(0, 10*time.Second, "state_loaded", logs.KV("pid", cur), "final=true")
	c, err := rawhttp.Dial(d.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Do(http.MethodGet, "/kv", rawhttp.CloseHeader(), 10*time.Second)
	if err != nil || resp.Status != 200 || resp.PID() != cur {
		t.Fatalf("GET /kv: %v, %+v; want 200 from %d", err, resp, cur)
	}
	have := strings.Fields(string(resp.Body))
	var lost []string
	for _, k := range acked {
		if _, found := slices.BinarySearch(have, k); !found {
			lost = append(lost, k)
		}
	}
	t.Logf("%d PUTs acknowledged through 10 upgrades, %d keys in the state", len(acked), len(have))
	if len(acked) < 1000 {
		t.Errorf("only %d PUTs acknowledged; the writers did not run", len(acked))
	}
	if len(lost) > 0 {
		t.Errorf("%d acknowledged writes are not in the state: %q", len(lost), lost[:min(len(lost), 20)])
	}
	if len(failures) > 0 {
		t.Errorf("%d PUTs failed: %q", len(failures), failures[:min(len(failures), 20)])
	}
	d.stop()
}

// TestBackToBackRecords: five upgrades half a second apart, each while the
// generation it replaces has a long request in flight, so that several drain at
// once, with -max-draining 3: the fourth and fifth upgrades make the two oldest
// finish at once (their long requests are cut). Once every old generation has
// exited, `handover status -json` of the current one has every record complete:
// drained, with the drain's time and counts, the two cut ones with drain_killed
// max_draining and one connection force-closed each, the others one connection
// closed or handed over each. (Before: only the last record
// was completed; the others stayed drained:false for good.)
func TestBackToBackRecords(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl, args: []string{"-max-draining", "3"}})
	var long []<-chan inflight
	for range 5 {
		long = append(long, slowOn(t, d.addr, d.current(), "/slow?ms=5000", 20*time.Second))
		d.upgrade()
		pace(500 * time.Millisecond)
	}
	for i, l := range long {
		s := <-l
		if cut := i < 2; cut != (s.err != nil) {
			t.Errorf("generation %d's long request: %v (cut by MaxDraining: %v)", d.pids[i], s.err, cut)
		}
	}
	for _, pid := range d.pids[:5] {
		if err := waitGone(pid, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var st graceful.Status
	if err := proc.WaitFor(func() bool {
		var err error
		st, err = ctlStatus(t, ctl)
		return err == nil && len(st.Upgrades) == 5 && st.Upgrades[4].Drained
	}, 10*time.Second, "the last drain to be recorded"); err != nil {
		t.Fatalf("%v: %+v", err, st.Upgrades)
	}
	for i, r := range st.Upgrades {
		where := fmt.Sprintf("upgrade %d (%d→%d)", i+1, r.From, r.To)
		switch cut := i < 2; {
		case r.From != d.pids[i] || r.To != d.pids[i+1] || r.Outcome != "ok":
			t.Errorf("%s: record %+v", where, r)
		case !r.Drained || r.DrainSeconds <= 0:
			t.Errorf("%s: not completed: %+v", where, r)
		case cut && (r.DrainKilled != "max_draining" || r.ConnsForced != 1):
			t.Errorf("%s: cut by MaxDraining, recorded %q with %d force-closed", where, r.DrainKilled, r.ConnsForced)
		case !cut && (r.DrainKilled != "" || r.ConnsForced != 0 || r.ConnsClosed+r.ConnsHandedOver < 1 || r.RequestsAfter < 1):
			t.Errorf("%s: drained by itself, recorded %+v", where, r)
		}
	}
	d.stop()
}
