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

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
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

// show returns a unit property, failing the test if systemctl fails.
func (d *sdDemo) show(prop string) string {
	d.t.Helper()
	v, err := d.sd.Show(unit, prop)
	if err != nil {
		d.t.Fatal(err)
	}
	return v
}

// showAll returns several unit properties read at once (one systemctl show), so that
// they describe the same moment.
func (d *sdDemo) showAll(props ...string) map[string]string {
	d.t.Helper()
	out, err := d.sd.CtlOK("show", "-p", strings.Join(props, ","), unit)
	if err != nil {
		d.t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
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

// systemdChild returns the host PID of the namespace process nsPID after checking
// that its parent is systemd (PID 1 of the namespace): only then is "gone after it
// died" proof that systemd reaped it.
func (d *sdDemo) systemdChild(nsPID int) int {
	d.t.Helper()
	host := d.hostPID(nsPID)
	sd, err := d.sd.HostPID(1)
	if err != nil {
		d.t.Fatal(err)
	}
	if pp := proc.PPid(host); pp != sd {
		d.t.Errorf("pid %d (host %d) has parent %d, not systemd (host %d): systemd would not reap it", nsPID, host, pp, sd)
	}
	return host
}

// waitReaped waits until host process pid, a child of systemd (see systemdChild)
// that died, is gone: no zombie left, nothing with its PID in the namespace's
// process table. Its parent, systemd, reaped it.
func (d *sdDemo) waitReaped(pid int, timeout time.Duration) {
	d.t.Helper()
	err := proc.WaitFor(func() bool {
		ps, _ := d.sd.Processes()
		return proc.State(pid) == "" && !slices.Contains(ps, pid)
	}, timeout, fmt.Sprintf("process %d to be reaped by systemd", pid))
	if err != nil {
		d.t.Errorf("%v (state %q, parent %d)", err, proc.State(pid), proc.PPid(pid))
	}
}

// checkExitedByItself checks, from systemd's own record of the unit (systemctl show),
// that the last main process exited 0 by itself and the unit's result is success:
// systemd did not have to kill anything (SIGKILL at TimeoutStopSec= would show as
// ExecMainCode=2 (killed) and Result=timeout).
func (d *sdDemo) checkExitedByItself() {
	d.t.Helper()
	res, code, status := d.show("Result"), d.show("ExecMainCode"), d.show("ExecMainStatus")
	// ExecMainCode is the waitid() si_code: 1 is CLD_EXITED.
	if res != "success" || code != "1" || status != "0" {
		d.t.Errorf("Result=%s ExecMainCode=%s ExecMainStatus=%s; want success, 1 (exited), 0", res, code, status)
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

// killNewMain reloads the service under the load r, waits (up to single) for the
// new main process to be the only generation, kills it with SIGKILL, and waits for
// systemd to restart the service and reap the killed process. It returns the
// restarted main PID and the window in which the killed process served.
func (d *sdDemo) killNewMain(r *load.Runner, single time.Duration) (restarted int, k killedMain) {
	t := d.t
	t.Helper()
	if out, code := d.reload(); code != 0 {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	victim := d.mainPID()
	d.waitSingle(single)
	k.before = openWindow(r, "the main process before the kill", victim)
	k.before.close(t, r)
	host := d.systemdChild(victim)
	k.held, k.at = killCounted(t, host)
	restarted = d.waitRestarted(30*time.Second, victim)
	d.waitReaped(host, 10*time.Second)
	return restarted, k
}

// killedMain is what killNewMain's kill left for checkAfterKill.
type killedMain struct {
	before *window   // the killed process serving the load
	held   int       // connections it held when it was killed
	at     time.Time // when it was killed
}

// checkAfterKill checks that the restarted service upgrades as before under the
// load r, stops the load, and checks that only requests in flight in the killed
// process failed; windows are the test's own windows after the kill.
func (d *sdDemo) checkAfterKill(r *load.Runner, k killedMain, windows ...*window) {
	t := d.t
	t.Helper()
	d.checkNextReload()
	next := openWindow(r, "the generation after the next reload", d.mainPID())
	next.close(t, r)
	res := r.Stop()
	checkLoadAfterKill(t, res, k.held, k.at)
	checkWindows(t, res, append(append([]*window{k.before}, windows...), next))
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

// execStatus parses the fields of an Exec*= property of systemctl show, e.g.
// "{ path=/bin/x ; argv[]=x ; ... ; pid=51 ; code=exited ; status=0 }", into a map
// (code, status, pid, ...).
func execStatus(prop string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Split(strings.Trim(prop, "{} \n"), " ; ") {
		if k, v, ok := strings.Cut(strings.TrimSpace(f), "="); ok {
			m[k] = v
		}
	}
	return m
}

// lineIndex returns the index of the first console line containing every substring,
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
// build that never becomes ready): `systemctl reload` fails, with the death noticed
// as such (cause=exited) before the upgrade timeout the test set; the unit stays
// active with the old main PID; systemd, the new process's parent, reaps it; no
// request fails; the next reload works.
func TestSystemdKillNewBeforeReady(t *testing.T) {
	hang := buildVariant(t, "testdata/brokendemo", "hang")
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		const upgradeTimeout = 30 * time.Second
		d := startSystemd(t, v, "", "-upgrade-timeout "+upgradeTimeout.String())
		main := d.answer()
		good := filepath.Join(d.bin, "handover-demo")
		saved := filepath.Join(d.sd.Dir(), "handover-demo.good")
		copyFile(t, good, saved, 0o755)
		copyFile(t, hang, good, 0o755)
		r := startLoad(t, d.addr, 0.5)
		w := openWindow(r, "the old main during the failed reload", main)
		reloaded := time.Now()
		reload := d.reloadAsync()
		// Kill it once it holds the sockets (it logged its start, as generation 2).
		started := d.waitEvent(0, 10*time.Second, "start", "gen=2")
		child := d.systemdChild(started.Int("pid"))
		start := time.Now()
		if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var res ctlResult
		select {
		case res = <-reload:
		case <-time.After(upgradeTimeout + 10*time.Second): // hang guard
			t.Fatal("systemctl reload did not return")
		}
		returned := time.Now()
		if res.code == 0 {
			t.Errorf("systemctl reload succeeded although the new generation was killed:\n%s", res.out)
		}
		// Noticed as a death, not at the upgrade timeout.
		// (The new process is systemd's child, not the old main's: its exit status
		// is systemd's to read, so err= cannot say how it ended.)
		got := d.waitEvent(0, 5*time.Second, "upgrade_failed", logs.KV("pid", main))
		failedUpgrade{causes: []string{"exited"}}.check(t, "killed before ready", got)
		if got.Int("child") != started.Int("pid") {
			t.Errorf("upgrade_failed child=%d, want the killed %d", got.Int("child"), started.Int("pid"))
		}
		if !returned.Before(reloaded.Add(upgradeTimeout)) {
			t.Errorf("systemctl reload returned after the upgrade timeout (%v) the test set", upgradeTimeout)
		}
		d.waitReaped(child, 10*time.Second)
		d.checkState(main)
		if got := d.answer(); got != main {
			t.Errorf("answered by %d, want the old main %d", got, main)
		}
		if ps := d.demoProcesses(); len(ps) != 1 {
			t.Errorf("demo processes %s, want only the old main", describe(ps))
		}
		w.close(t, r)
		copyFile(t, saved, good, 0o755)
		d.checkNextReload()
		res2 := r.Stop()
		checkLoad(t, res2)
		checkWindows(t, res2, []*window{w})
		d.checkConsole()
		t.Logf("systemctl reload failed %s after the kill: %s", returned.Sub(start).Round(time.Millisecond), strings.TrimSpace(res.out))
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
		// The load runs from before the reload to after the next one: a drain that
		// loses requests fails the test too.
		r := startLoad(t, d.addr, 0.5)
		const nSlow = 4
		// Still in flight when systemd, having seen the kill, stops the unit.
		slow := d.slowRequests(old, nSlow, 3000)
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		victim := d.mainPID()
		w := openWindow(r, "the new main before the kill", victim)
		w.close(t, r)
		host := d.systemdChild(victim)
		held, killed := killCounted(t, host)
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
		d.waitReaped(host, 10*time.Second)
		after := openWindow(r, "the restarted service", restarted)
		after.close(t, r)
		for i := 0; i < nSlow; i++ {
			if s := <-slow; s.kind != rawhttp.OK || s.pid != old {
				t.Errorf("a request in flight in the draining old generation: %v, answered by %d (%v)", s.kind, s.pid, s.err)
			}
		}
		ev := d.events()
		if ev.Count("stop_ignored", logs.KV("pid", old)) != 1 {
			t.Errorf("the old generation did not log systemd's SIGTERM during its drain (event=stop_ignored)")
		}
		// Lines of one file appended by several processes are in the order written.
		exited, ok1 := ev.Last("exit", logs.KV("pid", old))
		started, ok2 := ev.Last("start", logs.KV("pid", restarted))
		if !ok1 || !ok2 || started.N < exited.N {
			t.Errorf("the restarted service (log line %d) should start after the old generation exits (log line %d)", started.N, exited.N)
		}
		// systemd restarted the unit once, because its main process died.
		if got := d.show("NRestarts"); got != "1" {
			t.Errorf("NRestarts=%s, want 1", got)
		}
		d.checkState(restarted)
		d.checkNextReload()
		next := openWindow(r, "the generation after the next reload", d.mainPID())
		next.close(t, r)
		res := r.Stop()
		checkLoadAfterKill(t, res, held, killed)
		checkWindows(t, res, []*window{w, after, next})
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
		invocation := d.show("InvocationID")
		d.systemdChild(old)
		if err := syscall.Kill(oldHost, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < nSlow; i++ {
			select {
			case s := <-slow:
				if s.kind != rawhttp.Reset && s.kind != rawhttp.EOF {
					t.Errorf("a request in flight in the killed old generation: %v (%v), want a reset or EOF", s.kind, s.err)
				}
			case <-time.After(20 * time.Second): // hang guard; the requests' own end is 20s away
				t.Fatal("a request in flight in the killed old generation did not fail")
			}
		}
		d.waitReaped(oldHost, 10*time.Second)
		w := openWindow(r, "the new main after the kill", cur)
		w.close(t, r) // the load runs on
		res := r.Stop()
		checkLoad(t, res)
		checkWindows(t, res, []*window{w})
		if _, _, last := r.Progress(); last != cur {
			t.Errorf("the last answer came from %d, want the new main %d", last, cur)
		}
		d.checkState(cur)
		// systemd did not react to the death of a process that is not the main one:
		// no restart, the same invocation of the unit, nothing failed.
		if got := d.show("NRestarts"); got != "0" {
			t.Errorf("NRestarts=%s, want 0", got)
		}
		if got := d.show("InvocationID"); got != invocation {
			t.Errorf("InvocationID=%s, was %s: systemd started the unit again", got, invocation)
		}
		if got := d.show("Result"); got != "success" {
			t.Errorf("Result=%s, want success", got)
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
	ev := d.events()
	started = ev.Count("upgrade_start")
	refused = ev.Count("upgrade_refused")
	handed := ev.Where("handed_over")
	failed := ev.Count("upgrade_failed")
	ready := ev.Count("ready")
	if started == 0 || len(handed) != started || failed != 0 || ready != len(handed)+1 {
		d.t.Errorf("%d upgrades started, %d handed over, %d failed, %d generations ready; want every upgrade to hand over to exactly one new generation", started, len(handed), failed, ready)
	}
	pid, gen := d.answerGen()
	d.checkState(pid)
	if gen != len(handed)+1 || (len(handed) > 0 && handed[len(handed)-1].Int("to") != pid) {
		d.t.Errorf("generation %d (pid %d) serves after %d handovers (the last to %v)", gen, pid, len(handed), logs.Ints(handed, "to"))
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
		// Upgrades 50ms apart each leave a generation draining the load's slow
		// requests (300ms): more than MaxDraining's default (3) may drain at once,
		// and the oldest would cut its requests (TestMaxDraining's subject).
		d := startSystemd(t, v, "kill-reload", "-drain-timeout 5s -max-draining 20")
		first := d.answer()
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
			ev := d.events()
			st, _ := d.sd.Show(unit, "SubState")
			return st == "running" && ev.Count("upgrade_start") == ev.Count("handed_over")+ev.Count("upgrade_failed")
		}, 20*time.Second, "the last upgrade to finish"); err != nil {
			t.Fatal(err)
		}
		started, refused := d.stormSettle()
		res := r.Stop()
		checkLoad(t, res)
		// The generations in between may live for a few milliseconds: only the first
		// and the last are sure to have served the load.
		checkAnswered(t, res, "generation", first, d.mainPID())
		// The ten sent at once to one process may merge in the kernel (a standard
		// signal pending is not queued twice: signal(7)), so each signal sent is an
		// upgrade started, a refusal, or merged: at most 20 of the first two.
		if started+refused+gone > 20 || started < 2 {
			t.Errorf("%d upgrades, %d refusals and %d vanished processes for 20 signals", started, refused, gone)
		}
		for _, l := range d.events().Where("upgrade_refused") {
			if r := l.Get("reason"); r != "in_progress" && r != "handed_over" && r != "not_ready" {
				t.Errorf("a signal refused for reason=%s: %s", r, l)
			}
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
		first := d.answer()
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
		res := r.Stop()
		checkLoad(t, res)
		// The generations in between may live for a few milliseconds: only the first
		// and the last are sure to have served the load.
		checkAnswered(t, res, "generation", first, d.mainPID())
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
// systemd STOPPING=1 and drains; the unit is inactive before the drain deadline the
// test set, its main process having exited 0 by itself (Result=success: no SIGKILL
// at TimeoutStopSec), `handover reload` (ExecReload=) having exited 0 on systemd's
// SIGTERM, and nothing left in its cgroup.
func TestSystemdStopDuringUpgrade(t *testing.T) {
	hang := buildVariant(t, "testdata/brokendemo", "hang")
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		// At debug level systemd logs every notification it gets.
		t.Setenv("HANDOVER_SDNS_LOG_LEVEL", "debug")
		const drain = 10 * time.Second
		d := startSystemd(t, v, "", "-upgrade-timeout 30s -drain-timeout "+drain.String())
		main := d.answer()
		copyFile(t, hang, filepath.Join(d.bin, "handover-demo"), 0o755)
		reload := d.reloadAsync()
		// The new generation has taken its sockets once it logs its start.
		child := d.waitEvent(0, 10*time.Second, "start", "gen=2").Int("pid")
		start := time.Now()
		if out, code, err := d.sd.Ctl("stop", unit); err != nil || code != 0 {
			t.Fatalf("systemctl stop: %v %d\n%s", err, code, out)
		}
		took := time.Since(start)
		if took > drain {
			t.Errorf("the stop ended after the drain deadline (%v) the test set", drain)
		}
		if res := <-reload; res.code == 0 {
			t.Errorf("the reload interrupted by the stop succeeded:\n%s", res.out)
		}
		if st := d.show("ActiveState"); st != "inactive" {
			t.Errorf("after stop the unit is %s", st)
		}
		d.checkExitedByItself()
		// ExecReload= got SIGTERM too and exited 0, so that the unit is not failed.
		if got := execStatus(d.show("ExecReload")); got["code"] != "exited" || got["status"] != "0" {
			t.Errorf("ExecReload's last run: %v; want it to have exited 0 (code=exited, status=0)", got)
		}
		if ps, _ := d.sd.Processes(); len(ps) != 1 {
			t.Errorf("processes left in the namespace besides systemd: %s", describe(ps))
		}
		if n := d.events().Count("upgrade_failed", "cause=abandoned", logs.KV("pid", main), logs.KV("child", child)); n != 1 {
			t.Errorf("the old main did not abandon the upgrade (event=upgrade_failed cause=abandoned child=%d):\n%s", child, tail(d.sd.ReadLog("demo.log"), 10))
		}
		// STOPPING=1 comes once, from the main process, after systemd began the stop;
		// the abandoned generation, never the main one, sends nothing. systemd's
		// debug log on its console is the only record of the notifications it got
		// (no property of the unit keeps them), so these checks read it; its lines
		// are matched as systemd 252 and 254 write them, and the test fails (rather
		// than passing) if that wording changes: each check needs a line to be found.
		console := d.sd.ConsoleLog()
		if n := strings.Count(console, "STOPPING=1"); n != 1 {
			t.Errorf("systemd got STOPPING=1 %d times, want once", n)
		}
		stopping := lineIndex(console, fmt.Sprintf("Got notification message from PID %d (STOPPING=1", main))
		began := lineIndex(console, "Changed reload -> stop-sigterm")
		if stopping < 0 || began < 0 || stopping < began {
			t.Errorf("STOPPING=1 from the main process %d (console line %d) should follow the start of the stop (line %d)", main, stopping, began)
		}
		if lineIndex(console, "Got notification message from PID ") < 0 {
			t.Errorf("no notification in systemd's debug log: cannot tell which process sent what")
		} else if lines := d.sd.Grep(fmt.Sprintf(`Got notification message from PID %d\b`, child)); len(lines) > 0 {
			t.Errorf("the abandoned generation notified systemd:\n%s", strings.Join(lines, "\n"))
		}
		d.checkConsoleDebug()
		t.Logf("systemctl stop during an upgrade took %s", took.Round(time.Millisecond))
	})
}

// TestSystemdWatchdog: with WatchdogSec=2, the service survives five reloads and a
// quiet spell of more than three watchdog periods (each new main takes over the
// pings: WATCHDOG_PID names the old process and is rewritten): same invocation of the
// unit, no restart, every generation serving the load. A main process that stops
// pinging (SIGSTOP) is caught: the unit fails with Result=watchdog, systemd (its
// parent) kills and reaps it and restarts the service.
func TestSystemdWatchdog(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-drain-timeout 5s")
		// RestartSec=1s: the failed state lasts long enough to be read (systemctl show)
		// before the restart resets Result.
		d.editService(func(s string) string {
			s = strings.Replace(s, "[Service]\n", "[Service]\nWatchdogSec=2\n", 1)
			return strings.Replace(s, "RestartSec=100ms", "RestartSec=1s", 1)
		})
		prev := d.answer()
		if got := d.show("WatchdogUSec"); got != "2s" {
			t.Fatalf("WatchdogUSec=%s, want 2s", got)
		}
		if got := d.show("RestartUSec"); got != "1s" {
			t.Fatalf("RestartUSec=%s, want 1s", got)
		}
		invocation := d.show("InvocationID")
		r := startLoad(t, d.addr, 0.5)
		windows := []*window{openWindow(r, "generation 1", prev)}
		for i := 0; i < 5; i++ {
			windows[len(windows)-1].close(t, r)
			if out, code := d.reload(); code != 0 {
				t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
			}
			pid := d.mainPID()
			if pid == prev {
				t.Fatalf("reload %d: MainPID still %d", i+1, pid)
			}
			prev = pid
			windows = append(windows, openWindow(r, fmt.Sprintf("generation %d", i+2), pid))
		}
		// More than three watchdog periods with the last generation.
		pace(6500 * time.Millisecond)
		windows[len(windows)-1].close(t, r)
		res := r.Stop()
		checkLoad(t, res)
		checkWindows(t, res, windows)
		d.checkState(prev)
		if got, res := d.show("InvocationID"), d.show("Result"); got != invocation || res != "success" {
			t.Fatalf("after the handovers: InvocationID=%s (was %s), Result=%s: the watchdog restarted or failed the unit", got, invocation, res)
		}
		if got := d.show("NRestarts"); got != "0" {
			t.Errorf("NRestarts=%s, want 0", got)
		}
		// A main process that stops pinging.
		stopped := d.systemdChild(prev)
		if err := syscall.Kill(stopped, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		var props map[string]string
		if err := proc.WaitFor(func() bool {
			props = d.showAll("Result", "SubState")
			return props["Result"] != "success" || props["SubState"] == "auto-restart"
		}, 15*time.Second, "the watchdog to fail the unit"); err != nil {
			t.Fatal(err)
		}
		if props["Result"] != "watchdog" {
			t.Errorf("Result=%s (SubState=%s), want watchdog", props["Result"], props["SubState"])
		}
		restarted := d.waitRestarted(15*time.Second, prev)
		d.waitReaped(stopped, 10*time.Second)
		if got := d.show("NRestarts"); got != "1" {
			t.Errorf("NRestarts=%s, want 1", got)
		}
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
		// The load runs from before the reload to after the next one: a drain that
		// loses requests fails the test too.
		r := startLoad(t, d.addr, 0.5)
		restarted, k := d.killNewMain(r, 15*time.Second)
		after := openWindow(r, "the restarted service", restarted)
		after.close(t, r)
		// The restarted process got the socket back from systemd's fd store.
		if st := d.checkListenerFrom("systemd"); st.PID != restarted {
			t.Errorf("status from pid %d, want the restarted %d", st.PID, restarted)
		}
		d.checkState(restarted)
		d.checkAfterKill(r, k, after)
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
			// The file system refuses (EACCES): the service never sees the peer.
			if out, code := asNobody(cmd, "-control", d.ctl); code == 0 || !strings.Contains(out, syscall.EACCES.Error()) {
				t.Errorf("handover %s as nobody: exit %d\n%s", cmd, code, out)
			}
		}
		if n := d.events().Count("control_refused"); n != 0 {
			t.Errorf("the service saw %d peers that the file modes should have stopped", n)
		}
		// Open the file-system door: the service itself must still refuse.
		if out, code, err := d.sd.Exec("chmod", "0755", "/run/handover-demo"); err != nil || code != 0 {
			t.Fatalf("chmod: %v\n%s", err, out)
		}
		if out, code, err := d.sd.Exec("chmod", "0666", d.ctl); err != nil || code != 0 {
			t.Fatalf("chmod: %v\n%s", err, out)
		}
		for _, cmd := range []string{"status", "reload"} {
			if out, code := asNobody(cmd, "-control", d.ctl); code == 0 {
				t.Errorf("handover %s as nobody through an open socket: exit %d\n%s", cmd, code, out)
			}
		}
		// The service refused both by the peer's credentials, and said so.
		ev := d.events()
		if n := ev.Count("control_refused", "uid=65534", logs.KV("pid", main)); n != 2 {
			t.Errorf("%d refusals of uid 65534 logged (event=control_refused), want 2:\n%s", n, tail(d.sd.ReadLog("demo.log"), 10))
		}
		if ev.Count("upgrade_start") != 0 {
			t.Errorf("a refused peer started an upgrade")
		}
		d.checkState(main)
		if st, err := d.status(); err != nil || st.PID != main || st.State != "serving" {
			t.Errorf("handover status as root: %+v, %v", st, err)
		}
		d.checkConsole()
	})
}
