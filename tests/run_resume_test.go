package tests

// `handover run` and issue 11: the last good build kept open and started again when a
// new build dies after taking over; several old children draining at once, bounded by
// -max-draining; the record of every upgrade in handover status.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// inodeOfPath returns the device and inode of the file at path (following symlinks,
// /proc/PID/exe included).
func inodeOfPath(t testing.TB, path string) [2]uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return [2]uint64{st.Dev, st.Ino}
}

// fdsOn lists pid's descriptors that point at path (whatever its state on disk).
func fdsOn(pid int, path string) []string {
	var out []string
	for _, f := range fdTargets(pid) {
		_, target, _ := strings.Cut(f, "->")
		if strings.TrimSuffix(target, " (deleted)") == path {
			out = append(out, f)
		}
	}
	return out
}

// recordTo returns the upgrade record whose new child is pid.
func recordTo(st graceful.Status, pid int) *graceful.Upgrade {
	for i := range st.Upgrades {
		if st.Upgrades[i].To == pid {
			return &st.Upgrades[i]
		}
	}
	return nil
}

// recordFrom returns the last upgrade record whose old child is pid.
func recordFrom(st graceful.Status, pid int) *graceful.Upgrade {
	for i := len(st.Upgrades) - 1; i >= 0; i-- {
		if st.Upgrades[i].From == pid {
			return &st.Upgrades[i]
		}
	}
	return nil
}

// statusText runs `handover status` (text) against the master.
func (m *master) statusText() string {
	m.t.Helper()
	out, err := exec.Command(proc.Binary(m.t, handoverPkg), "status", "-control", m.ctl).CombinedOutput()
	if err != nil {
		m.t.Fatalf("handover status: %v\n%s", err, out)
	}
	return string(out)
}

// TestRunLastGoodBuild is issue 11's measured case under `handover run`: a new build
// takes over and dies a second later, while the old child drains a long request.
// The master starts the last good build from the descriptor it kept, although the
// file on disk is now the bad build, which it does not start again. A steady client
// (one request every 100 ms for 12 s, a new connection each, never retrying) sees no
// failure; the long request completes on the old child; `handover reload` (with
// -settle) exits 1 naming the death; status shows the died upgrade, the replacement,
// and the child running the last good build; the next upgrade takes PROG from disk.
func TestRunLastGoodBuild(t *testing.T) {
	starts := filepath.Join(t.TempDir(), "starts")
	app := filepath.Join(t.TempDir(), "app")
	good := proc.Binary(t, demoPkg)
	copyFile(t, good, app, 0o755)
	goodFile := inodeOfPath(t, app)
	bad := buildVariant(t, "testdata/brokendemo", "serve-die")
	m := startMaster(t, masterSpec{prog: []string{app}, drain: 30 * time.Second,
		flags: []string{"-settle", "3s"}, env: []string{"BROKENDEMO_STARTS=" + starts}})
	old := m.status().Child
	long := slowOn(t, m.addr, old, "/slow?ms=9000", 30*time.Second)
	copyFile(t, bad, app, 0o755)

	answers := probeEvery(m.addr, 100*time.Millisecond, 12*time.Second)

	start := time.Now()
	out, code := m.reload()
	t.Logf("handover reload exited %d after %v:\n%s", code, time.Since(start).Round(time.Millisecond), out)
	if code != 1 || !strings.Contains(out, "died") || !strings.Contains(out, "after taking over (exit status 1)") ||
		!strings.Contains(out, "last good build") || !strings.Contains(out, "dying after serving for a second") {
		t.Errorf("handover reload: exit %d, want 1 with the death, the last good build and the bad build's stderr:\n%s", code, out)
	}
	var st graceful.Status
	if err := proc.WaitFor(func() bool {
		st = m.status()
		return st.State == "serving" && st.Child != old && st.Generation == 3
	}, 10*time.Second, "the last good build to serve"); err != nil {
		t.Fatalf("%v: %+v", err, st)
	}
	b, _ := os.ReadFile(starts)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	badPID, _ := strconv.Atoi(strings.Fields(lines[0] + " 0")[0])
	cur := st.Child

	// The child serving now runs the good build, from the kept descriptor: not the
	// file at the path, which is the bad build; it did not inherit the descriptor.
	if got := inodeOfPath(t, fmt.Sprintf("/proc/%d/exe", cur)); got != goodFile {
		t.Errorf("child %d runs %v, want the good build %v", cur, got, goodFile)
	}
	if inodeOfPath(t, app) == goodFile {
		t.Fatalf("the file on disk is still the good build")
	}
	if fds := fdsOn(cur, app); len(fds) > 0 {
		t.Errorf("child %d inherited the kept build's descriptor: %v", cur, fds)
	}
	if resp, err := rawhttp.Get(m.addr, "/", 5*time.Second); err != nil || resp.PID() != cur || !strings.Contains(string(resp.Body), "message=hello") {
		t.Errorf("an answer now: %v, from %d: %q; want the good build's from %d", err, respPID(resp), respBody(resp), cur)
	}

	as := <-answers
	failed, seen := tally(as)
	for _, a := range as {
		if a.err == nil && a.pid == cur && !strings.Contains(a.body, "message=hello") {
			t.Errorf("the last good build answered %q", a.body)
		}
	}
	t.Logf("%d requests: answered by pid %v; old %d, bad build %d, last good build %d", len(as), seen, old, badPID, cur)
	if len(as) < 60 {
		t.Errorf("only %d requests in 12 s; the client loop did not run", len(as))
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed:\n%s", len(failed), len(as), strings.Join(failed, "\n"))
	}
	if seen[badPID] == 0 || seen[cur] == 0 {
		t.Errorf("answers by pid %v: want the bad build %d (before it died) and the last good build %d", seen, badPID, cur)
	}
	if s := <-long; s.err != nil || s.resp.Status != 200 || s.resp.PID() != old {
		t.Errorf("the long request: %v, status %d from %d; want 200 from %d", s.err, statusOf(s.resp), respPID(s.resp), old)
	}
	if len(lines) != 1 || !strings.HasSuffix(lines[0], " serve-die") {
		t.Errorf("the bad build started %d times, want once:\n%s", len(lines), b)
	}
	if proc.State(badPID) != "" {
		t.Errorf("the bad build %d was not reaped (state %s)", badPID, proc.State(badPID))
	}
	if err := waitGone(old, 5*time.Second); err != nil {
		t.Errorf("the old child: %v", err)
	}

	// What handover status says: the died upgrade (with the old child's drain), the
	// replacement, the child's executable as the last good build.
	st = m.status()
	died, repl := recordTo(st, badPID), recordTo(st, cur)
	switch {
	case died == nil || repl == nil:
		t.Errorf("no record of the upgrade to %d or of the replacement %d: %+v", badPID, cur, st.Upgrades)
	default:
		if died.Outcome != "died" || died.Reason != "died" || died.From != old || died.Trigger != "control socket" || died.Generation != 2 ||
			!strings.Contains(died.Stderr, "dying after serving") || died.HandoverSeconds <= 0 || died.HandoverSeconds > 5 {
			t.Errorf("the died upgrade's record: %+v", *died)
		}
		if !died.Drained || died.DrainSeconds < 5 || died.DrainSeconds > 12 || died.DrainKilled != "" {
			t.Errorf("the old child's drain (a 9 s request) in the record: %+v", *died)
		}
		if repl.Trigger != "replacement" || repl.Outcome != "ok" || repl.From != badPID || repl.Generation != 3 || repl.HandoverSeconds > 2 {
			t.Errorf("the replacement's record: %+v", *repl)
		}
		t.Logf("records: died %+v; replacement %+v", *died, *repl)
	}
	if !strings.Contains(st.ChildExecutable, app) || !strings.Contains(st.ChildExecutable, "last good build") || !strings.Contains(st.ChildExecutable, "is another") {
		t.Errorf("status child_executable %q: want %s as the last good build, replaced on disk", st.ChildExecutable, app)
	}
	if !strings.Contains(st.LastError, "died") {
		t.Errorf("status last_error %q", st.LastError)
	}
	text := m.statusText()
	if textLines(text, "control socket", "died", fmt.Sprintf("%d→%d", old, badPID)) != 1 ||
		textLines(text, "replacement", "ok", fmt.Sprintf("%d→%d", badPID, cur)) != 1 || !strings.Contains(text, "last good build") {
		t.Errorf("handover status does not show the died upgrade, the replacement and the last good build:\n%s", text)
	}
	log := m.log()
	if ev := logs.Parse(log); ev.Count("upgrade_died", logs.KV("child", badPID)) != 1 ||
		ev.Count("child_started", logs.KV("child", cur), "trigger=replacement", "build=last_good") != 1 {
		t.Errorf("the master's log lacks upgrade_died for %d or the replacement %d from the last good build:\n%s", badPID, cur, tail(log, 20))
	}

	// The next upgrade, asked for by the operator, takes PROG from disk.
	copyFile(t, good, app, 0o755)
	if out, code := m.reload(); code != 0 {
		t.Fatalf("reload with the good build on disk: exit %d\n%s", code, out)
	}
	st = m.status()
	if got, want := inodeOfPath(t, fmt.Sprintf("/proc/%d/exe", st.Child)), inodeOfPath(t, app); got != want || st.LastError != "" {
		t.Errorf("after the next upgrade child %d runs %v, want the file on disk %v; status %+v", st.Child, got, want, st)
	}
	if r := recordTo(st, st.Child); r == nil || r.Outcome != "ok" || r.From != cur {
		t.Errorf("the next upgrade's record: %+v", r)
	}
	m.waitSettled(15 * time.Second)
	checkStoppedClean(t, m)
}

// TestRunScriptLastGoodBuild: for a #! script the build the master keeps is its
// interpreter (here /usr/bin/env, which finds python3); a restart after a crash runs
// that descriptor with the script's path, so the script itself is read from disk
// again (the documented limit): an edit deployed before the crash is what answers.
func TestRunScriptLastGoodBuild(t *testing.T) {
	needTool(t, "python3", "/usr/bin/python3")
	script := filepath.Join(t.TempDir(), "server.py")
	src, err := os.ReadFile(pythonServer)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(src), "#!/usr/bin/env python3\n") {
		t.Fatalf("%s does not start with #!/usr/bin/env python3", pythonServer)
	}
	writeFile(t, script, src, 0o755)
	m := startMaster(t, masterSpec{prog: []string{script}})
	st := m.status()
	first := st.Child
	if want := "/usr/bin/env (the interpreter of " + script + ")"; !strings.HasPrefix(st.ChildExecutable, want) {
		t.Errorf("child_executable %q, want %q", st.ChildExecutable, want)
	}
	writeFile(t, script, []byte(strings.ReplaceAll(string(src), "lang=python", "lang=edited")), 0o755)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitFor(func() bool {
		st = m.status()
		return st.State == "serving" && st.Child != first && st.Child != 0
	}, 10*time.Second, "the restarted child"); err != nil {
		t.Fatal(err)
	}
	resp, err := rawhttp.Get(m.addr, "/", 5*time.Second)
	if err != nil || resp.PID() != st.Child || !strings.Contains(string(resp.Body), "lang=edited") {
		t.Errorf("the restarted script answered %v %q from %d; want the edited script from %d", err, respBody(resp), respPID(resp), st.Child)
	}
	if st.Restarts != 1 || logs.Parse(m.log()).Count("child_started", "trigger=restart", "build=last_good") != 1 {
		t.Errorf("status %+v; the restart was not from the last good build", st)
	}
	if got, want := inodeOfPath(t, fmt.Sprintf("/proc/%d/exe", st.Child)), inodeOfPath(t, fmt.Sprintf("/proc/%d/exe", m.host)); got == want {
		t.Errorf("the restarted child runs the master's binary: the shim did not exec")
	}
	if fds := fdsOn(st.Child, "/usr/bin/env"); len(fds) > 0 {
		t.Errorf("the restarted child inherited the kept descriptor: %v", fds)
	}
	checkStoppedClean(t, m)
}

// drainClient is what was open on one child when it was replaced.
type drainClient struct {
	child  int
	stream <-chan inflight
	ws     *wsClient
	wsDone <-chan time.Time
}

// openOnChild opens a /stream (path) and a /ws on the serving child pid.
func openOnChild(t *testing.T, addr string, pid int, path string) drainClient {
	t.Helper()
	d := drainClient{child: pid}
	d.stream = streamOn(t, addr, path)
	d.ws, d.wsDone = dialWS(t, addr, "/ws")
	if d.ws.pid != pid {
		t.Fatalf("/ws reached %d, want the serving child %d", d.ws.pid, pid)
	}
	return d
}

// backToBack opens a stream and a websocket on the serving child, then asks for an
// upgrade, n times with pause between them, under the 16-client load. After each
// upgrade it checks the master's processes: at most limit old children alive (within
// a second of the upgrade: a child killed for -max-draining takes a moment to die),
// and no more during the pause. With room, it first waits (if need be) until fewer
// than limit old children are alive, so that no upgrade needs a kill. It returns what
// was open on each replaced child and the most old children seen at once.
func backToBack(t *testing.T, m *master, n, limit int, room bool, path string, pause time.Duration) (opened []drainClient, most int) {
	t.Helper()
	oldAlive := func(serving int) int {
		k := 0
		for _, p := range proc.Children(m.host) {
			if p != serving && proc.Alive(p) {
				k++
			}
		}
		return k
	}
	// Old children not reaped yet, as the master counts them.
	oldPresent := func(serving int) int {
		return len(slices.DeleteFunc(proc.Children(m.host), func(p int) bool { return p == serving }))
	}
	for i := 1; i <= n; i++ {
		st := m.status()
		if room {
			if err := proc.WaitFor(func() bool { return oldPresent(st.Child) < limit }, 5*time.Second, "room for one more old child"); err != nil {
				t.Fatal(err)
			}
		}
		opened = append(opened, openOnChild(t, m.addr, st.Child, path))
		out, code := m.reload()
		if code != 0 {
			t.Fatalf("reload %d: exit %d\n%s", i, code, out)
		}
		cur := m.status().Child
		if err := proc.WaitFor(func() bool { return oldAlive(cur) <= limit }, time.Second, "at most -max-draining old children"); err != nil {
			t.Errorf("after reload %d: %v: %d old children alive, max %d", i, err, oldAlive(cur), limit)
		}
		for end := time.Now().Add(pause); time.Now().Before(end); pace(20 * time.Millisecond) {
			k := oldAlive(cur)
			if k > limit {
				t.Errorf("after reload %d: %d old children alive at once, max %d", i, k, limit)
			}
			most = max(most, k)
		}
	}
	return opened, most
}

// checkWSBye checks that d's /ws said bye from its child and closed.
func checkWSBye(t *testing.T, i int, d drainClient) {
	t.Helper()
	select {
	case <-d.wsDone:
	case <-time.After(10 * time.Second):
		t.Errorf("child %d: /ws still open", i)
		return
	}
	if lines := d.ws.received(); len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], fmt.Sprintf("bye pid=%d ", d.child)) {
		t.Errorf("child %d (%d): /ws ended with %q, want a bye from it", i, d.child, lastN(lines, 3))
	}
}

// streamComplete reports whether s is a whole /stream answer of n lines from pid.
func streamComplete(s inflight, pid, n int) bool {
	return s.err == nil && s.resp != nil && s.resp.Status == 200 && s.resp.PID() == pid && len(s.lines) == n &&
		strings.HasPrefix(s.lines[n-1], fmt.Sprintf("%d/%d pid=%d ", n, n, pid))
}

// TestRunBackToBackUpgrades: five upgrades under `handover run`, under a second apart,
// while a /stream (2 s long) and a /ws are open on every child: old children drain
// side by side, three at once (-max-draining's default; never more, counted in /proc;
// each upgrade waits, if need be, for the fourth oldest to finish), every stream
// completes, every websocket gets the child's "bye", no request of the 16-client load
// fails, and nothing is killed early.
func TestRunBackToBackUpgrades(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}, drain: 20 * time.Second})
	r := startLoad(t, m.addr, 0.5)
	const lines = 11
	opened, most := backToBack(t, m, 5, 3, true, fmt.Sprintf("/stream?n=%d&interval=200", lines), 600*time.Millisecond)
	for i, d := range opened {
		var s inflight
		select {
		case s = <-d.stream:
		case <-time.After(10 * time.Second):
			t.Fatalf("child %d: the stream did not end", i+1)
		}
		if !streamComplete(s, d.child, lines) {
			t.Errorf("child %d (%d): stream %v, %d lines, last %q; want %d lines from it", i+1, d.child, s.err, len(s.lines), lastN(s.lines, 1), lines)
		}
		checkWSBye(t, i+1, d)
	}
	checkLoad(t, r.Stop())
	m.waitSettled(10 * time.Second)
	t.Logf("at most %d old children drained at once", most)
	if n := logs.Parse(m.log()).Count("too_many_draining"); n != 0 {
		t.Errorf("%d old children killed for -max-draining; none should have been", n)
	}
	st := m.status()
	if len(st.Upgrades) != 5 {
		t.Fatalf("%d upgrade records, want 5: %+v", len(st.Upgrades), st.Upgrades)
	}
	for i, d := range opened {
		rec := recordFrom(st, d.child)
		if rec == nil || rec.Outcome != "ok" || rec.Generation != i+2 || !rec.Drained || rec.DrainKilled != "" || rec.DrainSeconds < 0.5 || rec.DrainSeconds > 5 {
			t.Errorf("upgrade %d from %d: record %+v; want ok, drained by itself in 0.5-5 s", i+1, d.child, rec)
			continue
		}
		t.Logf("upgrade %d at %s: handover %.1f ms, the old child drained in %.0f ms", i+1, rec.Start.Format("15:04:05.000"), rec.HandoverSeconds*1000, rec.DrainSeconds*1000)
	}
	checkStoppedClean(t, m)
}

// TestRunMaxDraining: the same five upgrades with -max-draining 2 and streams (7.5 s)
// outliving them: each upgrade that makes three old children drain kills the oldest
// at once (event=too_many_draining, child= the oldest), whose stream is the one cut;
// the two newest drain to the end of their streams; every websocket got its bye at
// the stop; no request of the load fails; the records say which drains were cut.
func TestRunMaxDraining(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}, drain: 20 * time.Second, flags: []string{"-max-draining", "2"}})
	r := startLoad(t, m.addr, 0.5)
	const lines = 16
	opened, most := backToBack(t, m, 5, 2, false, fmt.Sprintf("/stream?n=%d&interval=500", lines), 800*time.Millisecond)
	if st := m.status(); st.OlderDraining != 2 {
		t.Errorf("status older_draining %d, want 2", st.OlderDraining)
	}
	killed := logs.Ints(logs.Parse(m.log()).Where("too_many_draining"), "child")
	var want []int
	for _, d := range opened[:3] {
		want = append(want, d.child)
	}
	if !slices.Equal(killed, want) || logs.Parse(m.log()).Count("too_many_draining", "max=2", "draining=3") != 3 {
		t.Errorf("children killed for -max-draining %v, want the three oldest %v in order (max=2, draining=3)", killed, want)
	}
	for i, d := range opened {
		var s inflight
		select {
		case s = <-d.stream:
		case <-time.After(15 * time.Second):
			t.Fatalf("child %d: the stream did not end", i+1)
		}
		complete := streamComplete(s, d.child, lines)
		t.Logf("child %d (%d): stream of %d lines ended at %s: %v", i+1, d.child, len(s.lines), s.at.Format("15:04:05.000"), s.err)
		if i < 3 && complete {
			t.Errorf("child %d (%d) was killed for -max-draining but its stream completed", i+1, d.child)
		}
		if i >= 3 && !complete {
			t.Errorf("child %d (%d): stream %v, %d lines; want all %d", i+1, d.child, s.err, len(s.lines), lines)
		}
		checkWSBye(t, i+1, d)
	}
	checkLoad(t, r.Stop())
	m.waitSettled(10 * time.Second)
	st := m.status()
	for i, d := range opened {
		rec := recordFrom(st, d.child)
		wantKilled := ""
		if i < 3 {
			wantKilled = "max_draining"
		}
		if rec == nil || rec.Outcome != "ok" || !rec.Drained || rec.DrainKilled != wantKilled {
			t.Errorf("upgrade %d from %d: record %+v; want drain_killed %q", i+1, d.child, rec, wantKilled)
		}
	}
	t.Logf("at most %d old children drained at once", most)
	checkStoppedClean(t, m)
}
