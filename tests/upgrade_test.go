package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
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

// checkLoad fails the test on any failed request and returns the result.
func checkLoad(t testing.TB, res *load.Result) {
	t.Helper()
	t.Log(res.Summary())
	if n := res.FailureCount(); n > 0 {
		var b strings.Builder
		for _, f := range res.FailureSamples(20) {
			fmt.Fprintf(&b, "\n  %s", f)
		}
		t.Errorf("%d of %d requests failed: %v%s", n, res.Total(), res.Failures(), b.String())
	}
}

// upgradesUnderLoad runs ten SIGUSR2 upgrades two seconds apart under load and checks
// that nothing failed, every generation answered, every old one exited within the
// drain deadline, and nothing leaked.
func upgradesUnderLoad(t *testing.T, keepAlive float64) {
	d := startDemo(t, demoOpts{drain: 10 * time.Second})
	fds := proc.FDCount(d.current())
	fdList := fdTargets(d.current())
	r := startLoad(t, d.addr, keepAlive)
	exited := make(chan error, 10)
	for i := 0; i < 10; i++ {
		old, _ := d.upgrade()
		go func() {
			start := time.Now()
			err := waitGone(old, d.drain)
			if err == nil && time.Since(start) > d.drain {
				err = fmt.Errorf("pid %d took %s to exit, beyond the drain deadline", old, time.Since(start))
			}
			exited <- err
		}()
		// Let the load run on the new generation before the next upgrade.
		pace(2 * time.Second)
	}
	res := r.Stop()
	checkLoad(t, res)
	for i := 0; i < 10; i++ {
		if err := <-exited; err != nil {
			t.Error(err)
		}
	}
	seen := res.PIDs()
	if len(seen) != 11 {
		t.Errorf("answers came from %d distinct PIDs, want 11 (one per generation): %v", len(seen), seen)
	}
	for i, pid := range d.pids {
		found := false
		for _, s := range seen {
			found = found || s.PID == pid
		}
		if !found {
			t.Errorf("generation %d (pid %d) never answered", i+1, pid)
		}
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
	if n := countLines(d.log(), "handed over"); n != 10 {
		t.Errorf("%d handovers logged, want 10", n)
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

// TestFailedUpgrades: a new binary that exits at once, crashes after taking its
// sockets, never becomes ready, or is missing leaves the old process serving, with a
// logged reason; the next good upgrade succeeds. The load sees no failure throughout.
func TestFailedUpgrades(t *testing.T) {
	d := startDemo(t, demoOpts{args: []string{"-upgrade-timeout", "3s"}})
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	cases := []struct {
		name   string
		deploy func()
		reason string
	}{
		{"exits 1 at start", func() {
			writeFile(t, d.bin, []byte("#!/bin/sh\necho 'broken build' >&2\nexit 1\n"), 0o755)
		}, "exited before it was ready (exit status 1)"},
		{"crashes after binding", func() {
			copyFile(t, buildVariant(t, "testdata/brokendemo", "crash"), d.bin, 0o755)
		}, "exit status 2"},
		{"never ready", func() {
			copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), d.bin, 0o755)
		}, "was not ready within 3s"},
		{"missing binary", func() {
			if err := os.Remove(d.bin); err != nil {
				t.Fatal(err)
			}
		}, "does not exist"},
		{"not executable", func() {
			copyFile(t, d.good, d.bin, 0o644)
		}, "is not executable"},
		{"garbage bytes", func() {
			writeFile(t, d.bin, []byte("\x7fELF garbage, not a program\n"), 0o755)
		}, "exec format error"},
	}
	for _, c := range cases {
		serving := d.current()
		c.deploy()
		before := countLines(d.log(), "upgrade failed")
		d.signal(syscall.SIGUSR2)
		if err := proc.WaitFor(func() bool { return countLines(d.log(), "upgrade failed") > before }, 15*time.Second, c.name+": upgrade to fail"); err != nil {
			t.Fatalf("%v\n%s", err, tail(d.log(), 20))
		}
		lines := strings.Split(d.log(), "\n")
		var got string
		for _, l := range lines {
			if strings.Contains(l, "upgrade failed") {
				got = l
			}
		}
		if !strings.Contains(got, c.reason) {
			t.Errorf("%s: logged %q, want the reason %q", c.name, got, c.reason)
		}
		if p := d.pidFromFile(); p != serving {
			t.Errorf("%s: PID file names %d, want the old %d", c.name, p, serving)
		}
		if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
			t.Errorf("%s: after the failed upgrade: %v, pid %d, want %d", c.name, err, resp.PID(), serving)
		}
		// The failed child was killed and reaped by the old process.
		if kids := proc.Children(serving); len(kids) > 0 {
			t.Errorf("%s: the serving process still has children %v", c.name, kids)
		}
		// A good build goes through.
		copyFile(t, d.good, d.bin, 0o755)
		d.upgradeAndDrain()
	}
	checkLoad(t, r.Stop())
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
	if err := proc.WaitFor(func() bool { return strings.Contains(d.log(), "does not exist") }, 10*time.Second, "the upgrade to fail"); err != nil {
		t.Fatal(err)
	}
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
		t.Errorf("after the failed upgrade: %v, answered by %d, want %d", err, respPID(resp), serving)
	}
	checkLoad(t, r.Stop())
	d.stop()
}

// TestSecondSignalIgnoredDuringUpgrade: a second SIGUSR2 while an upgrade is in
// progress is logged and ignored; exactly one new generation results.
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
	if err := proc.WaitFor(func() bool { return countLines(d.log(), "event=upgrade_refused", "reason=in_progress") > 0 }, 10*time.Second, "the second signal to be refused"); err != nil {
		t.Fatal(err)
	}
	if kids := proc.Children(serving); len(kids) != 1 || kids[0] != child {
		t.Errorf("children after the second signal: %v, want only %d", kids, child)
	}
	if err := proc.WaitFor(func() bool { return strings.Contains(d.log(), "not ready within 3s") }, 10*time.Second, "the hung upgrade to time out"); err != nil {
		t.Fatal(err)
	}
	if proc.Alive(child) {
		t.Errorf("the hung child %d is still alive", child)
	}
	copyFile(t, d.good, d.bin, 0o755)
	d.upgrade()
	d.stop()
}

// TestStopDrains: SIGTERM lets an in-flight request finish, then the process exits 0
// and removes its PID file.
func TestStopDrains(t *testing.T) {
	d := startDemo(t, demoOpts{})
	pid := d.current()
	done := make(chan error, 1)
	go func() {
		resp, err := rawhttp.Get(d.addr, "/slow?ms=1500", 10*time.Second)
		if err == nil && (resp.Status != 200 || resp.PID() != pid) {
			err = fmt.Errorf("status %d from pid %d", resp.Status, resp.PID())
		}
		done <- err
	}()
	if err := proc.WaitFor(func() bool { return proc.FDCount(pid) > 0 && strings.Contains(d.log(), "ready") }, 5*time.Second, "ready"); err != nil {
		t.Fatal(err)
	}
	// Wait for the request to be accepted by the server: its connection shows up
	// as one more descriptor.
	base := proc.FDCount(pid)
	proc.WaitFor(func() bool { return proc.FDCount(pid) > base }, 5*time.Second, "the slow request's connection")
	d.signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Errorf("in-flight request during stop: %v", err)
	}
	st, err := proc.Reap(pid, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Exited() || st.ExitStatus() != 0 {
		t.Errorf("exit status %v, want 0", st)
	}
	if _, err := os.Stat(d.pidfile); !os.IsNotExist(err) {
		t.Errorf("PID file still there after stop: %v", err)
	}
}

// TestSecondSIGTERMExitsAtOnce: a second SIGTERM during the drain ends the process
// without waiting for the drain deadline.
func TestSecondSIGTERMExitsAtOnce(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 60 * time.Second})
	pid := d.current()
	c, err := rawhttp.Dial(d.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Do("GET", "/slow?ms=50000", nil, 60*time.Second)
	if err := proc.WaitFor(func() bool { return d.log() != "" && proc.FDCount(pid) > 0 }, 5*time.Second, "start"); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGTERM)
	if err := proc.WaitFor(func() bool { return strings.Contains(d.log(), "draining") }, 5*time.Second, "draining"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d.signal(syscall.SIGTERM)
	st, err := proc.Reap(pid, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Signaled() || st.Signal() != syscall.SIGTERM {
		t.Errorf("wait status %v, want killed by SIGTERM", st)
	}
	t.Logf("exited %s after the second SIGTERM", time.Since(start))
}
