package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// startLoad starts the standard load (16 workers, half keep-alive, one request in
// ten to /slow?ms=300) and waits until it has seen answers.
func startLoad(t testing.TB, addr string, keepAlive float64) *load.Runner {
	t.Helper()
	r, err := load.Start(load.Config{
		Addr:              addr,
		KeepAliveFraction: keepAlive,
		Duration:          90 * time.Second,
		MaxRequests:       1_000_000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitFor(func() bool { ok, _, _ := r.Progress(); return ok > 100 }, 10*time.Second, "the load to get answers"); err != nil {
		r.Stop()
		t.Fatal(err)
	}
	return r
}

// checkLoad fails the test on any failed request, and unless the load ran, with
// answers, until the test stopped it: a load that ran out of time or of requests
// earlier left the end of the test without traffic, and its "no failure" would
// cover less than the test claims.
func checkLoad(t testing.TB, res *load.Result) {
	t.Helper()
	t.Log(res.Summary())
	checkLoadRan(t, res)
	if n := res.FailureCount(); n > 0 {
		var b strings.Builder
		for _, f := range res.FailureSamples(20) {
			fmt.Fprintf(&b, "\n  %s", f)
		}
		t.Errorf("%d of %d requests failed: %v%s", n, res.Total(), res.Failures(), b.String())
	}
}

// checkLoadRan fails the test unless requests were answered and the load was still
// running when the test stopped it.
func checkLoadRan(t testing.TB, res *load.Result) {
	t.Helper()
	if ok := res.Total() - res.FailureCount(); ok == 0 {
		t.Errorf("the load got no answer at all (%d requests sent)", res.Total())
	}
	if res.Ending != load.Stopped {
		last := time.Duration(0)
		if n := len(res.Records); n > 0 {
			last = res.Records[n-1].Start
		}
		t.Errorf("the load %s %v into the run (last request at %v), before the test stopped it: the end of the test ran without traffic",
			res.Ending, res.Elapsed.Round(time.Millisecond), last.Round(time.Millisecond))
	}
}

// waitAnswers waits until pid has answered n more requests of the load than before
// (a value of r.Answered(pid)).
func waitAnswers(t testing.TB, r *load.Runner, pid int, before, n int64) {
	t.Helper()
	if err := proc.WaitFor(func() bool { return r.Answered(pid) >= before+n }, 20*time.Second, fmt.Sprintf("pid %d to answer %d requests of the load", pid, n)); err != nil {
		t.Fatalf("%v (it answered %d)", err, r.Answered(pid)-before)
	}
}

// window is a stretch of a run in which pid was expected to serve.
type window struct {
	name     string
	pid      int
	from, to time.Time
	before   int64 // r.Answered(pid) at from
}

// openWindow starts a window for pid now.
func openWindow(r *load.Runner, name string, pid int) *window {
	w := &window{name: name, pid: pid, from: time.Now()}
	w.before = r.Answered(pid) // read after from: see close
	return w
}

// close waits until the window's pid has answered more requests than the load's
// concurrency since the window opened, so that at least one of them was sent inside
// it, then closes the window. (Of the requests answered after before was read, at
// most one per worker was sent earlier.)
func (w *window) close(t testing.TB, r *load.Runner) {
	t.Helper()
	waitAnswers(t, r, w.pid, w.before, int64(r.Config().Concurrency)+1)
	w.to = time.Now()
}

// checkWindows fails the test unless, in each window, a request sent within it was
// answered (200) by the window's pid: every generation, or every stretch around a
// restart or a failed upgrade, saw traffic.
func checkWindows(t testing.TB, res *load.Result, ws []*window) {
	t.Helper()
	for _, w := range ws {
		from, to := w.from.Sub(res.Started), w.to.Sub(res.Started)
		if w.to.IsZero() {
			to = res.Elapsed
		}
		n := 0
		for _, rec := range res.Records {
			if rec.Kind == rawhttp.OK && int(rec.PID) == w.pid && rec.Start >= from && rec.Start < to {
				n++
			}
		}
		if n == 0 {
			t.Errorf("%s: no request sent between %v and %v was answered by pid %d", w.name, from.Round(time.Millisecond), to.Round(time.Millisecond), w.pid)
		}
	}
}

// checkAnswered fails the test unless each of pids answered requests of the load.
func checkAnswered(t testing.TB, res *load.Result, what string, pids ...int) {
	t.Helper()
	for i, pid := range pids {
		if !slices.ContainsFunc(res.PIDs(), func(s load.PIDSeen) bool { return s.PID == pid && s.Count > 0 }) {
			t.Errorf("%s %d (pid %d) never answered the load", what, i+1, pid)
		}
	}
}

// upgradesUnderLoad runs ten SIGUSR2 upgrades under load, each once the previous old
// generation has exited, and checks that nothing failed, every generation answered,
// every old one drained by itself before the drain deadline the test set, and
// nothing leaked.
func upgradesUnderLoad(t *testing.T, keepAlive float64) {
	d := startDemo(t, demoOpts{drain: 10 * time.Second})
	fds := proc.FDCount(d.current())
	fdList := fdTargets(d.current())
	r := startLoad(t, d.addr, keepAlive)
	var windows []*window
	for i := 0; i < 10; i++ {
		old, cur := d.upgrade()
		w := openWindow(r, fmt.Sprintf("generation %d", i+2), cur)
		// The load runs on the new generation while the old one drains. The drain
		// deadline (d.drain, from the handover) is the test's own bound: the old
		// generation must be gone before it.
		if err := waitGone(old, d.drain); err != nil {
			t.Error(err)
		}
		w.close(t, r)
		windows = append(windows, w)
	}
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, windows)
	checkAnswered(t, res, "generation", d.pids...)
	if seen := res.PIDs(); len(seen) != 11 {
		t.Errorf("answers came from %d distinct PIDs, want 11 (one per generation): %v", len(seen), seen)
	}
	// The serving process holds as many descriptors as the first generation did once
	// the load's connections are gone.
	cur := d.current()
	if err := proc.WaitFor(func() bool { return proc.FDCount(cur) == fds }, 10*time.Second, "fd count to settle"); err != nil {
		t.Errorf("generation 11 has %d open descriptors %v, generation 1 had %d %v: %v", proc.FDCount(cur), fdTargets(cur), fds, fdList, err)
	}
	if kids := proc.Children(cur); len(kids) > 0 {
		t.Errorf("the serving process has children left: %v", kids)
	}
	if err := proc.LeakCheck(cur); err != nil {
		t.Error(err)
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
	ev := d.events()
	if to := logs.Ints(ev.Where("handed_over"), "to"); !slices.Equal(to, d.pids[1:]) {
		t.Errorf("handovers logged to %v, want one to each new generation %v", to, d.pids[1:])
	}
	// Each old generation drained by itself: nothing was force-closed.
	if n := ev.Count("drain_deadline"); n > 0 {
		t.Errorf("%d drains reached their deadline", n)
	}
}

// TestUpgradesUnderLoad: the standard mix of clients sees no failure over ten upgrades.
func TestUpgradesUnderLoad(t *testing.T) { upgradesUnderLoad(t, 0.5) }

// TestUpgradesUnderLoadKeepAlive: every client holds a keep-alive connection and never
// retries; an EOF or reset on a reused connection is a failure.
func TestUpgradesUnderLoadKeepAlive(t *testing.T) { upgradesUnderLoad(t, 1) }

// TestInFlightRequestsFinish: a slow request and a stream started before an upgrade
// complete in full, answered by the old generation, which exits only after them.
func TestInFlightRequestsFinish(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 15 * time.Second})
	first := d.current()

	// A slow request on a connection proven to belong to the old process, and a
	// stream it has started answering.
	slowDone := slowOn(t, d.addr, first, "/slow?ms=2000", 20*time.Second)
	streamDone := streamOn(t, d.addr, "/stream?n=4&interval=1000")
	// The slow request is in the old process once its handler runs; the stream's first
	// line proves the same for the stream.
	old, cur := d.upgrade()
	if old != first {
		t.Fatalf("upgraded from %d, want %d", old, first)
	}
	upgraded := time.Now()
	r := <-slowDone
	if r.err != nil || r.resp.Status != 200 || r.resp.PID() != first {
		t.Errorf("slow request: err %v, response %+v; want 200 from pid %d", r.err, r.resp, first)
	}
	s := <-streamDone
	if s.err != nil || s.resp.Status != 200 || s.resp.PID() != first || len(s.lines) != 4 {
		t.Errorf("stream: err %v, %d lines %q; want 4 lines from pid %d", s.err, len(s.lines), s.lines, first)
	}
	for i, l := range s.lines {
		if !strings.HasPrefix(l, fmt.Sprintf("%d/4 pid=%d ", i+1, first)) {
			t.Errorf("stream line %d = %q, want it from pid %d", i+1, l, first)
		}
	}
	if !r.at.After(upgraded) || !s.at.After(upgraded) {
		t.Errorf("the in-flight requests ended before the upgrade completed; the test proves nothing")
	}
	// New requests go to the new generation meanwhile.
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != cur {
		t.Errorf("request after the upgrade: %v, pid %d, want %d", err, resp.PID(), cur)
	}
	if err := waitGone(first, d.drain); err != nil {
		t.Error(err)
	}
	d.stop()
}

// exitText is how Go's os.ProcessState (and so the Upgrader's err= attribute) writes
// a child's end: "exit status N", or "signal: NAME" with the signal's own name.
func exitText(code int, sig syscall.Signal) string {
	if sig != 0 {
		return "signal: " + sig.String()
	}
	return "exit status " + strconv.Itoa(code)
}

// failedUpgrade is what one failed upgrade must log: event=upgrade_failed with one of
// causes (and child= for a process that was started), and, in err=, the facts the
// test knows (an exit status, an errno's text, the binary's path), never wording.
type failedUpgrade struct {
	causes []string
	facts  []string   // each must appear in err=...
	alt    [][]string // ...or every one of one of these
}

// check fails the test unless l is such a line.
func (f failedUpgrade) check(t testing.TB, name string, l logs.Line) {
	t.Helper()
	cause := l.Get("cause")
	if !slices.Contains(f.causes, cause) {
		t.Errorf("%s: upgrade_failed cause=%s, want one of %q: %s", name, cause, f.causes, l)
	}
	if cause != "start" && l.Int("child") <= 0 {
		t.Errorf("%s: upgrade_failed names no child: %s", name, l)
	}
	err := l.Get("err")
	if err == "" {
		t.Errorf("%s: upgrade_failed gives no reason (err=): %s", name, l)
	}
	match := func(facts []string) bool {
		for _, f := range facts {
			if !strings.Contains(err, f) {
				return false
			}
		}
		return true
	}
	if !match(f.facts) && !slices.ContainsFunc(f.alt, match) {
		t.Errorf("%s: upgrade_failed err=%q does not name %q (or any of %q)", name, err, f.facts, f.alt)
	}
}

// TestFailedUpgrades: a new binary that exits at once, crashes after taking its
// sockets, never becomes ready, or is missing leaves the old process serving under
// load, with the cause logged; the next good upgrade succeeds. The load sees no
// failure throughout, and each serving generation answers it after its failed upgrade.
func TestFailedUpgrades(t *testing.T) {
	d := startDemo(t, demoOpts{args: []string{"-upgrade-timeout", "3s"}})
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	cases := []struct {
		name   string
		deploy func()
		want   failedUpgrade
	}{
		{"exits 1 at start", func() {
			writeFile(t, d.bin, []byte("#!/bin/sh\necho 'broken build' >&2\nexit 1\n"), 0o755)
		}, failedUpgrade{causes: []string{"exited"}, facts: []string{exitText(1, 0)}}},
		{"crashes after binding", func() {
			copyFile(t, buildVariant(t, "testdata/brokendemo", "crash"), d.bin, 0o755)
		}, failedUpgrade{causes: []string{"exited"}, facts: []string{exitText(2, 0)}}}, // a Go panic exits 2
		{"never ready", func() {
			copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), d.bin, 0o755)
		}, failedUpgrade{causes: []string{"timeout"}}},
		{"missing binary", func() {
			if err := os.Remove(d.bin); err != nil {
				t.Fatal(err)
			}
		}, failedUpgrade{causes: []string{"start"}, facts: []string{d.bin}}},
		{"not executable", func() {
			copyFile(t, d.good, d.bin, 0o644)
		}, failedUpgrade{causes: []string{"start"}, facts: []string{d.bin, syscall.EACCES.Error()}}},
		{"garbage bytes", func() {
			writeFile(t, d.bin, []byte("\x7fELF garbage, not a program\n"), 0o755)
		}, failedUpgrade{causes: []string{"start"}, facts: []string{d.bin, syscall.ENOEXEC.Error()}}},
	}
	var windows []*window
	for _, c := range cases {
		serving := d.current()
		c.deploy()
		before := d.events().Count("upgrade_failed")
		w := openWindow(r, c.name, serving)
		d.signal(syscall.SIGUSR2)
		got := d.waitEvent(before, 15*time.Second, "upgrade_failed")
		t.Logf("%s: %s", c.name, got)
		c.want.check(t, c.name, got)
		if got.Int("pid") != serving {
			t.Errorf("%s: the failure was logged by pid %d, want the serving %d", c.name, got.Int("pid"), serving)
		}
		if p := d.pidFromFile(); p != serving {
			t.Errorf("%s: PID file names %d, want the old %d", c.name, p, serving)
		}
		if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
			t.Errorf("%s: after the failed upgrade: %v, pid %d, want %d", c.name, err, respPID(resp), serving)
		}
		// The failed child was killed and reaped by the old process.
		if kids := proc.Children(serving); len(kids) > 0 {
			t.Errorf("%s: the serving process still has children %v", c.name, kids)
		}
		// The old generation serves the load after its failed upgrade.
		w.close(t, r)
		windows = append(windows, w)
		// A good build goes through.
		copyFile(t, d.good, d.bin, 0o755)
		d.upgradeAndDrain()
	}
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, windows)
	checkAnswered(t, res, "generation", d.pids...)
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestUpgradeFollowsSymlink: the binary is resolved at upgrade time, so retargeting
// the symlink the service was started through (current -> releases/N) upgrades to the
// new release, and an upgrade through a link to a missing release fails cleanly.
func TestUpgradeFollowsSymlink(t *testing.T) {
	d := startDemo(t, demoOpts{link: "current"})
	exe := func(pid int) string {
		p, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return p
	}
	release := func(n int) string { return filepath.Join(d.dir, "releases", strconv.Itoa(n), "handover-demo") }
	retarget := func(n int) {
		tmp := d.bin + ".new"
		os.Remove(tmp)
		if err := os.Symlink(filepath.Join("releases", strconv.Itoa(n), "handover-demo"), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, d.bin); err != nil { // atomic switch, as deploy tools do
			t.Fatal(err)
		}
	}
	if got := exe(d.current()); got != release(1) {
		t.Fatalf("generation 1 runs %s, want %s", got, release(1))
	}
	r := startLoad(t, d.addr, 0.5)
	for n := 2; n <= 3; n++ {
		if err := os.MkdirAll(filepath.Dir(release(n)), 0o755); err != nil {
			t.Fatal(err)
		}
		copyFile(t, d.good, release(n), 0o755)
		retarget(n)
		_, cur := d.upgradeAndDrain()
		if got := exe(cur); got != release(n) {
			t.Errorf("after switching current to release %d, the new generation runs %s", n, got)
		}
		if got := proc.Cmdline(cur); !strings.HasPrefix(got, d.bin) {
			t.Errorf("the new generation's argv[0] is %q, want the link %s (so the next upgrade follows it again)", got, d.bin)
		}
	}
	// A link to a release that is not there: the upgrade fails, release 3 serves on.
	serving := d.current()
	retarget(4)
	d.signal(syscall.SIGUSR2)
	failed := d.waitEvent(0, 10*time.Second, "upgrade_failed")
	failedUpgrade{causes: []string{"start"}, facts: []string{d.bin}}.check(t, "dangling link", failed)
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
		t.Errorf("after the failed upgrade: %v, answered by %d, want %d", err, respPID(resp), serving)
	}
	res := r.Stop()
	checkLoad(t, res)
	checkAnswered(t, res, "generation", d.pids...)
	d.stop()
}

// TestSecondSignalIgnoredDuringUpgrade: a second SIGUSR2 while an upgrade is in
// progress is refused (logged, reason=in_progress) and starts nothing: exactly one new
// process results, and it is the one that times out.
func TestSecondSignalIgnoredDuringUpgrade(t *testing.T) {
	d := startDemo(t, demoOpts{args: []string{"-upgrade-timeout", "3s"}})
	serving := d.current()
	copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), d.bin, 0o755)
	d.signal(syscall.SIGUSR2)
	if err := proc.WaitFor(func() bool { return len(proc.Children(serving)) == 1 }, 10*time.Second, "the new generation to start"); err != nil {
		t.Fatal(err)
	}
	child := proc.Children(serving)[0]
	d.signal(syscall.SIGUSR2)
	d.waitEvent(0, 10*time.Second, "upgrade_refused", "reason=in_progress", logs.KV("pid", serving), logs.KV("child", child))
	if kids := proc.Children(serving); len(kids) != 1 || kids[0] != child {
		t.Errorf("children after the second signal: %v, want only %d", kids, child)
	}
	d.waitEvent(0, 10*time.Second, "upgrade_failed", "cause=timeout", logs.KV("child", child))
	if proc.Alive(child) {
		t.Errorf("the hung child %d is still alive", child)
	}
	if n := d.events().Count("upgrade_start"); n != 1 {
		t.Errorf("%d upgrades started, want 1", n)
	}
	copyFile(t, d.good, d.bin, 0o755)
	d.upgrade()
	d.stop()
}

// TestStopDrains: SIGTERM while a request is in flight: the request (in flight before
// the signal, as the status shows) is answered after the signal, in full, by the same
// process; then the process exits 0 and removes its PID file.
func TestStopDrains(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	pid := d.current()
	slow := slowOn(t, d.addr, pid, "/slow?ms=2000", 20*time.Second)
	// The request is in flight once its handler runs: the connection is active.
	if err := proc.WaitFor(func() bool {
		st, err := ctlStatus(t, ctl)
		return err == nil && st.Connections.Active == 1
	}, 10*time.Second, "the slow request to be in flight"); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	d.signal(syscall.SIGTERM)
	r := <-slow
	if r.err != nil || r.resp.Status != 200 || r.resp.PID() != pid {
		t.Errorf("in-flight request during stop: err %v, status %d from pid %d; want 200 from %d", r.err, statusOf(r.resp), respPID(r.resp), pid)
	}
	if !r.at.After(signalled) {
		t.Errorf("the in-flight request ended before SIGTERM was sent; the test proves nothing")
	}
	st, err := proc.Reap(pid, d.drain+5*time.Second) // hang guard: past the drain deadline
	if err != nil {
		t.Fatal(err)
	}
	if !st.Exited() || st.ExitStatus() != 0 {
		t.Errorf("exit status %v, want 0", st)
	}
	if _, err := os.Stat(d.pidfile); !os.IsNotExist(err) {
		t.Errorf("PID file still there after stop: %v", err)
	}
	ev := d.events()
	if ev.Count("drain_start", logs.KV("pid", pid)) != 1 || ev.Count("drained", logs.KV("pid", pid)) != 1 || ev.Count("drain_deadline") != 0 {
		t.Errorf("the stop did not drain by itself (drain_start, drained, no drain_deadline):\n%s", tail(d.log(), 10))
	}
}

// TestSecondSIGTERMExitsAtOnce: a second SIGTERM during the drain ends the process
// without waiting for the request in flight or the drain deadline.
func TestSecondSIGTERMExitsAtOnce(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 60 * time.Second})
	pid := d.current()
	slow := slowOn(t, d.addr, pid, "/slow?ms=50000", 60*time.Second)
	d.signal(syscall.SIGTERM)
	d.waitEvent(0, 10*time.Second, "drain_start", logs.KV("pid", pid))
	start := time.Now()
	d.signal(syscall.SIGTERM)
	st, err := proc.Reap(pid, 10*time.Second) // hang guard, far below the request and the deadline
	if err != nil {
		t.Fatal(err)
	}
	if !st.Signaled() || st.Signal() != syscall.SIGTERM {
		t.Errorf("wait status %v, want killed by SIGTERM", st)
	}
	if s := <-slow; s.err == nil {
		t.Errorf("the request in flight was answered (%d from %d): the process did not exit at once", statusOf(s.resp), respPID(s.resp))
	}
	if d.events().Count("exit_now", logs.KV("pid", pid)) != 1 {
		t.Errorf("no event=exit_now logged:\n%s", tail(d.log(), 5))
	}
	t.Logf("exited %s after the second SIGTERM", time.Since(start))
}
