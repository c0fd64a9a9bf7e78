package tests

// `handover run`: the master that keeps one PID while its children (the demo, a
// Python server, a Node.js server) are upgraded, restarted and stopped; as PID 1 of a
// new PID namespace (a container's init) and as an ordinary process under the test.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
	"golang.org/x/sys/unix"
)

// Test servers not written with handover.
const (
	pythonServer = "testdata/run/server.py"
	nodeServer   = "testdata/run/server.js"
)

// runPort returns a loopback address whose port, below 32768 (outside the ephemeral
// range), is free right now.
func runPort(t testing.TB) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000)))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free port below 32768")
	return ""
}

// needTool returns the path of a program the test needs (the first of paths that
// exists, else name in $PATH); it skips the test without it (fails under CI=true).
func needTool(t testing.TB, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		sdns.SkipOrFail(t, fmt.Errorf("%s is not installed: %w", name, err))
	}
	return p
}

// needNamespaces skips the test unless this process can make PID namespaces.
func needNamespaces(t testing.TB) string {
	t.Helper()
	unshare := needTool(t, "unshare", "/usr/bin/unshare")
	if out, err := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "--", "true").CombinedOutput(); err != nil {
		sdns.SkipOrFail(t, fmt.Errorf("cannot make a PID namespace (root needed): %v: %s", err, out))
	}
	return unshare
}

// master is a `handover run` under test.
type master struct {
	t       testing.TB
	dir     string
	addr    string // the -listen http= address
	ctl     string // the control socket
	pidfile string
	logPath string
	started int  // the PID the test started: unshare's, or the master's itself
	host    int  // the master's PID in the test's namespace
	ns      bool // PID 1 of a new PID namespace
	exited  bool
}

// masterSpec says how to start a master.
type masterSpec struct {
	ns      bool     // as PID 1 of a new PID namespace
	prog    []string // PROG [ARGS...]
	flags   []string // more flags for handover run
	env     []string // added to its environment
	drain   time.Duration
	control string // the control socket's path, default in the test's directory
	cwd     string // the master's working directory, also in $PWD; default its test directory
}

// startMaster starts `handover run` and waits until its first child serves.
func startMaster(t testing.TB, s masterSpec) *master {
	t.Helper()
	m := launchMaster(t, s)
	m.waitServing(20 * time.Second)
	return m
}

// launchMaster starts `handover run` without waiting for its child.
func launchMaster(t testing.TB, s masterSpec) *master {
	t.Helper()
	if s.drain == 0 {
		s.drain = 10 * time.Second
	}
	dir := t.TempDir()
	m := &master{t: t, dir: dir, addr: runPort(t), ctl: filepath.Join(dir, "control.sock"),
		pidfile: filepath.Join(dir, "master.pid"), logPath: filepath.Join(dir, "master.log"), ns: s.ns}
	if s.control != "" {
		m.ctl = s.control
	}
	argv := []string{proc.Binary(t, handoverPkg), "run", "-listen", "http=" + m.addr, "-control", m.ctl,
		"-pidfile", m.pidfile, "-drain-timeout", s.drain.String(), "-upgrade-timeout", "10s"}
	argv = append(append(append(argv, s.flags...), "--"), s.prog...)
	if s.ns {
		argv = append([]string{needNamespaces(t), "--pid", "--fork", "--mount-proc", "--kill-child", "--"}, argv...)
	}
	logf, err := os.Create(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	// TMPDIR: the master's notification socket directory, removed with the test's
	// directory even when the master is killed.
	cmd.Env = cleanEnv(append([]string{"TMPDIR=" + dir}, s.env...)...)
	cmd.Dir = dir
	if s.cwd != "" {
		cmd.Dir = s.cwd
		cmd.Env = append(cmd.Env, "PWD="+s.cwd)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.started = cmd.Process.Pid
	cmd.Process.Release()
	t.Cleanup(m.cleanup)
	m.host = m.started
	if s.ns {
		m.host = nsInit(t, m.started, "handover")
	}
	return m
}

// nsInit waits for the process unshare forked (PID 1 of the new namespace) to run
// comm, and returns its PID here.
func nsInit(t testing.TB, unshare int, comm string) int {
	t.Helper()
	var pid int
	err := proc.WaitFor(func() bool {
		kids := proc.Children(unshare)
		if len(kids) != 1 {
			return false
		}
		pid = kids[0]
		c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return strings.TrimSpace(string(c)) == comm
	}, 10*time.Second, "the namespace's first process")
	if err != nil {
		t.Fatal(err)
	}
	if got := nsPID(pid); got != 1 {
		t.Fatalf("pid %d is PID %d in its namespace, want 1", pid, got)
	}
	return pid
}

// nsPID returns pid's PID in its own (innermost) PID namespace.
func nsPID(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

func (m *master) log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

// status asks the master through `handover status -json`.
func (m *master) status() graceful.Status {
	m.t.Helper()
	st, err := ctlStatus(m.t, m.ctl)
	if err != nil {
		m.t.Fatalf("%v\nlog:\n%s", err, tail(m.log(), 30))
	}
	return st
}

// waitServing waits until a child serves.
func (m *master) waitServing(timeout time.Duration) graceful.Status {
	m.t.Helper()
	var st graceful.Status
	err := proc.WaitFor(func() bool {
		if !proc.Alive(m.host) {
			return true
		}
		var err error
		st, err = ctlStatus(m.t, m.ctl)
		return err == nil && st.State == "serving" && st.Child != 0
	}, timeout, "the master's child to serve")
	if err == nil && !proc.Alive(m.host) {
		err = fmt.Errorf("the master exited")
	}
	if err != nil {
		m.t.Fatalf("%v\nlog:\n%s", err, tail(m.log(), 40))
	}
	return st
}

// reload runs `handover reload` and returns its output and exit code.
func (m *master) reload() (string, int) {
	m.t.Helper()
	out, err := exec.Command(proc.Binary(m.t, handoverPkg), "reload", "-control", m.ctl, "-timeout", "30s").CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		m.t.Fatal(err)
	}
	return string(out), code
}

// processes returns the master's descendants (its children, theirs, orphans).
func (m *master) processes() (alive, zombies []int) {
	for _, p := range proc.Descendants(m.host) {
		switch {
		case proc.Zombie(p):
			zombies = append(zombies, p)
		case proc.Alive(p):
			alive = append(alive, p)
		}
	}
	return alive, zombies
}

// waitSettled waits until only the serving child is left under the master (the old
// ones drained) and checks that no zombie is.
func (m *master) waitSettled(timeout time.Duration) {
	m.t.Helper()
	err := proc.WaitFor(func() bool { alive, z := m.processes(); return len(alive) == 1 && len(z) == 0 }, timeout, "one child under the master")
	if err != nil {
		alive, zombies := m.processes()
		m.t.Errorf("%v: alive %v, zombies %v", err, alive, zombies)
	}
}

// stop sends SIGTERM to the master and returns its exit code (for a namespace,
// unshare reports its init's).
func (m *master) stop(timeout time.Duration) int {
	m.t.Helper()
	if err := syscall.Kill(m.host, syscall.SIGTERM); err != nil {
		m.t.Fatal(err)
	}
	ws, err := proc.Reap(m.started, timeout)
	if err != nil {
		m.t.Fatalf("%v\nlog:\n%s", err, tail(m.log(), 30))
	}
	m.exited = true
	if m.ns {
		if err := waitGone(m.host, 5*time.Second); err != nil {
			m.t.Error(err)
		}
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// cleanup kills what is left by the PID the test started: unshare (--kill-child
// takes the namespace down with it), or the master (its children get SIGKILL as
// their parent-death signal and come to the test, a subreaper, to be reaped).
func (m *master) cleanup() {
	if m.t.Failed() {
		m.t.Logf("master log:\n%s", tail(m.log(), 60))
	}
	if m.exited {
		return
	}
	under := proc.Descendants(m.started)
	if _, err := proc.KillAndReap(m.started, 10*time.Second); err != nil {
		m.t.Errorf("cleanup: %v", err)
	}
	for _, p := range under {
		if err := waitGone(p, 10*time.Second); err != nil {
			m.t.Errorf("cleanup: %v", err)
		}
	}
}

// reloadsUnderLoad runs n `handover reload` under the standard load, one every
// interval and once the new child has answered the load (and each load of also):
// each exits 0 and names a new child; the master's PID never changes; no request
// fails; every child answers; the old ones drain and are reaped.
func reloadsUnderLoad(t *testing.T, m *master, n int, interval time.Duration, also ...*load.Runner) {
	first := m.status()
	// (The control connection of that status request may still be open a moment.)
	fds := proc.FDCount(m.host)
	r := startLoad(t, m.addr, 0.5)
	children := []int{first.Child}
	var took []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		out, code := m.reload()
		took = append(took, time.Since(start))
		if code != 0 {
			r.Stop()
			t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
		}
		st := m.status()
		if st.PID != first.PID || !proc.Alive(m.host) {
			t.Errorf("reload %d: the master's PID is %d (alive %v), was %d", i+1, st.PID, proc.Alive(m.host), first.PID)
		}
		if st.Child == children[len(children)-1] || st.Generation != i+2 || st.State != "serving" || st.LastError != "" {
			t.Errorf("reload %d: status %+v", i+1, st)
		}
		children = append(children, st.Child)
		pace(interval)
		for _, l := range append([]*load.Runner{r}, also...) {
			waitAnswers(t, l, st.Child, 0, 1)
		}
	}
	res := r.Stop()
	checkLoad(t, res)
	seen := res.PIDs()
	if len(seen) != n+1 {
		t.Errorf("answers came from %d PIDs, want %d (one per child): %v", len(seen), n+1, seen)
	}
	for i, c := range children {
		if !slices.ContainsFunc(seen, func(s load.PIDSeen) bool { return s.PID == c }) {
			t.Errorf("child %d (PID %d) never answered", i+1, c)
		}
	}
	slices.Sort(took)
	t.Logf("%d reloads: handover reload took %v (median), %v (max)", n, took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	m.waitSettled(15 * time.Second)
	if err := proc.WaitFor(func() bool { return proc.FDCount(m.host) <= fds }, 5*time.Second, "the master's descriptors"); err != nil {
		t.Errorf("the master holds %d descriptors after the reloads, %d before: %v", proc.FDCount(m.host), fds, fdTargets(m.host))
	}
	if b, err := os.ReadFile(m.pidfile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(first.PID) {
		t.Errorf("PID file: %q, %v; want the master's PID %d", b, err, first.PID)
	}
}

// checkStoppedClean stops the master with SIGTERM: it exits 0 and leaves nothing.
func checkStoppedClean(t *testing.T, m *master) {
	t.Helper()
	// A child that just exited is a zombie until the master reaps it: only one that
	// stays one was never reaped.
	var zombies []int
	if err := proc.WaitFor(func() bool { _, zombies = m.processes(); return len(zombies) == 0 }, 5*time.Second, "the master to reap its exited children"); err != nil {
		t.Errorf("zombies under the master: %v", zombies)
	}
	before := proc.Descendants(m.host)
	if code := m.stop(20 * time.Second); code != 0 {
		t.Errorf("the master exited %d after SIGTERM, want 0", code)
	}
	for _, p := range before {
		if proc.Alive(p) {
			t.Errorf("pid %d is still running after the master exited", p)
		}
	}
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(m.pidfile); !os.IsNotExist(err) {
		t.Errorf("the PID file is left: %v", err)
	}
}

// TestRunDemoPID1: the demo under `handover run`, PID 1 of a new PID namespace: ten
// `handover reload` under load; every reload exits 0, 11 children answer, no request
// fails, the master's PID (1) never changes, no zombie is left in the namespace, and
// SIGTERM drains and exits 0.
func TestRunDemoPID1(t *testing.T) {
	m := startMaster(t, masterSpec{ns: true, prog: []string{proc.Binary(t, demoPkg)}})
	if st := m.status(); st.PID != 1 || st.Generation != 1 || len(st.Listeners) != 1 || st.Listeners[0].Addr != m.addr {
		t.Fatalf("status %+v", st)
	}
	reloadsUnderLoad(t, m, 10, 500*time.Millisecond)
	checkStoppedClean(t, m)
}

// TestRunPythonPID1: a Python server (standard library only: socket.socket(fileno=3),
// READY=1 to NOTIFY_SOCKET, drains on SIGTERM) under the master as PID 1: as the demo.
func TestRunPythonPID1(t *testing.T) {
	python := needTool(t, "python3", "/usr/bin/python3")
	m := startMaster(t, masterSpec{ns: true, prog: []string{python, abs(t, pythonServer)}})
	reloadsUnderLoad(t, m, 10, 500*time.Millisecond)
	if n := logs.Parse(m.log()).Count("child_ready", "via=notify"); n != 11 {
		t.Errorf("%d children were ready by READY=1, want 11", n)
	}
	checkStoppedClean(t, m)
}

// TestRunNodePID1: a Node.js server (server.listen({fd: 3}), drains on SIGTERM, never
// notifies: -ready-after) under the master as PID 1: as the demo, with a second load
// beside the standard one: POSTs with a body, every client on a keep-alive
// connection, none retried. (With http.Server's close for a drain, which since Node
// 19 closes idle keep-alive connections at once, POSTs on their way in are lost.)
func TestRunNodePID1(t *testing.T) {
	node := needTool(t, "node", "/usr/bin/node")
	m := startMaster(t, masterSpec{ns: true, prog: []string{node, abs(t, nodeServer)}, flags: []string{"-ready-after", "300ms"}})
	posts, err := load.Start(load.Config{Addr: m.addr, KeepAliveFraction: 1, Method: "POST", Body: []byte(`{"key":"k","value":"v"}`),
		Duration: 90 * time.Second, MaxRequests: 1_000_000})
	if err != nil {
		t.Fatal(err)
	}
	reloadsUnderLoad(t, m, 10, 500*time.Millisecond, posts)
	res := posts.Stop()
	checkLoad(t, res)
	if n := res.PIDs(); len(n) != 11 {
		t.Errorf("the POSTs were answered by %d children, want 11", len(n))
	}
	if n := logs.Parse(m.log()).Count("child_ready", "via=delay"); n != 11 {
		t.Errorf("%d children were ready after the delay, want 11", n)
	}
	checkStoppedClean(t, m)
}

func abs(t testing.TB, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestRunBadBuilds: a new build that exits 1 (leaving a process behind), one that
// hangs (takes the sockets, never ready), and a missing program: each `handover reload`
// exits 1 with the child's last stderr lines, the failed child and what it left are
// killed and reaped, the old child serves on (status unchanged but last_error), no
// request fails; then a good build upgrades.
func TestRunBadBuilds(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app")
	good := proc.Binary(t, demoPkg)
	copyFile(t, good, app, 0o755)
	hang := buildVariant(t, "testdata/brokendemo", "hang")
	m := startMaster(t, masterSpec{prog: []string{app}, flags: []string{"-upgrade-timeout", "2s"}})
	serving := m.status().Child
	r := startLoad(t, m.addr, 0.5)
	for _, c := range []struct {
		name   string
		deploy func()
		say    string // a line the child wrote to stderr, relayed by reload
	}{
		// It also leaves a process behind, holding the socket: killed with it.
		{"exits 1", func() {
			writeFile(t, app, []byte("#!/bin/sh\nsleep 600 &\necho 'fatal: cannot read config' >&2\nexit 1\n"), 0o755)
		}, "fatal: cannot read config"},
		{"hangs", func() { copyFile(t, hang, app, 0o755) }, ""},
		{"missing", func() { os.Remove(app) }, ""},
	} {
		c.deploy()
		start := time.Now()
		out, code := m.reload()
		if code != 1 {
			t.Errorf("%s: handover reload exited %d, want 1\n%s", c.name, code, out)
		}
		if c.say != "" && !strings.Contains(out, c.say) {
			t.Errorf("%s: handover reload does not relay the child's stderr:\n%s", c.name, out)
		}
		st := m.status()
		if st.Child != serving || st.Generation != 1 || st.State != "serving" || st.Upgrading != 0 || st.LastError == "" || st.Restarts != 0 {
			t.Errorf("%s: status after the failed upgrade: %+v", c.name, st)
		}
		// What the failed child left is killed at once (its reaping follows).
		if err := proc.WaitFor(func() bool {
			alive, zombies := m.processes()
			return len(alive) == 1 && alive[0] == serving && len(zombies) == 0
		}, 2*time.Second, "only the serving child under the master"); err != nil {
			alive, zombies := m.processes()
			t.Errorf("%s: %v: alive %v (want only %d), zombies %v", c.name, err, alive, serving, zombies)
		}
		t.Logf("%s: handover reload exited %d after %v", c.name, code, time.Since(start).Round(time.Millisecond))
	}
	copyFile(t, good, app, 0o755)
	if out, code := m.reload(); code != 0 {
		t.Errorf("reload with the good build: exit %d\n%s", code, out)
	}
	if st := m.status(); st.Child == serving || st.Generation != 2 || st.LastError != "" {
		t.Errorf("status after the good upgrade: %+v", st)
	}
	checkLoad(t, r.Stop())
	if n := logs.Parse(m.log()).Count("upgrade_failed"); n != 3 {
		t.Errorf("%d upgrade_failed events logged, want 3", n)
	}
	for _, cause := range []string{"cause=exited", "cause=timeout", "cause=start"} {
		if logs.Parse(m.log()).Count("upgrade_failed", cause) != 1 {
			t.Errorf("no upgrade_failed with %s", cause)
		}
	}
	m.waitSettled(15 * time.Second)
	checkStoppedClean(t, m)
}

// TestRunCrashRestart: the serving child is killed (SIGKILL) under load, twice: the
// master restarts it (status counts the restarts) while the sockets stay open, so
// only requests in flight in the killed child fail, none is refused.
func TestRunCrashRestart(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	r := startLoad(t, m.addr, 0.5)
	for i := 1; i <= 2; i++ {
		victim := m.status().Child
		pace(500 * time.Millisecond)
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var st graceful.Status
		err := proc.WaitFor(func() bool {
			st = m.status()
			return st.State == "serving" && st.Child != victim && st.Child != 0
		}, 10*time.Second, "a restarted child")
		if err != nil {
			t.Fatal(err)
		}
		if st.Restarts != i || !strings.Contains(st.LastError, "exited while serving") || st.PID != m.host {
			t.Errorf("after crash %d: status %+v", i, st)
		}
		if err := proc.WaitFor(func() bool { _, _, last := r.Progress(); return last == st.Child }, 10*time.Second, "answers from the restarted child"); err != nil {
			t.Error(err)
		}
	}
	// Only requests in flight in a killed child may fail (reset or EOF, at most one
	// per client and kill); connections made meanwhile wait in the socket's queue.
	res := r.Stop()
	t.Log(res.Summary())
	for kind, n := range res.Failures() {
		if kind != rawhttp.Reset && kind != rawhttp.EOF {
			t.Errorf("%d failures of kind %s; only resets and EOFs of requests in flight in a killed child are expected", n, kind)
		}
	}
	if n := res.FailureCount(); n > 2*load.DefaultConcurrency {
		t.Errorf("%d failed requests, more than the %d that could have been in flight at the two kills", n, 2*load.DefaultConcurrency)
	}
	m.waitSettled(5 * time.Second)
	checkStoppedClean(t, m)
}

// TestRunSIGTERMDrains: SIGTERM to the master while a slow request is in flight: the
// child finishes it, then exits; the master exits 0 and leaves nothing.
func TestRunSIGTERMDrains(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	child := m.status().Child
	slow := slowOn(t, m.addr, child, "/slow?ms=1500", 10*time.Second)
	start := time.Now()
	code := m.stop(15 * time.Second)
	took := time.Since(start)
	res := <-slow
	if res.err != nil || res.resp.Status != 200 || res.resp.PID() != child {
		t.Errorf("the in-flight request: %v %+v", res.err, res.resp)
	}
	if code != 0 {
		t.Errorf("the master exited %d, want 0", code)
	}
	if took < time.Second {
		t.Errorf("the master exited after %v, before its child's slow request was answered", took)
	}
	if err := waitGone(child, 5*time.Second); err != nil {
		t.Error(err)
	}
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
	t.Logf("SIGTERM to exit: %v with a 1.5s request in flight", took.Round(time.Millisecond))
}

// TestRunMasterDoesNotWatchSockets: the master holds the sockets for its children
// and never accepts on them, so its runtime's poller does not watch them: a
// connection that arrives wakes the child that serves it, not the master as well
// (thousands of times a second under load). The serving child does watch the
// socket, which shows the check sees a watched socket. Checked with the first
// child, and after an upgrade: the children make the socket non-blocking, a flag
// every copy of it shares, and a non-blocking descriptor is what the runtime
// watches.
func TestRunMasterDoesNotWatchSockets(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	ino, err := proc.ListeningInode(m.addr)
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		child := m.status().Child
		mw, err := proc.Watched(m.host)
		if err != nil {
			t.Fatal(err)
		}
		cw, err := proc.Watched(child)
		if err != nil {
			t.Fatal(err)
		}
		if !cw[ino] {
			t.Errorf("%s: the serving child (PID %d) does not watch the listening socket (inode %d): the check cannot tell", when, child, ino)
		}
		if mw[ino] {
			t.Errorf("%s: the master's poller watches the listening socket (inode %d)", when, ino)
		}
	}
	check("first child")
	if out, code := m.reload(); code != 0 {
		t.Fatalf("handover reload exited %d: %s", code, out)
	}
	m.waitSettled(30 * time.Second)
	check("after an upgrade")
}

// TestRunSIGINTForwarded: SIGINT (Ctrl-C) to the master goes to the child (a library
// child drains on it and exits 0); the master then exits with the child's status.
func TestRunSIGINTForwarded(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	child := m.status().Child
	slow := slowOn(t, m.addr, child, "/slow?ms=500", 10*time.Second)
	if err := syscall.Kill(m.host, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	ws, err := proc.Reap(m.host, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m.exited = true
	if res := <-slow; res.err != nil || res.resp.Status != 200 {
		t.Errorf("the in-flight request: %v %+v", res.err, res.resp)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("the master: %v, want exit status 0", ws)
	}
	if logs.Parse(m.log()).Count("forward", "signal=SIGINT", logs.KV("child", child)) != 1 {
		t.Errorf("the forward was not logged")
	}
	if err := waitGone(child, 5*time.Second); err != nil {
		t.Error(err)
	}
}

// TestRunMasterKilled: kill -9 of the master takes its child with it (parent-death
// signal): nothing keeps serving unsupervised on the sockets, so a supervisor's
// restart of the master can bind them again.
func TestRunMasterKilled(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	child := m.status().Child
	if _, err := proc.KillAndReap(m.host, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	m.exited = true
	// The child is reparented to the test (a subreaper), which reaps it.
	if err := waitGone(child, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", m.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the master and its child died", m.addr)
	}
}

// TestRunOrphanReaped: a child that orphans a grandchild (which exits 300ms later): the
// master, PID 1 of its namespace, reaps it; no zombie is left.
func TestRunOrphanReaped(t *testing.T) {
	python := needTool(t, "python3", "/usr/bin/python3")
	pidFile := filepath.Join(t.TempDir(), "orphan.pid")
	m := startMaster(t, masterSpec{ns: true, prog: []string{python, abs(t, pythonServer), "--orphan", pidFile}})
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	orphan := strings.TrimSpace(string(b))
	err = proc.WaitFor(func() bool { return logs.Parse(m.log()).Count("orphan_reaped", "child="+orphan) > 0 }, 5*time.Second, "the master to reap the orphan "+orphan)
	if err != nil {
		t.Error(err)
	}
	m.waitSettled(5 * time.Second)
	checkStoppedClean(t, m)
}

// environ returns the environment pid was started with (from /proc).
func environ(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// TestRunStartsLibraryDirectly: a program built with the library (the demo) is
// started without the re-exec shim, as the master's own child: no LISTEN_PID, but
// HANDOVER_DIRECT (the version of the direct start), HANDOVER_MASTER, LISTEN_FDS and
// LISTEN_FDNAMES; its command line and name are its own. It serves on the master's
// socket and upgrades as before. A program in another language (Python, which checks
// LISTEN_PID itself) goes through the shim: LISTEN_PID is its own PID, and it gets no
// HANDOVER_DIRECT.
func TestRunStartsLibraryDirectly(t *testing.T) {
	demoBin := proc.Binary(t, demoPkg)
	m := startMaster(t, masterSpec{prog: []string{demoBin, "-message", "direct"}})
	for gen := 1; gen <= 2; gen++ {
		st := m.status()
		env := environ(t, st.Child)
		// Generation 2 also gets its channel to generation 1, which the master
		// opened on generation 1's link in the fd store: handover-next, in place of
		// the link (handover-link).
		fds, names := "1", "http"
		if gen == 2 {
			fds, names = "2", "http:handover-next"
		}
		for k, v := range map[string]string{"HANDOVER_DIRECT": "1", "HANDOVER_MASTER": strconv.Itoa(m.host),
			"HANDOVER_GENERATION": strconv.Itoa(gen), "LISTEN_FDS": fds, "LISTEN_FDNAMES": names} {
			if env[k] != v {
				t.Errorf("generation %d: %s=%q, want %q", gen, k, env[k], v)
			}
		}
		for _, k := range []string{"LISTEN_PID", "HANDOVER_RUN_EXEC", "WATCHDOG_PID"} {
			if v, ok := env[k]; ok {
				t.Errorf("generation %d: %s=%q reached the child", gen, k, v)
			}
		}
		if pp := proc.PPid(st.Child); pp != m.host {
			t.Errorf("generation %d: the child's parent is %d, want the master %d", gen, pp, m.host)
		}
		if cmd := proc.Cmdline(st.Child); cmd != demoBin+" -message direct" {
			t.Errorf("generation %d: command line %q", gen, cmd)
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", st.Child)); strings.TrimSpace(string(comm)) != "handover-demo" {
			t.Errorf("generation %d: name %q", gen, comm)
		}
		resp, err := rawhttp.Get(m.addr, "/", 10*time.Second)
		if err != nil || resp.PID() != st.Child || !strings.Contains(string(resp.Body), fmt.Sprintf("gen=%d ", gen)) {
			t.Fatalf("generation %d: answer %+v, %v; want one from %d", gen, resp, err, st.Child)
		}
		if gen == 1 {
			if out, code := m.reload(); code != 0 {
				t.Fatalf("handover reload: %d: %s", code, out)
			}
		}
	}
	checkStoppedClean(t, m)

	python := needTool(t, "python3", "/usr/bin/python3")
	p := startMaster(t, masterSpec{prog: []string{python, abs(t, pythonServer)}})
	child := p.status().Child
	env := environ(t, child)
	if env["LISTEN_PID"] != strconv.Itoa(child) || env["HANDOVER_DIRECT"] != "" {
		t.Errorf("python: LISTEN_PID=%q HANDOVER_DIRECT=%q; want its own PID %d, and none", env["LISTEN_PID"], env["HANDOVER_DIRECT"], child)
	}
	checkStoppedClean(t, p)
}

// TestRunChildEnvironment: what a child gets (read from /proc): fds 0-3 only (0 is
// /dev/null, 2 a pipe to the master, 3 the socket), its own PID in LISTEN_PID,
// LISTEN_FDS=1, LISTEN_FDNAMES=http, the master's NOTIFY_SOCKET and HANDOVER_MASTER;
// none of the master's own (stale) LISTEN_*, NOTIFY_SOCKET, WATCHDOG_* or the shim's
// variable. PROG is looked up in $PATH. A process the child leaves behind is killed
// when the master exits.
func TestRunChildEnvironment(t *testing.T) {
	stale := []string{"LISTEN_PID=1", "LISTEN_FDS=5", "LISTEN_FDNAMES=a:b:c:d:e", "NOTIFY_SOCKET=/nonexistent/notify",
		"WATCHDOG_USEC=1000000", "WATCHDOG_PID=1", "HANDOVER_PARENT=pid=1,ppid=1,chan=9,gen=3", "HANDOVER_MASTER=1"}
	// The child also starts a process that outlives it.
	m := startMaster(t, masterSpec{prog: []string{"sh", "-c", "sleep 600 & exec sleep 601"}, flags: []string{"-ready-after", "300ms"}, env: stale})
	st := m.status()
	if st.Executable != needTool(t, "sh") {
		t.Errorf("executable %q, want sh from $PATH", st.Executable)
	}
	env := environ(t, st.Child)
	want := map[string]string{
		"LISTEN_PID": strconv.Itoa(st.Child), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http",
		"HANDOVER_MASTER": strconv.Itoa(m.host),
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	if ns := env["NOTIFY_SOCKET"]; ns == "" || ns == "/nonexistent/notify" {
		t.Errorf("NOTIFY_SOCKET=%q, want the master's", ns)
	}
	for _, k := range []string{"WATCHDOG_USEC", "WATCHDOG_PID", "HANDOVER_PARENT", "HANDOVER_RUN_EXEC"} {
		if v, ok := env[k]; ok {
			t.Errorf("%s=%q reached the child", k, v)
		}
	}
	fds := map[string]string{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", st.Child))
	for _, e := range ents {
		fds[e.Name()], _ = os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", st.Child, e.Name()))
	}
	if len(fds) != 4 || fds["0"] != "/dev/null" || !strings.HasPrefix(fds["2"], "pipe:") || !strings.HasPrefix(fds["3"], "socket:") {
		t.Errorf("the child's descriptors: %v; want 0=/dev/null, 1, 2=a pipe, 3=the socket, nothing else", fds)
	}
	// A program that dies of SIGTERM: the master exits with its status, once it has
	// killed what the child left behind.
	var under []int
	if err := proc.WaitFor(func() bool { under = proc.Descendants(m.host); return len(under) == 2 }, 5*time.Second, "the child and its sleep"); err != nil {
		t.Errorf("%v: processes under the master: %v", err, under)
	}
	if code := m.stop(15 * time.Second); code != 128+int(syscall.SIGTERM) {
		t.Errorf("the master exited %d, want %d (the child's status: killed by SIGTERM)", code, 128+int(syscall.SIGTERM))
	}
	for _, p := range under {
		if proc.Alive(p) {
			t.Errorf("pid %d (%s) outlived the master", p, proc.Cmdline(p))
		}
	}
	if logs.Parse(m.log()).Count("leftovers_killed") != 1 {
		t.Errorf("the leftover was not logged")
	}
}

// TestRunControlSocketPermissions: the master's control socket is mode 0600 (another
// user gets permission denied from the kernel); loosened to 0666, the master refuses
// another user's status and reload by SO_PEERCRED (logged, nothing started); root may.
func TestRunControlSocketPermissions(t *testing.T) {
	dir := publicDir(t) // traversable by nobody: only the socket's own mode stops it
	ctl := filepath.Join(dir, "control.sock")
	cli := filepath.Join(dir, "handover")
	copyFile(t, proc.Binary(t, handoverPkg), cli, 0o755)
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}, control: ctl})
	child := m.status().Child
	if st, err := os.Lstat(ctl); err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, %v; want a socket with mode 0600", st.Mode(), err)
	}
	if _, stderr, code := runAs(t, nobody, cli, "status", "-control", ctl); code != 1 || !strings.Contains(stderr, "permission denied on "+ctl) {
		t.Errorf("handover status as nobody: exit %d, %q; want 1 and permission denied", code, stderr)
	}
	if err := os.Chmod(ctl, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"status", "reload"} {
		_, stderr, code := runAs(t, nobody, cli, cmd, "-control", ctl)
		if code != 1 || !strings.Contains(stderr, "uid 65534 may not control this service") {
			t.Errorf("handover %s as nobody: exit %d, %q; want 1 and the master's refusal", cmd, code, stderr)
		}
	}
	if n := logs.Parse(m.log()).Count("control_refused", "uid=65534"); n != 2 {
		t.Errorf("%d refusals logged, want 2", n)
	}
	if st := m.status(); st.Child != child || st.Generation != 1 || logs.Parse(m.log()).Count("upgrade_start") != 0 {
		t.Errorf("a refused reload started something: %+v", st)
	}
	if out, _, code := runAs(t, &syscall.Credential{Uid: 0, Gid: 0}, cli, "reload", "-control", ctl); code != 0 || !strings.HasPrefix(out, "upgraded: PID ") {
		t.Errorf("reload as root: exit %d, %q", code, out)
	}
	checkStoppedClean(t, m)
	if _, err := os.Lstat(ctl); !os.IsNotExist(err) {
		t.Errorf("the control socket is left after the master exited: %v", err)
	}
}

// TestRunBadFlags: mistakes in the command line exit 2 before anything starts, with a
// message naming the flag.
func TestRunBadFlags(t *testing.T) {
	bin := proc.Binary(t, handoverPkg)
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("x"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		word string
	}{
		{[]string{"-listen", "127.0.0.1:8080", "--", "true"}, 2, "-listen"},
		{[]string{"-listen", "http=127.0.0.1", "--", "true"}, 2, "port"},
		{[]string{"-listen", "http=127.0.0.1:1", "-listen", "http=127.0.0.1:2", "--", "true"}, 2, "twice"},
		{[]string{"-listen", "http=127.0.0.1:1"}, 2, "program"},
		{[]string{"-listen", "http=127.0.0.1:1", "-stop-signal", "SIGNOPE", "--", "true"}, 2, "-stop-signal"},
		{[]string{"-listen", "http=127.0.0.1:1", "-drain-timeout", "0s", "--", "true"}, 2, "-drain-timeout"},
		{[]string{"-listen", "http=127.0.0.1:1", "-ready-after", "40s", "--", "true"}, 2, "-ready-after"},
		{[]string{"-listen", "http=127.0.0.1:1", "-max-draining", "0", "--", "true"}, 2, "-max-draining"},
		{[]string{"-listen", "http=127.0.0.1:1", "-settle", "-1s", "--", "true"}, 2, "-settle"},
		{[]string{"--", "true"}, 1, "-listen"},
		{[]string{"-listen", "http=unix:" + regular, "--", "true"}, 1, "not a socket"},
		{[]string{"-listen", "http=" + runPort(t), "-control", filepath.Join(dir, "no", "ctl.sock"), "--", "true"}, 1, "does not exist"},
	} {
		cmd := exec.Command(bin, append([]string{"run"}, c.args...)...)
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(string(out), c.word) {
			t.Errorf("handover run %q: exit %d, want %d with %q named:\n%s", c.args, code, c.code, c.word, out)
		}
	}
	if b, _ := os.ReadFile(regular); string(b) != "x" {
		t.Errorf("the regular file in the way was changed")
	}
}

// TestRunDockerfileCommand runs the exact command line of deploy/run/Dockerfile
// (ENTRYPOINT + CMD, with its ENV) as PID 1 of new PID, mount and network namespaces,
// as `docker run` would: it serves on the port it names, `handover reload` inside
// (as `docker exec` would run it) upgrades while PID 1 stays, and SIGTERM (`docker
// stop`) drains and exits 0 with no zombie left.
func TestRunDockerfileCommand(t *testing.T) {
	unshare := needNamespaces(t)
	needTool(t, "ip", "/usr/sbin/ip", "/sbin/ip")
	entrypoint, cmdline, env := parseDockerfile(t, "../deploy/run/Dockerfile")
	argv := append(slices.Clone(entrypoint), cmdline...)
	if len(argv) < 3 || argv[0] != "handover" || argv[1] != "run" {
		t.Fatalf("the Dockerfile's command is %q, want handover run …", argv)
	}
	port := ""
	for i, a := range argv {
		if a == "-listen" && i+1 < len(argv) {
			_, addr, _ := strings.Cut(argv[i+1], "=")
			_, port, _ = net.SplitHostPort(addr)
		}
	}
	if port == "" {
		t.Fatalf("no -listen NAME=ADDR in %q", argv)
	}
	bin := proc.Build(t, handoverPkg, demoPkg)
	// The image's file system, as far as the command needs it: the binaries on PATH,
	// a private /run with the control socket's directory; the loopback interface up.
	setup := `set -e; ip link set lo up; mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -m 0700 /run/handover; exec "$@"`
	args := append([]string{"--pid", "--fork", "--mount-proc", "--net", "--kill-child", "--", "/bin/sh", "-c", setup, "sh"}, argv...)
	logPath := filepath.Join(t.TempDir(), "container.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	c := exec.Command(unshare, args...)
	c.Env = cleanEnv(append(env, "PATH="+bin+":"+os.Getenv("PATH"), "TMPDIR="+t.TempDir())...)
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	m := &master{t: t, logPath: logPath, started: c.Process.Pid, ns: true}
	c.Process.Release()
	t.Cleanup(m.cleanup)
	m.host = nsInit(t, m.started, "handover")
	addr := "127.0.0.1:" + port
	get := func() *rawhttp.Response {
		t.Helper()
		var resp *rawhttp.Response
		err := proc.WaitFor(func() bool {
			conn, err := dialInNetns(m.host, addr)
			if err != nil {
				return false
			}
			defer conn.Close()
			resp, err = conn.Do("GET", "/", rawhttp.CloseHeader(), 5*time.Second)
			return err == nil && resp.Status == 200
		}, 10*time.Second, "an answer inside the container")
		if err != nil {
			t.Fatalf("%v\nlog:\n%s", err, tail(m.log(), 30))
		}
		return resp
	}
	nsenter := needTool(t, "nsenter", "/usr/bin/nsenter")
	inside := func(args ...string) (string, int) {
		// As `docker exec`: the container's mount namespace, its environment.
		cmd := exec.Command(nsenter, append([]string{"-t", strconv.Itoa(m.host), "-m", "--", filepath.Join(bin, "handover")}, args...)...)
		cmd.Env = cleanEnv(env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	first := get().PID()
	if out, code := inside("reload"); code != 0 {
		t.Fatalf("handover reload in the container: exit %d\n%s", code, out)
	}
	second := get().PID()
	out, code := inside("status", "-json")
	var st graceful.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("handover status in the container: exit %d\n%s", code, out)
	}
	if first == second || st.PID != 1 || st.Child != second || st.Generation != 2 {
		t.Errorf("children %d then %d; status %+v: want a new child, PID 1 the master", first, second, st)
	}
	t.Logf("%q as PID 1 (host PID %d): child %d, then %d after handover reload", argv, m.host, first, second)
	if err := proc.WaitFor(func() bool { alive, z := m.processes(); return len(alive) == 1 && len(z) == 0 }, 15*time.Second, "the old child to exit"); err != nil {
		alive, z := m.processes()
		t.Errorf("%v: alive %v, zombies %v", err, alive, z)
	}
	if code := m.stop(30 * time.Second); code != 0 {
		t.Errorf("docker stop (SIGTERM to PID 1): exit %d, want 0", code)
	}
}

// parseDockerfile returns a Dockerfile's last ENTRYPOINT and CMD (exec form) and its
// ENV assignments (KEY=VALUE form).
func parseDockerfile(t testing.TB, path string) (entrypoint, cmd, env []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		word, rest, _ := strings.Cut(line, " ")
		var dst *[]string
		switch strings.ToUpper(word) {
		case "ENTRYPOINT":
			dst = &entrypoint
		case "CMD":
			dst = &cmd
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				if !strings.Contains(kv, "=") {
					t.Fatalf("%s: ENV %q: only the KEY=VALUE form is supported here", path, rest)
				}
				env = append(env, kv)
			}
			continue
		default:
			continue
		}
		*dst = nil
		if err := json.Unmarshal([]byte(strings.TrimSpace(rest)), dst); err != nil {
			t.Fatalf("%s: %s is not in exec (JSON) form: %v", path, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return entrypoint, cmd, env
}

// dialInNetns connects to addr from inside pid's network namespace: on a thread of
// its own, which is discarded afterwards (never unlocked).
func dialInNetns(pid int, addr string) (*rawhttp.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	return rawhttp.NewConn(r.c), nil
}

// TestSystemdRun: deploy/run/ (handover run as the service's main process, with the
// socket unit) under a real systemd: the master takes the socket from systemd; five
// `systemctl reload` under load each exit 0 and bring a new child while MainPID stays
// the master's; StatusText names the serving child; a broken build makes `systemctl
// reload` fail while the old child serves on; nothing fails; with WatchdogSec=2 the
// children's pings, forwarded by the master, keep systemd's watchdog fed; systemd
// restarts nothing and logs nothing about processes it does not supervise; `systemctl
// stop` drains and ends the unit cleanly.
func TestSystemdRun(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "run", "")
		// With systemd's watchdog on the master, the serving child's pings are what
		// keeps it fed: the reloads below last longer than the period.
		d.editService(func(s string) string {
			return strings.Replace(s, "[Service]\n", "[Service]\nWatchdogSec=2\n", 1)
		})
		prev := d.answer()
		main := d.mainPID()
		if got := d.show("WatchdogUSec"); got != "2s" {
			t.Fatalf("WatchdogUSec=%s, want 2s", got)
		}
		if prev == main || main == 0 {
			t.Fatalf("answered by %d, MainPID %d: want a child of the master to answer", prev, main)
		}
		out, code, err := d.sd.Exec(filepath.Join(d.bin, "handover"), "status", "-json", "-control", d.ctl)
		var st graceful.Status
		if err != nil || code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("handover status: %v %d\n%s", err, code, out)
		}
		if st.PID != main || st.Child != prev || !st.Systemd || len(st.Listeners) != 1 || st.Listeners[0].Source != "systemd" {
			t.Errorf("status %+v", st)
		}
		r := startLoad(t, d.addr, 0.5)
		for i := 0; i < 5; i++ {
			if out, code := d.reload(); code != 0 {
				r.Stop()
				t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
			}
			d.checkState(main)
			child := d.answer()
			if child == prev {
				t.Errorf("reload %d: still answered by %d", i+1, child)
			}
			if text, _ := d.sd.Show(unit, "StatusText"); !strings.Contains(text, fmt.Sprintf("child PID %d, generation %d", child, i+2)) {
				t.Errorf("reload %d: StatusText %q does not name child %d, generation %d", i+1, text, child, i+2)
			}
			prev = child
			pace(500 * time.Millisecond)
		}
		// A build that exits 1: systemctl reload fails; the master and its child serve on.
		good := filepath.Join(d.bin, "handover-demo")
		saved := filepath.Join(d.sd.Dir(), "handover-demo.good")
		copyFile(t, good, saved, 0o755)
		writeFile(t, good, []byte("#!/bin/sh\necho 'fatal: broken build' >&2\nexit 1\n"), 0o755)
		if out, code := d.reload(); code == 0 {
			t.Errorf("systemctl reload of a broken build succeeded\n%s", out)
		}
		d.checkState(main)
		if got := d.answer(); got != prev {
			t.Errorf("after the failed reload: answered by %d, want %d", got, prev)
		}
		if text, _ := d.sd.Show(unit, "StatusText"); !strings.Contains(text, "last error") {
			t.Errorf("StatusText %q does not mention the failed upgrade", text)
		}
		copyFile(t, saved, good, 0o755)
		res := r.Stop()
		checkLoad(t, res)
		if n := len(res.PIDs()); n != 6 {
			t.Errorf("answers came from %d PIDs, want 6", n)
		}
		if n, _ := d.sd.Show(unit, "NRestarts"); n != "0" {
			t.Errorf("NRestarts=%s", n)
		}
		if lines := d.sd.Grep("[Ww]atchdog"); len(lines) > 0 {
			t.Errorf("systemd's watchdog fired:\n%s", strings.Join(lines, "\n"))
		}
		d.waitSingle(15 * time.Second)
		d.checkConsole()
		if out, code, err := d.sd.Ctl("stop", unit); err != nil || code != 0 {
			t.Fatalf("systemctl stop: %v %d\n%s", err, code, out)
		}
		if res, _ := d.sd.Show(unit, "Result"); res != "success" {
			t.Errorf("Result=%s after stop", res)
		}
		if lines := d.sd.Grep("Killing process"); len(lines) > 0 {
			t.Errorf("systemd had to kill processes:\n%s", strings.Join(lines, "\n"))
		}
		if ps := d.demoProcesses(); len(ps) > 0 {
			t.Errorf("demo processes left after stop: %v", ps)
		}
		d.checkConsole()
	})
}

// TestSystemdRunStopDuringUpgrade: deploy/run/ under systemd, `systemctl stop` while a
// `systemctl reload` waits for a build that hangs: the master abandons the upgrade
// (kills the new child), the serving child drains, and the unit stops at once and
// cleanly (Result=success, nothing killed by systemd, nothing left).
func TestSystemdRunStopDuringUpgrade(t *testing.T) {
	hang := buildVariant(t, "testdata/brokendemo", "hang")
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "run", "")
		d.answer()
		copyFile(t, hang, filepath.Join(d.bin, "handover-demo"), 0o755)
		reload := d.reloadAsync()
		err := proc.WaitFor(func() bool {
			out, code, err := d.sd.Exec(filepath.Join(d.bin, "handover"), "status", "-json", "-control", d.ctl)
			var st graceful.Status
			return err == nil && code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.Upgrading != 0
		}, 10*time.Second, "the upgrade to start")
		if err != nil {
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
		if d.events().Count("upgrade_failed", "cause=abandoned") != 1 {
			t.Errorf("the master did not abandon the upgrade:\n%s", tail(d.sd.ReadLog("demo.log"), 15))
		}
		if lines := d.sd.Grep("Killing process .* with signal SIGKILL|timed out|Failed with result"); len(lines) > 0 {
			t.Errorf("systemd had to kill processes:\n%s", strings.Join(lines, "\n"))
		}
		d.checkConsole()
		t.Logf("systemctl stop during an upgrade took %s", took.Round(time.Millisecond))
	})
}
