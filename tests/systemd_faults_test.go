package tests

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// The systemd side of the fault matrix (issue 5): faults whose outcome differs
// when systemd supervises the generations (it is their parent, it restarts a dead
// main process, and on stop it signals the whole control group).

// hostPID returns the host PID of a PID in the test systemd's namespace.
func (d *sdDemo) hostPID(nsPID int) int {
	d.t.Helper()
	p, err := d.sd.HostPID(nsPID)
	if err != nil {
		d.t.Fatal(err)
	}
	return p
}

// sigkill sends SIGKILL to the namespace process nsPID.
func (d *sdDemo) sigkill(nsPID int) {
	d.t.Helper()
	if err := syscall.Kill(d.hostPID(nsPID), syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
}

// show returns a unit property, failing the test if systemctl fails.
func (d *sdDemo) show(prop string) string {
	d.t.Helper()
	v, err := d.sd.Show(unit, prop)
	if err != nil {
		d.t.Fatal(err)
	}
	return v
}

// editService rewrites the deployed service unit with edit and makes systemd reload
// its units. Call it before the service starts.
func (d *sdDemo) editService(edit func(string) string) {
	d.t.Helper()
	path := filepath.Join(d.sd.UnitDir(), unit)
	b, err := os.ReadFile(path)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := d.sd.AddUnit(unit, edit(string(b))); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.sd.CtlOK("daemon-reload"); err != nil {
		d.t.Fatal(err)
	}
}

// reloadAsync runs `systemctl reload` in the background; the channel yields its
// exit code (-1 if it could not run) and output.
func (d *sdDemo) reloadAsync() <-chan ctlResult {
	c := make(chan ctlResult, 1)
	go func() {
		out, code, err := d.sd.Ctl("reload", unit)
		if err != nil {
			code, out = -1, err.Error()
		}
		c <- ctlResult{out, code}
	}()
	return c
}

type ctlResult struct {
	out  string
	code int
}

// newGeneration waits until a demo process other than the one with host PID old
// runs, and returns its host PID.
func (d *sdDemo) newGeneration(old int, timeout time.Duration) int {
	d.t.Helper()
	var child int
	err := proc.WaitFor(func() bool {
		for _, p := range d.demoProcesses() {
			if p != old {
				child = p
				return true
			}
		}
		return false
	}, timeout, "the new generation to start")
	if err != nil {
		d.t.Fatal(err)
	}
	return child
}

// slowResult is the outcome of one request of slowRequests.
type slowResult struct {
	pid  int
	kind rawhttp.Kind
	err  error
}

// slowRequests opens n connections, checks with a first request that nsPID
// answers them, then sends GET /slow?ms=ms on each. The channel yields each
// outcome. Connections are closed at the end of the test.
func (d *sdDemo) slowRequests(nsPID, n, ms int) <-chan slowResult {
	d.t.Helper()
	out := make(chan slowResult, n)
	for i := 0; i < n; i++ {
		c, err := rawhttp.Dial(d.addr, 5*time.Second)
		if err != nil {
			d.t.Fatal(err)
		}
		d.t.Cleanup(func() { c.Close() })
		if resp, err := c.Do("GET", "/", nil, 5*time.Second); err != nil || resp.PID() != nsPID {
			d.t.Fatalf("warm-up request: %v (answered by %d, want %d)", err, respPID(resp), nsPID)
		}
		go func() {
			resp, err := c.Do("GET", "/slow?ms="+strconv.Itoa(ms), nil, time.Duration(ms)*time.Millisecond+20*time.Second)
			out <- slowResult{pid: respPID(resp), kind: rawhttp.KindOf(resp, err), err: err}
		}()
	}
	return out
}

// estabConns counts the established TCP connections that host process pid holds
// on local address addr (127.0.0.1:port): the clients it is still serving.
func estabConns(pid int, addr string) int {
	inodes := map[string]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	_, port, _ := strings.Cut(addr, ":")
	p, _ := strconv.Atoi(port)
	local := fmt.Sprintf("0100007F:%04X", p)
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) > 9 && fs[1] == local && fs[3] == "01" && inodes[fs[9]] {
			n++
		}
	}
	return n
}

// answerGen makes one request and returns the PID and generation that answered.
func (d *sdDemo) answerGen() (pid, gen int) {
	d.t.Helper()
	resp, err := rawhttp.Get(d.addr, "/", 10*time.Second)
	if err != nil || resp.Status != 200 {
		d.t.Fatalf("request to %s: %v (%+v)", d.addr, err, resp)
	}
	for _, f := range strings.Fields(string(resp.Body)) {
		if v, ok := strings.CutPrefix(f, "gen="); ok {
			gen, _ = strconv.Atoi(v)
		}
	}
	return resp.PID(), gen
}

// waitReaped waits until host process pid is gone (reaped by systemd).
func waitReaped(t testing.TB, pid int, timeout time.Duration) {
	t.Helper()
	if err := proc.WaitFor(func() bool { return proc.State(pid) == "" }, timeout, fmt.Sprintf("process %d to be reaped", pid)); err != nil {
		t.Errorf("%v (state %q)", err, proc.State(pid))
	}
}

// waitRestarted waits until systemd has restarted the service: active, with a main
// PID that is none of gone.
func (d *sdDemo) waitRestarted(timeout time.Duration, gone ...int) int {
	d.t.Helper()
	var pid int
	if err := proc.WaitFor(func() bool {
		p, _ := d.sd.MainPID(unit)
		st, _ := d.sd.ActiveState(unit)
		pid = p
		return p != 0 && !slices.Contains(gone, p) && st == "active"
	}, timeout, "systemd to restart the service"); err != nil {
		d.t.Fatal(err)
	}
	return pid
}

// checkNextReload asserts that a `systemctl reload` works and moves MainPID.
func (d *sdDemo) checkNextReload() {
	d.t.Helper()
	before := d.mainPID()
	if out, code := d.reload(); code != 0 {
		d.t.Errorf("the next reload: exit %d\n%s", code, out)
		return
	}
	if after := d.mainPID(); after == before {
		d.t.Errorf("the next reload left MainPID at %d", after)
	} else {
		d.checkState(after)
	}
}

// lineIndex returns the index of the first log line containing every substring,
// or -1. Lines are matched with a space appended, so that "pid=36 " matches a line
// ending in pid=36.
func lineIndex(log string, substrs ...string) int {
	for i, line := range strings.Split(log, "\n") {
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line+" ", s)
		}
		if all {
			return i
		}
	}
	return -1
}

// checkConsoleDebug is checkConsole for a systemd logging at debug level, where
// every notification accepted is logged as "Got notification message from PID N (...)".
func (d *sdDemo) checkConsoleDebug() {
	d.t.Helper()
	accepted := regexp.MustCompile(`Got notification message from PID \d+ \(`)
	var bad []string
	for _, l := range d.sd.SuspiciousLines() {
		if !accepted.MatchString(l) {
			bad = append(bad, l)
		}
	}
	if len(bad) > 0 {
		d.t.Errorf("systemd logged:\n  %s", strings.Join(bad, "\n  "))
	}
}

// TestSystemdKillNewBeforeReady: kill -9 of the new generation while it starts (a
// build that never becomes ready): `systemctl reload` fails at once, not at the
// upgrade timeout; the unit stays active with the old main PID; systemd reaps the
// killed process (its parent); no request fails; the next reload works.
func TestSystemdKillNewBeforeReady(t *testing.T) {
	hang := buildVariant(t, "testdata/brokendemo", "hang")
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-upgrade-timeout 30s")
		main := d.answer()
		good := filepath.Join(d.bin, "handover-demo")
		saved := filepath.Join(d.sd.Dir(), "handover-demo.good")
		copyFile(t, good, saved, 0o755)
		copyFile(t, hang, good, 0o755)
		r := startLoad(t, d.addr, 0.5)
		reload := d.reloadAsync()
		child := d.newGeneration(d.hostPID(main), 10*time.Second)
		// Kill it once it holds the sockets.
		if err := proc.WaitFor(func() bool { return countLines(d.sd.ReadLog("demo.log"), "starting", "gen=2") > 0 }, 10*time.Second, "the new generation to take its sockets"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var res ctlResult
		select {
		case res = <-reload:
		case <-time.After(20 * time.Second):
			t.Fatal("systemctl reload did not return within 20s of the kill")
		}
		took := time.Since(start)
		if res.code == 0 {
			t.Errorf("systemctl reload succeeded although the new generation was killed:\n%s", res.out)
		}
		if took > 5*time.Second {
			t.Errorf("systemctl reload returned %s after the kill; the death should be noticed at once, not at the upgrade timeout", took)
		}
		log := d.sd.ReadLog("demo.log")
		if countLines(log, "upgrade failed; still serving", "exited before it was ready") != 1 {
			t.Errorf("the log does not say the new generation exited:\n%s", tail(log, 10))
		}
		waitReaped(t, child, 10*time.Second)
		d.checkState(main)
		if got := d.answer(); got != main {
			t.Errorf("answered by %d, want the old main %d", got, main)
		}
		if ps := d.demoProcesses(); len(ps) != 1 {
			t.Errorf("demo processes %v, want only the old main", ps)
		}
		copyFile(t, saved, good, 0o755)
		d.checkNextReload()
		checkLoad(t, r.Stop())
		d.checkConsole()
		t.Logf("systemctl reload failed %s after the kill: %s", took.Round(time.Millisecond), strings.TrimSpace(res.out))
	})
}

// TestSystemdKillNewDuringDrain: kill -9 of the new main process while the old one
// drains requests in flight. systemd sees its main process die and, with
// Restart=on-failure, stops the unit before restarting it: KillMode=control-group
// sends SIGTERM to the draining old generation, which is no longer the main one and
// goes on draining, so its requests in flight complete. systemd restarts the service
// once the old generation has exited; meanwhile new connections wait in the socket
// unit's queue. Only requests in flight in the killed process fail.
func TestSystemdKillNewDuringDrain(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-drain-timeout 10s")
		old := d.answer()
		const nSlow = 4
		slow := d.slowRequests(old, nSlow, 2000)
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		victim := d.mainPID()
		r := startLoad(t, d.addr, 0.5)
		killed := time.Now()
		d.sigkill(victim)
		// What `systemctl status` shows meanwhile: the unit stopping, the old
		// generation still in its cgroup, draining.
		if err := proc.WaitFor(func() bool {
			st, _ := d.sd.Show(unit, "SubState")
			return st == "stop-sigterm"
		}, 5*time.Second, "the unit to be stopping (stop-sigterm)"); err != nil {
			t.Error(err)
		}
		restarted := d.waitRestarted(30*time.Second, old, victim)
		gap := time.Since(killed)
		if err := proc.WaitFor(func() bool { _, _, last := r.Progress(); return last == restarted }, 10*time.Second, "answers from the restarted service"); err != nil {
			t.Error(err)
		}
		res := r.Stop()
		checkKilledInFlight(t, res)
		for i := 0; i < nSlow; i++ {
			if s := <-slow; s.kind != rawhttp.OK || s.pid != old {
				t.Errorf("a request in flight in the draining old generation: %v, answered by %d (%v)", s.kind, s.pid, s.err)
			}
		}
		log := d.sd.ReadLog("demo.log")
		if countLines(log, "event=stop_ignored", fmt.Sprintf("pid=%d", old)) != 1 {
			t.Errorf("the old generation did not log systemd's SIGTERM during its drain")
		}
		exited := lineIndex(log, "msg=exiting", fmt.Sprintf("pid=%d ", old))
		started := lineIndex(log, "msg=starting", fmt.Sprintf("pid=%d ", restarted))
		if exited < 0 || started < 0 || started < exited {
			t.Errorf("the restarted service (log line %d) should start after the old generation exits (log line %d)", started, exited)
		}
		for _, want := range []string{"Main process exited, code=killed, status=9/KILL", "Scheduled restart job"} {
			if len(d.sd.Grep(regexp.QuoteMeta(want))) != 1 {
				t.Errorf("systemd did not log %q once", want)
			}
		}
		if got := d.show("NRestarts"); got != "1" {
			t.Errorf("NRestarts=%s, want 1", got)
		}
		d.checkState(restarted)
		d.checkNextReload()
		d.waitSingle(15 * time.Second)
		d.checkConsole()
		t.Logf("service restarted %s after the kill (the old generation's drain)", gap.Round(time.Millisecond))
	})
}

// TestSystemdKillOldDuringDrain: kill -9 of the old generation in the middle of its
// drain: the new main serves on, the unit stays active (running) with the new
// MainPID, systemd restarts nothing, and only the killed process's connections fail.
func TestSystemdKillOldDuringDrain(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-drain-timeout 30s")
		old := d.answer()
		oldHost := d.hostPID(old)
		r := startLoad(t, d.addr, 0.5)
		const nSlow = 4
		slow := d.slowRequests(old, nSlow, 20000)
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		cur := d.mainPID()
		// The load's connections leave the old generation within the keep-alive
		// grace; then it holds only the slow ones.
		if err := proc.WaitFor(func() bool { return estabConns(oldHost, d.addr) == nSlow }, 10*time.Second, "the old generation to hold only the slow connections"); err != nil {
			t.Fatalf("%v: it holds %d", err, estabConns(oldHost, d.addr))
		}
		if err := syscall.Kill(oldHost, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < nSlow; i++ {
			select {
			case s := <-slow:
				if s.kind != rawhttp.Reset && s.kind != rawhttp.EOF {
					t.Errorf("a request in flight in the killed old generation: %v (%v), want a reset or EOF", s.kind, s.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a request in flight in the killed old generation did not fail within 10s")
			}
		}
		waitReaped(t, oldHost, 10*time.Second)
		pace(time.Second) // the load runs on
		res := r.Stop()
		checkLoad(t, res)
		if _, _, last := r.Progress(); last != cur {
			t.Errorf("the last answer came from %d, want the new main %d", last, cur)
		}
		d.checkState(cur)
		if got := d.show("NRestarts"); got != "0" {
			t.Errorf("NRestarts=%s, want 0", got)
		}
		if lines := d.sd.Grep("Main process exited|Scheduled restart|Failed with result"); len(lines) > 0 {
			t.Errorf("systemd reacted to the death of a process that is not the main one:\n%s", strings.Join(lines, "\n"))
		}
		d.checkNextReload()
		d.checkConsole()
	})
}

// stormSettle waits until one demo process is left, and checks that the generations
// in the log add up: every upgrade that started handed over (none failed), each
// generation became ready once, and the serving process is the last one handed over
// to, with generation 1 + the number of handovers.
func (d *sdDemo) stormSettle() (started, refused int) {
	d.t.Helper()
	d.waitSingle(20 * time.Second)
	log := d.sd.ReadLog("demo.log")
	started = countLines(log, "upgrade starting")
	refused = countLines(log, "upgrade refused")
	handed := countLines(log, "msg=\"handed over\"")
	failed := countLines(log, "upgrade failed")
	ready := countLines(log, "msg=ready")
	if started == 0 || handed != started || failed != 0 || ready != handed+1 {
		d.t.Errorf("%d upgrades started, %d handed over, %d failed, %d generations ready; want every upgrade to hand over to exactly one new generation", started, handed, failed, ready)
	}
	pid, gen := d.answerGen()
	d.checkState(pid)
	if gen != handed+1 {
		d.t.Errorf("generation %d serves after %d handovers", gen, handed)
	}
	return started, refused
}

// TestSystemdSignalStorm: 20 `kill -USR2 $MAINPID` within a second, with the plain
// kill-reload unit: a burst of ten at once to the main PID, then ten more 50ms
// apart, each to the main PID systemd reports at that moment. Each signal starts an upgrade, is
// refused (one is in progress, the process is not ready yet, or it has handed over),
// or is merged by the kernel with one still pending; every upgrade hands over to
// exactly one new generation, the unit ends active (running) with a single process,
// and no request fails.
func TestSystemdSignalStorm(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "kill-reload", "-drain-timeout 5s")
		d.answer()
		r := startLoad(t, d.addr, 0.5)
		begin := time.Now()
		gone := 0 // signals that found the process gone
		usr2 := func(host int) {
			if syscall.Kill(host, syscall.SIGUSR2) != nil {
				gone++
			}
		}
		// A burst at the main PID of the moment: the first signal starts an
		// upgrade, the others reach a process that is upgrading or has handed over.
		main := d.hostPID(d.mainPID())
		for i := 0; i < 10; i++ {
			usr2(main)
		}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 10; i++ {
			<-tick.C
			// $MAINPID as ExecReload= would read it; the process may have handed
			// over and exited since.
			if host, err := d.sd.HostPID(d.mainPID()); err != nil {
				gone++
			} else {
				usr2(host)
			}
		}
		if took := time.Since(begin); took > time.Second {
			t.Logf("sending 20 signals took %s", took)
		}
		if err := proc.WaitFor(func() bool {
			log := d.sd.ReadLog("demo.log")
			st, _ := d.sd.Show(unit, "SubState")
			return st == "running" && countLines(log, "upgrade starting") == countLines(log, "msg=\"handed over\"")
		}, 20*time.Second, "the last upgrade to finish"); err != nil {
			t.Fatal(err)
		}
		started, refused := d.stormSettle()
		checkLoad(t, r.Stop())
		if started+refused+gone > 20 || started < 2 {
			t.Errorf("%d upgrades, %d refusals and %d vanished processes for 20 signals", started, refused, gone)
		}
		d.checkConsole()
		t.Logf("20 SIGUSR2: %d upgrades, %d refused, %d merged with a pending one, %d sent to a process gone", started, refused, 20-started-refused-gone, gone)
	})
}

// TestSystemdConcurrentReloads: five `systemctl reload` at once with the waiting
// ExecReload=: systemd merges them into fewer reload jobs; each job runs one
// `handover reload`, which is one upgrade and one new generation; every
// `systemctl reload` succeeds, and no request fails.
func TestSystemdConcurrentReloads(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-drain-timeout 5s")
		d.answer()
		r := startLoad(t, d.addr, 0.5)
		var results []<-chan ctlResult
		for i := 0; i < 5; i++ {
			results = append(results, d.reloadAsync())
		}
		for i, c := range results {
			if res := <-c; res.code != 0 {
				t.Errorf("systemctl reload %d: exit %d\n%s", i+1, res.code, res.out)
			}
		}
		started, refused := d.stormSettle()
		checkLoad(t, r.Stop())
		if started > 5 || refused != 0 {
			t.Errorf("%d upgrades and %d refusals for 5 reloads", started, refused)
		}
		d.checkConsole()
		t.Logf("5 concurrent systemctl reload: %d upgrades", started)
	})
}

// TestSystemdStopDuringUpgrade: `systemctl stop` while a new generation is starting
// (a build that never becomes ready): systemd cancels the reload and sends SIGTERM to
// the control group; the old main abandons the upgrade, kills the new process, tells
// systemd STOPPING=1 and drains; the unit is inactive within seconds, with result
// success (no SIGKILL at TimeoutStopSec) and nothing left in its cgroup.
func TestSystemdStopDuringUpgrade(t *testing.T) {
	hang := buildVariant(t, "testdata/brokendemo", "hang")
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		// At debug level systemd logs every notification it gets.
		t.Setenv("HANDOVER_SDNS_LOG_LEVEL", "debug")
		d := startSystemd(t, v, "", "-upgrade-timeout 30s -drain-timeout 10s")
		main := d.answer()
		copyFile(t, hang, filepath.Join(d.bin, "handover-demo"), 0o755)
		reload := d.reloadAsync()
		d.newGeneration(d.hostPID(main), 10*time.Second)
		if err := proc.WaitFor(func() bool { return countLines(d.sd.ReadLog("demo.log"), "starting", "gen=2") > 0 }, 10*time.Second, "the new generation to take its sockets"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if out, code, err := d.sd.Ctl("stop", unit); err != nil || code != 0 {
			t.Fatalf("systemctl stop: %v %d\n%s", err, code, out)
		}
		took := time.Since(start)
		if took > 5*time.Second {
			t.Errorf("systemctl stop took %s", took)
		}
		if res := <-reload; res.code == 0 {
			t.Errorf("the reload interrupted by the stop succeeded:\n%s", res.out)
		}
		if st := d.show("ActiveState"); st != "inactive" {
			t.Errorf("after stop the unit is %s", st)
		}
		if res := d.show("Result"); res != "success" {
			t.Errorf("Result=%s, want success", res)
		}
		if ps, _ := d.sd.Processes(); len(ps) != 1 {
			t.Errorf("processes left in the namespace besides systemd: %v", ps)
		}
		log := d.sd.ReadLog("demo.log")
		if countLines(log, "event=upgrade_failed", "cause=abandoned") != 1 {
			t.Errorf("the old main did not abandon the upgrade:\n%s", tail(log, 10))
		}
		// ExecReload= (handover reload) exited 0, on systemd's SIGTERM or on the
		// service's "stopping" answer: Result=success above says the unit is not
		// failed.
		if lines := d.sd.Grep("Killing process .* with signal SIGKILL|timed out|Failed with result"); len(lines) > 0 {
			t.Errorf("systemd had to kill processes:\n%s", strings.Join(lines, "\n"))
		}
		// STOPPING=1 comes once, from the main process, after systemd began the stop;
		// the abandoned generation, never the main one, sends nothing.
		m := regexp.MustCompile(`child=(\d+)`).FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("no child PID in the log:\n%s", log)
		}
		console := d.sd.ConsoleLog()
		if n := strings.Count(console, "STOPPING=1"); n != 1 {
			t.Errorf("systemd got STOPPING=1 %d times, want once", n)
		}
		stopping := lineIndex(console, fmt.Sprintf("Got notification message from PID %d (STOPPING=1", main))
		began := lineIndex(console, "Changed reload -> stop-sigterm")
		if stopping < 0 || began < 0 || stopping < began {
			t.Errorf("STOPPING=1 from the main process %d (console line %d) should follow the start of the stop (line %d)", main, stopping, began)
		}
		if lines := d.sd.Grep(fmt.Sprintf(`Got notification message from PID %s\b`, m[1])); len(lines) > 0 {
			t.Errorf("the abandoned generation notified systemd:\n%s", strings.Join(lines, "\n"))
		}
		d.checkConsoleDebug()
		t.Logf("systemctl stop during an upgrade took %s", took.Round(time.Millisecond))
	})
}

// TestSystemdWatchdog: with WatchdogSec=2, the service survives five reloads and a
// quiet spell of more than three watchdog periods (each new main takes over the
// pings: WATCHDOG_PID names the old process and is rewritten); a main process that
// stops pinging (SIGSTOP) is caught: systemd logs a watchdog timeout, kills it and
// restarts the service.
func TestSystemdWatchdog(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-drain-timeout 5s")
		d.editService(func(s string) string {
			return strings.Replace(s, "[Service]\n", "[Service]\nWatchdogSec=2\n", 1)
		})
		prev := d.answer()
		if got := d.show("WatchdogUSec"); got != "2s" {
			t.Fatalf("WatchdogUSec=%s, want 2s", got)
		}
		r := startLoad(t, d.addr, 0.5)
		for i := 0; i < 5; i++ {
			if out, code := d.reload(); code != 0 {
				t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
			}
			pid := d.mainPID()
			if pid == prev {
				t.Fatalf("reload %d: MainPID still %d", i+1, pid)
			}
			prev = pid
		}
		pace(6500 * time.Millisecond)
		checkLoad(t, r.Stop())
		d.checkState(prev)
		if lines := d.sd.Grep("[Ww]atchdog"); len(lines) > 0 {
			t.Fatalf("watchdog trouble after handovers:\n%s", strings.Join(lines, "\n"))
		}
		if got := d.show("NRestarts"); got != "0" {
			t.Errorf("NRestarts=%s, want 0", got)
		}
		// A main process that stops pinging.
		stopped := d.hostPID(prev)
		if err := syscall.Kill(stopped, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		restarted := d.waitRestarted(15*time.Second, prev)
		for _, want := range []string{"Watchdog timeout (limit 2s)!", "with signal SIGABRT", "Failed with result 'watchdog'"} {
			if len(d.sd.Grep(regexp.QuoteMeta(want))) != 1 {
				t.Errorf("systemd did not log %q once:\n%s", want, tail(d.sd.ConsoleLog(), 10))
			}
		}
		waitReaped(t, stopped, 10*time.Second)
		if got := d.answer(); got != restarted {
			t.Errorf("answered by %d, want the restarted %d", got, restarted)
		}
		d.checkConsole()
	})
}

// TestSystemdFDStoreKillMain: the fd-store unit (no socket unit): kill -9 of the main
// process (one that took over in a reload); systemd restarts the service with the
// socket from its fd store, so no connection is refused and only requests in flight
// in the killed process fail; the next reload works.
func TestSystemdFDStoreKillMain(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "fdstore", "-drain-timeout 5s")
		if _, err := d.sd.CtlOK("start", unit); err != nil {
			t.Fatal(err)
		}
		d.answer()
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		victim := d.mainPID()
		d.waitSingle(15 * time.Second)
		r := startLoad(t, d.addr, 0.5)
		d.sigkill(victim)
		restarted := d.waitRestarted(30*time.Second, victim)
		if err := proc.WaitFor(func() bool { _, _, last := r.Progress(); return last == restarted }, 10*time.Second, "answers from the restarted service"); err != nil {
			t.Error(err)
		}
		res := r.Stop()
		checkKilledInFlight(t, res)
		log := d.sd.ReadLog("demo.log")
		if countLines(log, "msg=starting", fmt.Sprintf("pid=%d ", restarted), "descriptors from systemd") != 1 {
			t.Errorf("the restarted service did not get its socket from systemd:\n%s", tail(log, 10))
		}
		d.checkState(restarted)
		d.checkNextReload()
		d.checkConsole()
	})
}

// TestSystemdControlSocketSecurity: the control socket is mode 0600 in a 0700
// runtime directory; `handover status` and `handover reload` run as an unprivileged
// user are refused by the file system, and, with the file modes opened up, by the
// service's peer-credential check, which logs the refusal; root is answered.
func TestSystemdControlSocketSecurity(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		main := d.answer()
		out, code, err := d.sd.Exec("stat", "-c", "%a %U %F", "/run/handover-demo", d.ctl)
		if err != nil || code != 0 || out != "700 root directory\n600 root socket\n" {
			t.Errorf("stat: %v %d\n%s", err, code, out)
		}
		cli := filepath.Join(d.bin, "handover")
		asNobody := func(args ...string) (string, int) {
			t.Helper()
			out, code, err := d.sd.Exec(append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", cli}, args...)...)
			if err != nil {
				t.Fatal(err)
			}
			return out, code
		}
		for _, cmd := range []string{"status", "reload"} {
			if out, code := asNobody(cmd, "-control", d.ctl); code == 0 || !strings.Contains(out, "permission denied on "+d.ctl) {
				t.Errorf("handover %s as nobody: exit %d\n%s", cmd, code, out)
			}
		}
		// Open the file-system door: the service itself must still refuse.
		if out, code, err := d.sd.Exec("chmod", "0755", "/run/handover-demo"); err != nil || code != 0 {
			t.Fatalf("chmod: %v\n%s", err, out)
		}
		if out, code, err := d.sd.Exec("chmod", "0666", d.ctl); err != nil || code != 0 {
			t.Fatalf("chmod: %v\n%s", err, out)
		}
		for _, cmd := range []string{"status", "reload"} {
			if out, code := asNobody(cmd, "-control", d.ctl); code == 0 || !strings.Contains(out, "uid 65534 may not control this service") {
				t.Errorf("handover %s as nobody through an open socket: exit %d\n%s", cmd, code, out)
			}
		}
		log := d.sd.ReadLog("demo.log")
		if n := countLines(log, "control socket: refused a peer", "uid=65534"); n != 2 {
			t.Errorf("%d refusals logged, want 2:\n%s", n, tail(log, 10))
		}
		if countLines(log, "upgrade starting") != 0 {
			t.Errorf("a refused peer started an upgrade")
		}
		d.checkState(main)
		if out, code, err := d.sd.Exec(cli, "status", "-control", d.ctl); err != nil || code != 0 || !strings.Contains(out, fmt.Sprintf("PID:         %d", main)) {
			t.Errorf("handover status as root: %v %d\n%s", err, code, out)
		}
		d.checkConsole()
	})
}
