package tests

// Two-phase upgrades (issue 18): `handover prepare` starts the new generation, which
// waits ready and not accepting while the old one serves alone; `handover commit`
// makes it serve; `handover abort` ends it. Without a service manager here; under
// systemd and `handover run` in prepare_run_test.go; a fleet in fleet_test.go.

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// cli runs `handover ARGS...` (where the service is: here, or in a systemd's
// namespace) and returns its combined output and exit code.
type cli func(args ...string) (string, int)

// localCLI runs the handover command in the test's environment.
func localCLI(t testing.TB) cli {
	bin := proc.Binary(t, handoverPkg)
	return func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = cleanEnv()
		return combined(t, cmd)
	}
}

// combined runs cmd and returns its combined output and exit code.
func combined(t testing.TB, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// step runs `handover VERB -control ctl`, which must exit 0 and print "<done>: PID
// N, generation G", and returns N.
func (h cli) step(t testing.TB, verb, ctl string) int {
	t.Helper()
	out, code := h(verb, "-control", ctl, "-timeout", "30s")
	done := map[string]string{"prepare": "prepared", "commit": "committed", "abort": "aborted"}[verb]
	var pid, gen int
	if n, _ := fmt.Sscanf(out, done+": PID %d, generation %d", &pid, &gen); code != 0 || n != 2 {
		t.Fatalf("handover %s: exit %d: %s", verb, code, out)
	}
	return pid
}

// onlyOld makes n requests, each on a new connection, and fails the test unless old
// answered every one: a prepared generation does not accept.
func onlyOld(t testing.TB, addr string, old, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		resp, err := rawhttp.Get(addr, "/", 5*time.Second)
		if err != nil || resp.PID() != old {
			t.Fatalf("request %d while prepared: %v, answered by %d; want the old generation %d", i+1, err, respPID(resp), old)
		}
	}
}

// waitAnsweredBy waits until a new connection is answered by pid.
func waitAnsweredBy(t testing.TB, addr string, pid int) {
	t.Helper()
	err := proc.WaitFor(func() bool {
		resp, err := rawhttp.Get(addr, "/", 5*time.Second)
		return err == nil && resp.PID() == pid
	}, 10*time.Second, fmt.Sprintf("pid %d to answer", pid))
	if err != nil {
		t.Fatal(err)
	}
}

// prepareCommit prepares a new generation of the service on ctl (old serves), checks
// that only old answers while it is prepared and that the status shows it, commits it
// and waits until it answers. It returns its PID and when the commit began.
func prepareCommit(t testing.TB, h cli, ctl, addr string, old int, status func() (int, string, int)) (int, time.Time) {
	t.Helper()
	next := h.step(t, "prepare", ctl)
	onlyOld(t, addr, old, 40)
	if pid, state, prepared := status(); pid != old || state != "prepared" || prepared != next {
		t.Errorf("status while prepared: pid %d, state %q, prepared %d; want %d, prepared, %d", pid, state, prepared, old, next)
	}
	onlyOld(t, addr, old, 10)
	at := time.Now()
	if pid := h.step(t, "commit", ctl); pid != next {
		t.Fatalf("handover commit: PID %d, prepared %d", pid, next)
	}
	waitAnsweredBy(t, addr, next)
	return next, at
}

// noAnswerBefore fails the test if pid answered a request of the load that ended
// before at (the commit): a prepared generation must not have served.
func noAnswerBefore(t testing.TB, res *load.Result, pid int, at time.Time) {
	t.Helper()
	before := at.Sub(res.Started)
	for _, r := range res.Records {
		if int(r.PID) == pid && r.Start+r.Latency < before {
			t.Errorf("pid %d answered a request (sent at %v, answered %v before the commit) while prepared", pid, r.Start.Round(time.Millisecond), (before - r.Start - r.Latency).Round(time.Microsecond))
			return
		}
	}
}

// TestPrepareCommit: a server without a service manager, through its control
// socket. Under load: a prepared generation answers nothing (only the old PID, on
// many new connections) until `handover commit`, which makes it serve with no failed
// request; the record has the prepare's and the commit's times. A plain reload is
// refused while one is prepared. Then: `handover abort` kills the prepared
// generation (reaped: the serving process has no child left) and the old one
// serves on; a prepare whose build exits fails with the reason and leaves the old
// one serving; and the next prepare and commit still work.
func TestPrepareCommit(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	h := localCLI(t)
	old := d.current()
	status := func() (int, string, int) {
		st, err := ctlStatus(t, ctl)
		if err != nil {
			t.Fatal(err)
		}
		return st.PID, st.State, st.Prepared
	}
	r := startLoad(t, d.addr, 0.5)
	next, at := prepareCommit(t, h, ctl, d.addr, old, status)
	d.pids = append(d.pids, next)
	after := openWindow(r, "the committed generation", next)
	if err := waitGone(old, d.drain); err != nil {
		t.Error(err)
	}
	after.close(t, r)
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, []*window{after})
	checkAnswered(t, res, "generation", old, next)
	noAnswerBefore(t, res, next, at)
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	if rec := st.Upgrades[len(st.Upgrades)-1]; rec.Outcome != "ok" || rec.To != next || rec.Prepared.IsZero() || rec.Committed.IsZero() || rec.PrepareSeconds <= 0 {
		t.Errorf("the record of the two-phase upgrade: %+v", rec)
	}

	// Abort, and a plain reload refused meanwhile.
	prepared := h.step(t, "prepare", ctl)
	if out, code := h("reload", "-control", ctl); code != 1 || !strings.Contains(out, "prepared generation") {
		t.Errorf("reload while prepared: exit %d: %s", code, out)
	}
	if pid := h.step(t, "abort", ctl); pid != prepared {
		t.Errorf("handover abort: PID %d, prepared %d", pid, prepared)
	}
	if proc.State(prepared) != "" || len(proc.Children(next)) != 0 {
		t.Errorf("after the abort: pid %d is %q, the serving process has children %v", prepared, proc.State(prepared), proc.Children(next))
	}
	onlyOld(t, d.addr, next, 10)
	if out, code := h("abort", "-control", ctl); code != 1 || !strings.Contains(out, "no prepared generation") {
		t.Errorf("a second abort: exit %d: %s", code, out)
	}

	// A build that exits before it is ready.
	writeFile(t, d.bin, []byte("#!/bin/sh\necho 'fatal: bad config' >&2\nexit 1\n"), 0o755)
	if out, code := h("prepare", "-control", ctl); code != 1 || !strings.Contains(out, "prepare failed") || !strings.Contains(out, "fatal: bad config") {
		t.Errorf("prepare of a failing build: exit %d: %s", code, out)
	}
	if st, _ := ctlStatus(t, ctl); st.PID != next || st.State != "serving" || len(proc.Children(next)) != 0 {
		t.Errorf("after the failed prepare: %+v, children %v", st, proc.Children(next))
	}
	onlyOld(t, d.addr, next, 10)
	copyFile(t, d.good, d.bin, 0o755)
	last, _ := prepareCommit(t, h, ctl, d.addr, next, status)
	d.pids = append(d.pids, last)
	if n := d.events().Count("upgrade_aborted", "cause=aborted"); n != 1 {
		t.Errorf("%d upgrade_aborted cause=aborted logged, want 1", n)
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestPrepareTimeout: a prepared generation not committed within -prepare-timeout is
// aborted by itself: logged (event=upgrade_aborted, cause=prepare_timeout), killed
// and reaped, recorded; the old one serves on.
func TestPrepareTimeout(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl, args: []string{"-prepare-timeout", "1s"}})
	old := d.current()
	prepared := localCLI(t).step(t, "prepare", ctl)
	d.waitEvent(0, 10*time.Second, "upgrade_aborted", "cause=prepare_timeout", logs.KV("child", prepared))
	if err := proc.WaitFor(func() bool { return proc.State(prepared) == "" }, 5*time.Second, "the prepared process to be reaped"); err != nil {
		t.Error(err)
	}
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	if rec := st.Upgrades[len(st.Upgrades)-1]; st.State != "serving" || st.PID != old || rec.Outcome != "aborted" || rec.Reason != "prepare_timeout" || !strings.Contains(st.LastError, "longer than 1s") {
		t.Errorf("after the prepare timeout: %+v", st)
	}
	onlyOld(t, d.addr, old, 5)
	d.stop()
}
