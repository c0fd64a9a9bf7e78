package tests

// Faults an operator can cause or suffer without a service manager: processes killed
// at every stage of an upgrade, signal storms, and a hostile or broken environment.
// RELIABILITY.md lists them with what the system does. (The same faults under systemd
// are in systemd_faults_test.go.)
//
// The helpers at the top are shared by clients_test.go, security_test.go and
// soak_test.go.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
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
	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// handoverPkg is the operator's tool.
const handoverPkg = "github.com/seed-a7250cfa/handover/cmd/handover"

// demoSpec starts the demo in a particular environment.
type demoSpec struct {
	program string // the binary to run; default the demo
	addr    string // -listen; default a free port
	args    []string
	drain   time.Duration // -drain-timeout; default 10s
	dir     string        // for the binary, the log and the PID file; default t.TempDir()
	bin     string        // where the demo binary is copied; default dir/handover-demo
	pidfile string        // -pidfile; default dir/demo.pid
	control string        // -control, if set
	wrap    []string      // a command that execs the demo with its arguments appended
	env     []string      // added to the environment (after the protocol's variables are removed)
	files   []*os.File    // placed at fd 3, 4, ...
	cred    *syscall.Credential
}

// protocolVar reports whether the environment variable k belongs to socket passing or
// a service manager, none of which the test's own environment may leak to a demo.
func protocolVar(k string) bool {
	switch k {
	case "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "HANDOVER_PARENT", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC":
		return true
	}
	return false
}

// cleanEnv is the test's environment without the protocol's variables, plus more.
func cleanEnv(more ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !protocolVar(k) {
			env = append(env, kv)
		}
	}
	return append(env, more...)
}

// launchDemo starts the demo as s says, without waiting for it to be ready.
func launchDemo(t testing.TB, s demoSpec) *demo {
	t.Helper()
	if s.drain == 0 {
		s.drain = 10 * time.Second
	}
	if s.dir == "" {
		s.dir = t.TempDir()
	}
	if s.bin == "" {
		s.bin = filepath.Join(s.dir, "handover-demo")
	}
	if s.pidfile == "" {
		s.pidfile = filepath.Join(s.dir, "demo.pid")
	}
	if s.program == "" {
		s.program = proc.Binary(t, demoPkg)
	}
	if s.addr == "" {
		s.addr = freePort(t)
	}
	d := &demo{
		t:       t,
		dir:     s.dir,
		bin:     s.bin,
		good:    s.program,
		addr:    s.addr,
		pidfile: s.pidfile,
		logPath: filepath.Join(s.dir, "demo.log"),
		drain:   s.drain,
	}
	copyFile(t, d.good, d.bin, 0o755)
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := []string{"-listen", d.addr, "-pidfile", d.pidfile, "-drain-timeout", s.drain.String()}
	if s.control != "" {
		args = append(args, "-control", s.control)
	}
	args = append(append(args, s.args...), testProbation(s.args)...)
	argv := append(append(slices.Clone(s.wrap), d.bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = cleanEnv(s.env...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = s.files
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.pids = append(d.pids, cmd.Process.Pid)
	cmd.Process.Release()
	t.Cleanup(d.cleanup)
	// Runs before d.cleanup: a test that failed half-way may not have recorded every
	// generation; each one logs its PID when it starts. Only processes under the
	// test (a subreaper) are taken, so a recycled PID is never touched.
	t.Cleanup(func() { d.adoptLogged() })
	return d
}

// adoptLogged adds to d.pids every generation that logged its start and is still a
// process under the test.
func (d *demo) adoptLogged() {
	under := proc.Descendants(os.Getpid())
	for _, pid := range logs.Ints(d.events().Where("start"), "pid") {
		if slices.Contains(under, pid) && !slices.Contains(d.pids, pid) {
			d.pids = append(d.pids, pid)
		}
	}
}

// startDemoSpec starts the demo as s says and waits until it is ready.
func startDemoSpec(t testing.TB, s demoSpec) *demo {
	t.Helper()
	d := launchDemo(t, s)
	d.waitPID(d.current())
	return d
}

// exitOf waits for the demo's first process to exit and returns how it exited.
func (d *demo) exitOf(pid int) syscall.WaitStatus {
	d.t.Helper()
	ws, err := proc.Reap(pid, 15*time.Second)
	if err != nil {
		d.t.Fatalf("%v\nlog:\n%s", err, d.log())
	}
	return ws
}

// waitNewPID waits until the PID file names a process other than those in seen.
func (d *demo) waitNewPID(timeout time.Duration, seen ...int) int {
	d.t.Helper()
	var pid int
	err := proc.WaitFor(func() bool {
		pid = d.pidFromFile()
		return pid != 0 && !slices.Contains(seen, pid)
	}, timeout, fmt.Sprintf("the PID file to name a process other than %v", seen))
	if err != nil {
		d.t.Fatalf("%v\nlog:\n%s", err, tail(d.log(), 30))
	}
	return pid
}

// ctlStatus asks the service for its status through `handover status -json`.
func ctlStatus(t testing.TB, path string) (graceful.Status, error) {
	t.Helper()
	var st graceful.Status
	out, err := exec.Command(proc.Binary(t, handoverPkg), "status", "-json", "-control", path).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return st, fmt.Errorf("handover status: %v: %s", err, ee.Stderr)
		}
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("handover status -json: %v: %q", err, out)
	}
	return st, nil
}

// socketInodes returns the inodes of the sockets pid holds.
func socketInodes(pid int) map[string]bool {
	inodes := map[string]bool{}
	for _, target := range fdTargets(pid) {
		if _, link, ok := strings.Cut(target, "->socket:["); ok {
			inodes[strings.TrimSuffix(link, "]")] = true
		}
	}
	return inodes
}

// tcpConns counts the TCP connections (sockets not listening) pid holds.
func tcpConns(pid int) int {
	inodes := socketInodes(pid)
	n := 0
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			return -1
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 10 && fields[3] != "0A" && inodes[fields[9]] {
				n++
			}
		}
		f.Close()
	}
	return n
}

// killCounted kills pid with SIGKILL and returns how many TCP connections it held:
// it is stopped first (SIGSTOP), so that it accepts nothing between the count and
// the kill. Connections still in the listening socket's queue are not the process's.
func killCounted(t testing.TB, pid int) (held int, at time.Time) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitFor(func() bool { return proc.State(pid) == "T" }, 5*time.Second, fmt.Sprintf("pid %d to stop", pid)); err != nil {
		t.Fatal(err)
	}
	held = tcpConns(pid)
	at = time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed pid %d (SIGKILL) holding %d TCP connections", pid, held)
	return held, at
}

// checkLoadAfterKill checks what the load saw when a serving process, holding held
// TCP connections, was killed at at. Only requests on that process's connections may
// fail, and only as a reset or an EOF: each failed request must have ended after the
// kill, and have been either in flight at the kill (sent before it) or the first
// request its client sent after the kill on a keep-alive connection it already had
// (the client could not know the connection was dead). So each client loses at most
// one request, and no more requests fail than the process held connections. Nothing
// may be refused or time out, and the load must have run until the test stopped it.
// A drain that lost requests before the kill, or a restart that refused or dropped
// new ones, fails the test; so does losing a second request on the same client.
func checkLoadAfterKill(t testing.TB, res *load.Result, held int, at time.Time) {
	t.Helper()
	t.Log(res.Summary())
	checkLoadRan(t, res)
	killedAt := at.Sub(res.Started)
	// The first request each client sent after the kill (records are sorted by start).
	firstAfter := map[uint16]time.Duration{}
	for _, rec := range res.Records {
		if _, ok := firstAfter[rec.Worker]; !ok && rec.Start >= killedAt {
			firstAfter[rec.Worker] = rec.Start
		}
	}
	perClient := map[uint16]int{}
	failed := 0
	for _, rec := range res.Records {
		if rec.Kind == rawhttp.OK {
			continue
		}
		failed++
		perClient[rec.Worker]++
		switch {
		case rec.Kind != rawhttp.Reset && rec.Kind != rawhttp.EOF:
			t.Errorf("a request failed as %v; only a reset or EOF (a connection of the killed process) may: %+v", rec.Kind, rec)
		case rec.Start+rec.Latency < killedAt:
			t.Errorf("a request failed at %v, before the kill at %v: %+v", rec.Start+rec.Latency, killedAt, rec)
		case rec.Start >= killedAt && !(rec.Reused && rec.Start == firstAfter[rec.Worker]):
			t.Errorf("a request sent at %v, after the kill at %v, on a new connection or after an earlier request since the kill, failed: %+v", rec.Start, killedAt, rec)
		}
	}
	for w, n := range perClient {
		if n > 1 {
			t.Errorf("client %d lost %d requests; a client can have had only one in flight in the killed process", w, n)
		}
	}
	t.Logf("%d of %d requests failed; the killed process held %d connections", failed, res.Total(), held)
	if failed > held {
		t.Errorf("%d requests failed, more than the %d connections the killed process held", failed, held)
	}
	if failed > 0 {
		for _, f := range res.FailureSamples(10) {
			t.Logf("  failure: %s", f)
		}
	}
}

// TestKillNewBeforeReady: the new generation is killed (SIGKILL) while it holds the
// sockets but is not ready. The old one reports the failed upgrade with the cause,
// reaps the child and goes on serving; the load sees no failure; the next upgrade
// works.
func TestKillNewBeforeReady(t *testing.T) {
	d := startDemo(t, demoOpts{args: []string{"-upgrade-timeout", "60s"}})
	serving := d.current()
	_, port, _ := net.SplitHostPort(d.addr)
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), d.bin, 0o755)
	d.signal(syscall.SIGUSR2)
	var child int
	err := proc.WaitFor(func() bool {
		kids := proc.Children(serving)
		if len(kids) != 1 {
			return false
		}
		child = kids[0]
		ports, _ := listeningTCPPorts(child)
		return slices.Contains(ports, atoiOr0(port))
	}, 10*time.Second, "the new generation to hold the listening socket")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Noticed as the child's exit (cause=exited, not a timeout 60s later), with how
	// it ended.
	got := d.waitEvent(0, 10*time.Second, "upgrade_failed")
	failedUpgrade{causes: []string{"exited"}, facts: []string{exitText(0, syscall.SIGKILL)}}.check(t, "killed before ready", got)
	if got.Int("child") != child {
		t.Errorf("upgrade_failed child=%d, want the killed %d", got.Int("child"), child)
	}
	if st := proc.State(child); st != "" {
		t.Errorf("the killed child %d is still there (state %s): the old generation did not reap it", child, st)
	}
	if p := d.pidFromFile(); p != serving {
		t.Errorf("PID file names %d, want the old %d", p, serving)
	}
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
		t.Errorf("after the failed upgrade: %v, answered by %d, want %d", err, respPID(resp), serving)
	}
	copyFile(t, d.good, d.bin, 0o755)
	d.upgradeAndDrain()
	checkLoad(t, r.Stop())
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

func atoiOr0(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// killSuccessor kills the new generation once it has taken over, either at once
// (right after it signalled ready and wrote the PID file) or after it has served the
// load for a while during the old generation's drain. The old generation, still
// draining a slow request, takes its drain back and serves again on the sockets it
// kept (it does not start a build again); only the killed process's connections may
// fail.
func killSuccessor(t *testing.T, settle bool) {
	d := startDemo(t, demoOpts{drain: 20 * time.Second})
	first := d.current()
	// A slow request keeps the old generation draining through the whole test.
	slow := slowOn(t, d.addr, first, "/slow?ms=6000", 20*time.Second)
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	old, cur := d.upgrade()
	if settle {
		// The new generation takes the load; the old one drains.
		if err := proc.WaitFor(func() bool { _, _, last := r.Progress(); return last == cur }, 5*time.Second, "the load to reach the new generation"); err != nil {
			t.Fatal(err)
		}
		pace(time.Second)
		if !proc.Alive(old) {
			t.Fatalf("the old generation %d has already exited; the test needs it draining", old)
		}
	}
	held, at := killCounted(t, cur)
	// The old generation is the current one again: it rewrites the PID file.
	if err := proc.WaitFor(func() bool { return d.pidFromFile() == old }, 10*time.Second, "the PID file to name the old generation again"); err != nil {
		t.Fatal(err)
	}
	d.pids = append(d.pids, old)
	ev := d.events()
	if n := ev.Count("successor_died", "action=resume", logs.KV("child", cur), logs.KV("pid", old)); n != 1 {
		t.Errorf("%d resumptions after %d died logged by %d (event=successor_died action=resume), want 1\n%s", n, cur, old, tail(d.log(), 20))
	}
	if n := ev.Count("child_started", logs.KV("pid", old)); n != 1 {
		t.Errorf("the old generation started %d processes, want 1 (the upgrade; nothing after the death)", n)
	}
	if err := proc.WaitFor(func() bool { return proc.State(cur) == "" }, 5*time.Second, "the killed generation to be reaped"); err != nil {
		t.Errorf("%v (state %s, parent %d)", err, proc.State(cur), proc.PPid(cur))
	}
	// The old generation serves the load again and answers its slow request.
	if err := proc.WaitFor(func() bool { _, _, last := r.Progress(); return last == old }, 5*time.Second, "the load to reach the old generation again"); err != nil {
		t.Error(err)
	}
	s := <-slow
	if s.err != nil || s.resp.Status != 200 || s.resp.PID() != old {
		t.Errorf("the slow request in flight on the old generation: %v, status %d from pid %d; want 200 from %d", s.err, statusOf(s.resp), respPID(s.resp), old)
	}
	if !proc.Alive(old) {
		t.Fatal("the old generation exited after resuming")
	}
	// The next upgrade works, from the old generation.
	prev, _ := d.upgrade()
	if prev != old {
		t.Errorf("upgraded from %d, want the resumed generation %d", prev, old)
	}
	if err := waitGone(prev, d.drain); err != nil {
		t.Error(err)
	}
	res := r.Stop()
	checkLoadAfterKill(t, res, held, at)
	for _, p := range []int{old, cur, d.current()} {
		if p == cur && !settle {
			continue // killed as soon as it was ready: it may not have answered
		}
		if !slices.ContainsFunc(res.PIDs(), func(s load.PIDSeen) bool { return s.PID == p }) {
			t.Errorf("pid %d never answered the load", p)
		}
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

func statusOf(r *rawhttp.Response) int {
	if r == nil {
		return 0
	}
	return r.Status
}

// TestKillNewRightAfterReady: SIGKILL to the new generation as soon as it is ready.
func TestKillNewRightAfterReady(t *testing.T) { killSuccessor(t, false) }

// TestKillNewDuringDrain: SIGKILL to the new generation once it has served for a
// second, while the old one drains.
func TestKillNewDuringDrain(t *testing.T) { killSuccessor(t, true) }

// TestKillOldMidDrain: SIGKILL to the old generation in the middle of its drain. Its
// two remaining connections (a slow request and a stream) see a reset or EOF; the
// load, served by the new generation, sees nothing; the next upgrade works.
func TestKillOldMidDrain(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 30 * time.Second})
	old := d.current()
	slow := slowOn(t, d.addr, old, "/slow?ms=20000", 30*time.Second)
	streamDone := streamOn(t, d.addr, "/stream?n=30&interval=500")
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	_, cur := d.upgrade()
	// The load's connections leave the old generation (Connection: close, idle ones
	// closed after the grace period) until only the test's two are left.
	if err := proc.WaitFor(func() bool { return tcpConns(old) == 2 }, 10*time.Second, "the old generation to hold only the slow request and the stream"); err != nil {
		t.Fatalf("%v: it holds %d", err, tcpConns(old))
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan inflight{"slow request": slow, "stream": streamDone} {
		got := <-ch
		if k := rawhttp.KindOf(got.resp, got.err); k != rawhttp.Reset && k != rawhttp.EOF {
			t.Errorf("%s on the killed generation: %v (%v), want a reset or EOF", name, k, got.err)
		}
		for _, l := range got.lines {
			if !strings.Contains(l, fmt.Sprintf("pid=%d ", old)) {
				t.Errorf("%s: line %q is not from the old generation %d", name, l, old)
			}
		}
	}
	ws, err := proc.Reap(old, 5*time.Second)
	if err != nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the old generation: %v, %v; want killed by SIGKILL", ws, err)
	}
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != cur {
		t.Errorf("after the kill: %v, answered by %d, want the new generation %d", err, respPID(resp), cur)
	}
	if n := d.events().Count("successor_died"); n != 0 {
		t.Errorf("%d successors reported dead; the new generation was never in danger", n)
	}
	d.upgradeAndDrain()
	checkLoad(t, r.Stop())
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestSuccessorCrashLoop: a build that dies right after taking over (it says ready,
// gets "main", and kills itself) is not started again: the draining generation
// takes its drain back and serves on, its slow request is answered, and the load
// sees no failure (the dead build never served). The next upgrade, to a good
// build, is a normal one.
func TestSuccessorCrashLoop(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 20 * time.Second})
	old := d.current()
	slow := slowOn(t, d.addr, old, "/slow?ms=4000", 20*time.Second)
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	copyFile(t, buildVariant(t, "testdata/readydie", "default"), d.bin, 0o755)
	d.signal(syscall.SIGUSR2)
	// The old generation resumes (event=resumed) instead of starting the build again.
	d.waitEvent(0, 15*time.Second, "resumed", logs.KV("pid", old))
	ev := d.events()
	died := ev.Where("successor_died", logs.KV("pid", old))
	if len(died) != 1 || died[0].Get("action") != "resume" {
		t.Errorf("successor_died lines %q, want one, action=resume", died)
	}
	for _, l := range died {
		if !strings.Contains(l.Get("status"), exitText(0, syscall.SIGKILL)) {
			t.Errorf("successor_died status=%q, want how it ended (%s): %s", l.Get("status"), exitText(0, syscall.SIGKILL), l)
		}
	}
	if n := ev.Count("child_started"); n != 1 {
		t.Errorf("%d processes started, want 1: the dying build ran once", n)
	}
	if got := d.pidFromFile(); got != old {
		t.Errorf("PID file names %d, want the resumed generation %d", got, old)
	}
	s := <-slow
	if s.err != nil || s.resp.PID() != old {
		t.Errorf("the slow request: %v, from %d, want an answer from %d", s.err, respPID(s.resp), old)
	}
	// A good build again: a normal upgrade.
	copyFile(t, d.good, d.bin, 0o755)
	prev, _ := d.upgradeAndDrain()
	if prev != old {
		t.Errorf("upgraded from %d, want %d", prev, old)
	}
	checkLoad(t, r.Stop())
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// checkSettled waits for every generation but the current one to exit, then checks
// that the current one is the test's only process left, has no children, and that
// its status is consistent: serving, generation gen, no upgrade in progress.
func checkSettled(t *testing.T, d *demo, ctl string, gen int) {
	t.Helper()
	cur := d.pidFromFile()
	for _, pid := range d.pids {
		if pid != cur {
			if err := waitGone(pid, d.drain+5*time.Second); err != nil {
				t.Error(err)
			}
		}
	}
	if err := proc.LeakCheck(cur); err != nil {
		t.Error(err)
	}
	if kids := proc.Descendants(os.Getpid()); !slices.Equal(kids, []int{cur}) {
		t.Errorf("processes under the test: %v, want only the current generation %d", kids, cur)
	}
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != cur || st.Generation != gen || st.State != "serving" || st.Upgrading != 0 || st.LastError != "" {
		t.Errorf("status %+v; want pid %d, generation %d, serving, no upgrade, no error", st, cur, gen)
	}
}

// TestSignalStorm: twenty SIGUSR2 45ms apart (each once the previous one was
// handled: the kernel keeps one pending SIGUSR2), all to the first generation or
// each to whichever process the PID file names (kill -USR2 $(cat pidfile)), under
// load. Every signal is accounted for by exactly one log line of the process it
// reached: an upgrade started (each one handed over to exactly one new generation) or
// an upgrade refused. Nothing fails, nothing is left behind, and the status agrees.
func TestSignalStorm(t *testing.T) {
	for _, c := range []struct {
		name    string
		pidfile bool
	}{{"one process", false}, {"the PID file", true}} {
		t.Run(c.name, func(t *testing.T) {
			ctl := filepath.Join(t.TempDir(), "control.sock")
			// Upgrades 45ms apart each leave a generation draining the load's slow
			// requests (300ms): more than MaxDraining's default (3) may drain at
			// once, and the oldest would cut its requests (TestMaxDraining's subject).
			d := startDemoSpec(t, demoSpec{control: ctl, args: []string{"-max-draining", "20"}})
			first := d.current()
			var slow <-chan inflight
			if !c.pidfile {
				// A request in flight keeps the first generation alive (draining)
				// through the whole storm, so that every signal reaches a process
				// that handles it.
				slow = slowOn(t, d.addr, first, "/slow?ms=3000", 20*time.Second)
			}
			r := startLoad(t, d.addr, 0.5)
			defer r.Stop()
			sent := map[int]int{} // signals delivered to each process
			start := time.Now()
			for i := 0; i < 20; i++ {
				target := first
				if c.pidfile {
					target = d.pidFromFile()
				}
				if target <= 0 { // kill(0) would signal the test's own process group
					t.Fatalf("the PID file names %d", target)
				}
				before := handledSignals(d, target)
				if err := syscall.Kill(target, syscall.SIGUSR2); err != nil {
					t.Errorf("signal %d to %d: %v", i+1, target, err)
				} else {
					sent[target]++
				}
				if !slices.Contains(d.pids, target) {
					d.pids = append(d.pids, target)
				}
				// The next signal goes once this one was handled (two pending
				// SIGUSR2 are one: a loaded machine would lose signals, not the
				// process), and no sooner than 45ms after the previous one.
				waitHandled(t, d, target, before)
				time.Sleep(time.Until(start.Add(time.Duration(i+1) * 45 * time.Millisecond))) // pacing
			}
			t.Logf("20 SIGUSR2 sent in %v", time.Since(start).Round(time.Millisecond))
			if !c.pidfile && !proc.Alive(first) {
				t.Fatalf("the first generation exited during the storm; its in-flight request should have kept it draining")
			}
			// The last signal may have started an upgrade: wait until none is in progress.
			var ev logs.Log
			if err := proc.WaitFor(func() bool {
				ev = d.events()
				return ev.Count("upgrade_start") == ev.Count("handed_over")+ev.Count("upgrade_failed")
			}, 10*time.Second, "the last upgrade to end"); err != nil {
				t.Fatal(err)
			}
			handed := logs.Ints(ev.Where("handed_over"), "to")
			started := logs.Ints(ev.Where("start"), "pid")
			for _, p := range handed {
				if !slices.Contains(d.pids, p) {
					d.pids = append(d.pids, p)
				}
			}
			if n := ev.Count("upgrade_failed"); n != 0 {
				l, _ := ev.Last("upgrade_failed")
				t.Errorf("%d upgrades failed: %s", n, l)
			}
			if n := ev.Count("handed_over"); n != len(handed) || n != ev.Count("upgrade_start") {
				t.Errorf("%d handovers logged for %d distinct new generations and %d upgrades started", n, len(handed), ev.Count("upgrade_start"))
			}
			if len(started) != len(handed)+1 {
				t.Errorf("%d processes started for %d handovers: %v", len(started), len(handed), started)
			}
			// Each process logged one line per signal it handled: an upgrade it
			// started or refused.
			refused := map[string]int{}
			handled := 0
			for pid, n := range sent {
				pidKV := logs.KV("pid", pid)
				got := ev.Count("upgrade_start", pidKV) + ev.Count("upgrade_refused", pidKV)
				handled += got
				for _, l := range ev.Where("upgrade_refused", pidKV) {
					refused[l.Get("reason")]++
				}
				switch {
				case got > n:
					t.Errorf("pid %d logged %d upgrades started or refused for %d signals", pid, got, n)
				case got < n && pid == d.pidFromFile():
					t.Errorf("pid %d, the current generation, handled %d of the %d signals it got: the others vanished", pid, got, n)
				case got < n && (!c.pidfile || ev.Count("exit", pidKV) == 0):
					// A process that exited may have got a signal on its way out.
					t.Errorf("pid %d handled %d of the %d signals it got, and did not exit: the others vanished", pid, got, n)
				}
			}
			t.Logf("%d upgrades, refused %v; %d of 20 signals handled; generations %v", len(handed), refused, handled, started)
			if !c.pidfile {
				// All twenty reached the first generation, alive throughout.
				if len(handed) != 1 || handled != 20 || refused["in_progress"]+refused["handed_over"] != 19 {
					t.Errorf("%d handovers and refusals %v for 20 signals to one process; want 1 handover and 19 refusals (in_progress or handed_over)", len(handed), refused)
				}
			} else if len(handed) < 2 {
				t.Errorf("only %d handovers from 20 signals 45ms apart to the current generation", len(handed))
			}
			if cur := d.pidFromFile(); len(handed) == 0 || cur != handed[len(handed)-1] {
				t.Errorf("PID file names %d, want the last generation handed over to, %v", cur, handed)
			}
			if slow != nil {
				if s := <-slow; s.err != nil || s.resp.PID() != first {
					t.Errorf("the request in flight on the first generation: %v, from %d", s.err, respPID(s.resp))
				}
			}
			checkSettled(t, d, ctl, len(handed)+1)
			res := r.Stop()
			checkLoad(t, res)
			// Generations of the PID-file storm live 45ms each: only the first and
			// the last are sure to have served the load.
			checkAnswered(t, res, "generation", first, d.pidFromFile())
			d.stop()
			if err := proc.LeakCheck(); err != nil {
				t.Error(err)
			}
		})
	}
}

// handledSignals counts the SIGUSR2 pid handled: each one logs an upgrade started or
// refused.
func handledSignals(d *demo, pid int) int {
	ev, kv := d.events(), logs.KV("pid", pid)
	return ev.Count("upgrade_start", kv) + ev.Count("upgrade_refused", kv)
}

// waitHandled waits until pid has handled more SIGUSR2 than before, or has exited
// (a process on its way out may not handle it).
func waitHandled(t *testing.T, d *demo, pid, before int) {
	t.Helper()
	if err := proc.WaitFor(func() bool { return handledSignals(d, pid) > before || !proc.Alive(pid) },
		10*time.Second, fmt.Sprintf("pid %d to handle its SIGUSR2", pid)); err != nil {
		t.Fatalf("%v\nlog:\n%s", err, tail(d.log(), 30))
	}
}

// TestSIGUSR2DuringDrain: SIGUSR2 to a generation that has handed over and is draining
// is refused and logged; it starts nothing; its slow request still completes.
func TestSIGUSR2DuringDrain(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	first := d.current()
	slow := slowOn(t, d.addr, first, "/slow?ms=2000", 10*time.Second)
	old, cur := d.upgrade()
	for i := 0; i < 3; i++ {
		if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		d.waitEvent(i, 5*time.Second, "upgrade_refused", "reason=handed_over", logs.KV("pid", old), logs.KV("current", cur))
	}
	if kids := proc.Children(old); !slices.Equal(kids, []int{cur}) {
		t.Errorf("children of the draining generation: %v, want only its successor %d", kids, cur)
	}
	if s := <-slow; s.err != nil || s.resp.PID() != old {
		t.Errorf("slow request: %v, from %d, want an answer from %d", s.err, respPID(s.resp), old)
	}
	checkSettled(t, d, ctl, 2)
	if n := d.events().Count("handed_over"); n != 1 {
		t.Errorf("%d handovers, want 1", n)
	}
	if n := d.events().Count("upgrade_start"); n != 1 {
		t.Errorf("%d upgrades started, want 1", n)
	}
	d.stop()
}

// TestSIGTERMDuringUpgrade: SIGTERM while a new generation is starting abandons the
// upgrade (the child is killed and reaped), drains (an in-flight request is
// answered), removes the PID file and exits 0, leaving no process behind.
func TestSIGTERMDuringUpgrade(t *testing.T) {
	d := startDemo(t, demoOpts{args: []string{"-upgrade-timeout", "60s"}})
	pid := d.current()
	copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), d.bin, 0o755)
	d.signal(syscall.SIGUSR2)
	var child int
	if err := proc.WaitFor(func() bool {
		kids := proc.Children(pid)
		if len(kids) == 1 {
			child = kids[0]
		}
		return child != 0 && d.events().Count("start", logs.KV("pid", child)) > 0
	}, 10*time.Second, "the new generation to start"); err != nil {
		t.Fatal(err)
	}
	slow := slowOn(t, d.addr, pid, "/slow?ms=1000", 10*time.Second)
	d.signal(syscall.SIGTERM)
	if s := <-slow; s.err != nil || s.resp.PID() != pid {
		t.Errorf("in-flight request during the stop: %v, from %d", s.err, respPID(s.resp))
	}
	ws := d.exitOf(pid)
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("exit status %v, want 0", ws)
	}
	if st := proc.State(child); st != "" {
		t.Errorf("the abandoned child %d is still there (state %s, parent %d)", child, st, proc.PPid(child))
	}
	if n := d.events().Count("upgrade_failed", "cause=abandoned", logs.KV("child", child)); n != 1 {
		t.Errorf("%d upgrades of %d abandoned (event=upgrade_failed cause=abandoned), want 1:\n%s", n, child, tail(d.log(), 10))
	}
	if _, err := os.Stat(d.pidfile); !os.IsNotExist(err) {
		t.Errorf("PID file after the stop: %v", err)
	}
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestSIGTERMNewDuringOldDrain: SIGTERM to the new generation (kill $(cat pidfile))
// while the old one still drains stops the service: the new generation drains and
// exits 0, and the old one, seeing its successor exit cleanly, does not start a
// replacement; it finishes its own drain and exits. Nothing is left serving.
func TestSIGTERMNewDuringOldDrain(t *testing.T) {
	d := startDemo(t, demoOpts{})
	first := d.current()
	slow := slowOn(t, d.addr, first, "/slow?ms=2000", 10*time.Second)
	old, cur := d.upgrade()
	d.signal(syscall.SIGTERM)
	if err := waitGone(cur, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if s := <-slow; s.err != nil || s.resp.PID() != old {
		t.Errorf("slow request: %v, from %d, want an answer from %d", s.err, respPID(s.resp), old)
	}
	if err := waitGone(old, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ev := d.events()
	if n := ev.Count("successor_died"); n != 0 {
		t.Errorf("the old generation took the stopped successor for dead %d times:\n%s", n, tail(d.log(), 15))
	}
	if n := ev.Count("successor_retired", logs.KV("pid", old), logs.KV("child", cur)); n != 1 {
		t.Errorf("the old generation logged %d retirements of its successor %d, want 1:\n%s", n, cur, tail(d.log(), 15))
	}
	if c, err := net.DialTimeout("tcp", d.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("something still accepts on %s after the stop", d.addr)
	}
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestSIGHUPIgnored: SIGHUP is logged and ignored: same process, same generation,
// nothing started.
func TestSIGHUPIgnored(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	pid := d.current()
	for i := 0; i < 3; i++ {
		d.signal(syscall.SIGHUP)
		d.waitEvent(i, 5*time.Second, "signal_ignored", logs.KV("pid", pid))
	}
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != pid {
		t.Errorf("after SIGHUP: %v, answered by %d, want %d", err, respPID(resp), pid)
	}
	checkSettled(t, d, ctl, 1)
	d.stop()
}

// publicDir returns a new directory every user may traverse (t.TempDir's parent is
// private), for tests that run a process as nobody. It is removed at the end.
func publicDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "handover-public-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for p := filepath.Dir(dir); p != "/"; p = filepath.Dir(p) {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm()&0o001 == 0 {
			sdns.SkipOrFail(t, fmt.Errorf("%s is not traversable by other users; cannot run a process as nobody (set TMPDIR to a directory they can traverse)", p))
		}
	}
	return dir
}

// nobody is the credential of the unprivileged user the tests run processes as.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// TestFDLimit: the demo run under a descriptor limit just above what it needs
// (prlimit --nofile, which execs it: same PID) upgrades repeatedly, and each
// generation inherits the limit and holds as many descriptors as the first. When
// connections use every descriptor, new connections wait in the accept queue (not
// refused), an upgrade fails cleanly with "too many open files" and the old
// generation goes on serving; once descriptors are free again, queued clients are
// answered and the next upgrade succeeds.
func TestFDLimit(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		sdns.SkipOrFail(t, fmt.Errorf("prlimit (util-linux) not installed: %v", err))
	}
	// What the demo needs: its descriptors once ready, plus what an upgrade takes
	// (a duplicate of each socket, the handover channel, a pidfd, exec's pipe).
	probe := startDemoSpec(t, demoSpec{control: filepath.Join(t.TempDir(), "control.sock")})
	base := proc.FDCount(probe.current())
	probe.stop()
	limit := base + 10
	t.Logf("the demo holds %d descriptors when ready; running it with RLIMIT_NOFILE %d", base, limit)

	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl, wrap: []string{prlimit, fmt.Sprintf("--nofile=%d:%d", limit, limit)}})
	if proc.Cmdline(d.current()) == "" || !strings.Contains(proc.Cmdline(d.current()), d.bin) {
		t.Fatalf("pid %d is %q, not the demo (prlimit did not exec it)", d.current(), proc.Cmdline(d.current()))
	}
	first := proc.FDCount(d.current())
	for i := 0; i < 5; i++ {
		old, cur := d.upgrade()
		if err := waitGone(old, d.drain); err != nil {
			t.Fatal(err)
		}
		// (Until its parent has exited, a generation also holds its end of the
		// handover channel.)
		if err := proc.WaitFor(func() bool { return proc.FDCount(cur) == first }, 5*time.Second, "the descriptor count to settle"); err != nil {
			t.Errorf("generation %d holds %d descriptors, the first %d: %v", i+2, proc.FDCount(cur), first, fdTargets(cur))
		}
	}
	cur := d.current()
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", cur))
	if !strings.Contains(string(limits), fmt.Sprintf("Max open files            %-20d %-20d", limit, limit)) {
		t.Errorf("generation 6 does not run under the limit %d:\n%s", limit, limits)
	}

	// Fill the descriptor table with hijacked connections (each answered: accepted).
	var fillers []*wsClient
	for proc.FDCount(cur) < limit {
		w, _ := dialWS(t, d.addr, "/ws")
		fillers = append(fillers, w)
	}
	t.Logf("%d connections fill the table: the server holds %d descriptors", len(fillers), proc.FDCount(cur))
	// A client now waits in the accept queue.
	queued := make(chan inflight, 1)
	go func() {
		resp, err := rawhttp.Get(d.addr, "/", 20*time.Second)
		queued <- inflight{resp: resp, err: err}
	}()
	d.signal(syscall.SIGUSR2)
	got := d.waitEvent(0, 10*time.Second, "upgrade_failed")
	t.Log(got)
	failedUpgrade{causes: []string{"start"}, facts: []string{syscall.EMFILE.Error()}}.check(t, "descriptors exhausted", got)
	if !proc.Alive(cur) || d.pidFromFile() != cur {
		t.Fatalf("the serving generation %d is gone or replaced (PID file %d)", cur, d.pidFromFile())
	}
	select {
	case q := <-queued:
		t.Fatalf("the queued client was answered while no descriptor was free: %v", q.err)
	default:
	}
	// Free one descriptor: the queued client is answered by the same generation.
	fillers[0].c.Close()
	fillers = fillers[1:]
	if q := <-queued; q.err != nil || q.resp.PID() != cur {
		t.Errorf("the queued client: %v, answered by %d, want %d", q.err, respPID(q.resp), cur)
	}
	for _, w := range fillers {
		w.c.Close()
	}
	fillers = nil
	if err := proc.WaitFor(func() bool { return proc.FDCount(cur) == first }, 10*time.Second, "the descriptors to be freed"); err != nil {
		t.Fatal(err)
	}
	st, err := ctlStatus(t, ctl)
	if err != nil || st.State != "serving" || st.LastError != got.Get("err") {
		t.Errorf("status after the failed upgrade: %+v, %v", st, err)
	}
	d.upgradeAndDrain()
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestPIDFileFaults: a PID file that cannot be written, or is a symlink, stops the
// demo at start with a clear error (and binds nothing), fails an upgrade whose new
// generation could not write it (the old one goes on serving), and is never written
// or removed through a symlink: the symlink's target is untouched.
func TestPIDFileFaults(t *testing.T) {
	const precious = "precious data\n"
	// startFails starts the demo and checks that it exits 1 before it is ready, having
	// bound nothing, and that its error names the facts given (a path, an errno's text).
	startFails := func(t *testing.T, s demoSpec, facts ...string) {
		t.Helper()
		d := launchDemo(t, s)
		ws := d.exitOf(d.current())
		t.Logf("%v: %s", ws, strings.TrimSpace(d.log()))
		if !ws.Exited() || ws.ExitStatus() != 1 {
			t.Errorf("exit status %v, want 1", ws)
		}
		if n := d.events().Count("ready"); n > 0 {
			t.Errorf("the demo became ready")
		}
		for _, f := range facts {
			if !strings.Contains(d.log(), f) {
				t.Errorf("output %q does not name %q", d.log(), f)
			}
		}
		if c, err := net.DialTimeout("tcp", d.addr, time.Second); err == nil {
			c.Close()
			t.Errorf("something accepts on %s", d.addr)
		}
	}
	// upgradeFails sends SIGUSR2 and checks the upgrade fails as want says, while the
	// old generation serves on.
	upgradeFails := func(t *testing.T, d *demo, want failedUpgrade) {
		t.Helper()
		serving := d.current()
		before := d.events().Count("upgrade_failed")
		d.signal(syscall.SIGUSR2)
		got := d.waitEvent(before, 10*time.Second, "upgrade_failed")
		t.Log(got)
		want.check(t, "PID file", got)
		if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
			t.Errorf("after the failed upgrade: %v, answered by %d, want %d", err, respPID(resp), serving)
		}
		if kids := proc.Children(serving); len(kids) > 0 {
			t.Errorf("the failed new generation was not reaped: %v", kids)
		}
	}
	symlinkTo := func(t *testing.T, target, link string) {
		t.Helper()
		if err := os.WriteFile(target, []byte(precious), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	untouched := func(t *testing.T, target, link string) {
		t.Helper()
		if b, err := os.ReadFile(target); err != nil || string(b) != precious {
			t.Errorf("the symlink's target now holds %q (%v), want %q", b, err, precious)
		}
		if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
			t.Errorf("the symlink at the PID file's path was replaced or removed: %v", err)
		}
	}

	t.Run("directory missing", func(t *testing.T) {
		dir := t.TempDir()
		startFails(t, demoSpec{dir: dir, pidfile: filepath.Join(dir, "missing", "demo.pid")}, filepath.Join(dir, "missing"), syscall.ENOENT.Error())
	})
	t.Run("directory read-only at start", func(t *testing.T) {
		dir := publicDir(t)
		piddir := filepath.Join(dir, "run")
		os.Mkdir(piddir, 0o555)
		os.Chown(piddir, int(nobody.Uid), int(nobody.Gid))
		startFails(t, demoSpec{dir: dir, pidfile: filepath.Join(piddir, "demo.pid"), cred: nobody}, piddir, syscall.EACCES.Error())
	})
	t.Run("directory read-only at upgrade", func(t *testing.T) {
		dir := publicDir(t)
		piddir := filepath.Join(dir, "run")
		os.Mkdir(piddir, 0o755)
		os.Chown(piddir, int(nobody.Uid), int(nobody.Gid))
		d := startDemoSpec(t, demoSpec{dir: dir, pidfile: filepath.Join(piddir, "demo.pid"), cred: nobody})
		if err := os.Chmod(piddir, 0o555); err != nil {
			t.Fatal(err)
		}
		// The new generation cannot write the PID file: it exits 1 before it is ready.
		upgradeFails(t, d, failedUpgrade{causes: []string{"exited"}, facts: []string{exitText(1, 0), piddir, syscall.EACCES.Error()}})
		if p := d.pidFromFile(); p != d.current() {
			t.Errorf("PID file names %d, want %d", p, d.current())
		}
		os.Chmod(piddir, 0o755)
		d.upgradeAndDrain()
		d.stop()
	})
	t.Run("symlink at start", func(t *testing.T) {
		dir := t.TempDir()
		target, link := filepath.Join(dir, "target"), filepath.Join(dir, "demo.pid")
		symlinkTo(t, target, link)
		startFails(t, demoSpec{dir: dir, pidfile: link}, link)
		untouched(t, target, link)
	})
	t.Run("symlink planted before an upgrade", func(t *testing.T) {
		d := startDemo(t, demoOpts{})
		target := filepath.Join(d.dir, "target")
		symlinkTo(t, target, d.pidfile)
		upgradeFails(t, d, failedUpgrade{causes: []string{"exited"}, facts: []string{exitText(1, 0), d.pidfile}})
		untouched(t, target, d.pidfile)
		os.Remove(d.pidfile)
		old, cur := d.upgrade()
		if st, err := os.Lstat(d.pidfile); err != nil || !st.Mode().IsRegular() {
			t.Errorf("PID file after the upgrade to %d: %v, %v", cur, st, err)
		}
		if err := waitGone(old, d.drain); err != nil {
			t.Error(err)
		}
		d.stop()
	})
	t.Run("symlink planted before the stop", func(t *testing.T) {
		// The target even names the process, which is what would make a stop that
		// followed the link remove it.
		d := startDemo(t, demoOpts{})
		pid := d.current()
		target := filepath.Join(d.dir, "target")
		symlinkTo(t, target, d.pidfile)
		os.WriteFile(target, []byte(strconv.Itoa(pid)+"\n"), 0o600)
		d.signal(syscall.SIGTERM)
		if ws := d.exitOf(pid); !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("exit status %v, want 0", ws)
		}
		if b, err := os.ReadFile(target); err != nil || string(b) != strconv.Itoa(pid)+"\n" {
			t.Errorf("the target was changed or removed through the symlink: %q, %v", b, err)
		}
		if _, err := os.Lstat(d.pidfile); err != nil {
			t.Errorf("the symlink was removed: %v", err)
		}
	})
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestBadBinaries: deploys TestFailedUpgrades does not try. Each failed upgrade logs
// its cause, leaves the old generation serving under load with no failure (it answers
// the load after its failed upgrade), and the next good upgrade works. A wrapper
// script that execs the real build is a good deploy.
func TestBadBinaries(t *testing.T) {
	d := startDemo(t, demoOpts{args: []string{"-upgrade-timeout", "5s"}})
	r := startLoad(t, d.addr, 0.5)
	defer r.Stop()
	good, err := os.ReadFile(d.good)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		deploy func()
		want   failedUpgrade
	}{
		{"empty file", func() { writeFile(t, d.bin, nil, 0o755) },
			failedUpgrade{causes: []string{"start"}, facts: []string{d.bin, syscall.ENOEXEC.Error()}}},
		// The kernel may refuse half an ELF file, or load it and let it crash.
		{"truncated build (half the binary)", func() { writeFile(t, d.bin, good[:len(good)/2], 0o755) },
			failedUpgrade{causes: []string{"start", "exited"}, facts: []string{"signal: "},
				alt: [][]string{{syscall.ENOEXEC.Error()}, {syscall.EIO.Error()}}}},
		{"a directory", func() {
			os.Remove(d.bin)
			if err := os.Mkdir(d.bin, 0o755); err != nil {
				t.Fatal(err)
			}
		}, failedUpgrade{causes: []string{"start"}, facts: []string{d.bin}}},
		{"dangling symlink", func() {
			os.RemoveAll(d.bin)
			if err := os.Symlink(filepath.Join(d.dir, "releases", "missing"), d.bin); err != nil {
				t.Fatal(err)
			}
		}, failedUpgrade{causes: []string{"start"}, facts: []string{d.bin}}},
		// execve says ENOENT for the missing interpreter.
		{"script whose interpreter is missing", func() {
			os.Remove(d.bin)
			writeFile(t, d.bin, []byte("#!/nonexistent/interpreter\n"), 0o755)
		}, failedUpgrade{causes: []string{"start"}, facts: []string{d.bin, syscall.ENOENT.Error()}}},
		{"script that hangs without becoming ready", func() {
			writeFile(t, d.bin, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755)
		}, failedUpgrade{causes: []string{"timeout"}}},
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
		if p := d.pidFromFile(); p != serving {
			t.Errorf("%s: PID file names %d, want %d", c.name, p, serving)
		}
		if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
			t.Errorf("%s: after the failed upgrade: %v, answered by %d, want %d", c.name, err, respPID(resp), serving)
		}
		if kids := proc.Children(serving); len(kids) > 0 {
			t.Errorf("%s: the serving process still has children %v", c.name, kids)
		}
		w.close(t, r)
		windows = append(windows, w)
		os.RemoveAll(d.bin)
		copyFile(t, d.good, d.bin, 0o755)
		d.upgradeAndDrain()
	}
	// A wrapper script that execs the build (same PID) is a good deploy.
	real := filepath.Join(d.dir, "handover-demo.real")
	copyFile(t, d.good, real, 0o755)
	writeFile(t, d.bin, []byte("#!/bin/sh\nexec "+real+" \"$@\"\n"), 0o755)
	old, cur := d.upgrade()
	if cmd := proc.Cmdline(cur); !strings.HasPrefix(cmd, real+" ") {
		t.Errorf("the generation started through the wrapper runs %q, want %s", cmd, real)
	}
	if err := waitGone(old, d.drain); err != nil {
		t.Error(err)
	}
	w := openWindow(r, "the generation started through the wrapper", cur)
	w.close(t, r)
	windows = append(windows, w)
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, windows)
	checkAnswered(t, res, "generation", d.pids...)
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// listenerFile returns a listening TCP socket on loopback as a file to pass, and its
// inode.
func listenerFile(t testing.TB) (*os.File, string) {
	t.Helper()
	l := listenLoopback(t)
	defer l.Close() // the file below is a duplicate: the socket stays open with it
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, inodeOf(t, f)
}

func inodeOf(t testing.TB, f *os.File) string {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.Sys().(*syscall.Stat_t).Ino, 10)
}

// TestBadListenFDs: LISTEN_FDS (with LISTEN_PID naming the demo, as systemd sets it)
// or the handover marker describing descriptors that are closed, regular files or the
// wrong kind of socket: the demo exits 1 with a message naming the descriptor and
// what it is, and binds nothing of its own. LISTEN_PID naming another process makes
// it ignore the descriptors (logged) and bind its address.
func TestBadListenFDs(t *testing.T) {
	// asSystemd runs the demo with LISTEN_PID set to its own PID.
	asSystemd := []string{"/bin/sh", "-c", `export LISTEN_PID=$$; exec "$@"`, "sh"}
	regular, err := os.Create(filepath.Join(t.TempDir(), "regular-file"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	sock, _ := listenerFile(t)
	udp := listenPort(t, "udp").(net.PacketConn)
	defer udp.Close()
	udpFile, _ := udp.(*net.UDPConn).File()
	defer udpFile.Close()
	conn, err := net.Dial("tcp", rawListen(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connFile, _ := conn.(*net.TCPConn).File()
	defer connFile.Close()
	marker := func(chanFD int) string {
		return fmt.Sprintf("HANDOVER_PARENT=pid=%d,ppid=%d,chan=%d,gen=2", os.Getpid(), os.Getpid(), chanFD)
	}
	for _, c := range []struct {
		name  string
		wrap  []string
		env   []string
		files []*os.File
		want  []string
	}{
		// want: the facts the error must name (the descriptor, its name, the
		// variable, the address); what the descriptor is, in words, is the
		// activation package's unit tests' business.
		{"a regular file", asSystemd, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http"}, []*os.File{regular},
			[]string{"fd 3", `"http"`}},
		{"a UDP socket", asSystemd, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http"}, []*os.File{udpFile},
			[]string{"fd 3", `"http"`, udp.LocalAddr().String()}},
		{"a connected TCP socket", asSystemd, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http"}, []*os.File{connFile},
			[]string{"fd 3", `"http"`}},
		{"one descriptor fewer than LISTEN_FDS", asSystemd, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=http:admin"}, []*os.File{sock},
			[]string{"LISTEN_FDS=2", "fd 4", `"admin"`}},
		{"no descriptor at all", asSystemd, []string{"LISTEN_FDS=1"}, nil,
			[]string{"LISTEN_FDS=1", "fd 3"}},
		{"a parent's marker with a closed channel", nil, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http", marker(9)}, []*os.File{sock},
			[]string{"HANDOVER_PARENT", "fd 9"}},
		{"a parent's marker with a regular file as the channel", nil, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http", marker(4)}, []*os.File{sock, regular},
			[]string{"HANDOVER_PARENT", "fd 4"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := launchDemo(t, demoSpec{wrap: c.wrap, env: c.env, files: c.files})
			ws := d.exitOf(d.current())
			out := strings.TrimSpace(d.log())
			t.Logf("%v: %s", ws, out)
			if !ws.Exited() || ws.ExitStatus() != 1 {
				t.Errorf("exit status %v, want 1", ws)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("the error does not name %q", w)
				}
			}
			if n := d.events().Count("ready"); n > 0 {
				t.Errorf("the demo became ready")
			}
			if c, err := net.DialTimeout("tcp", d.addr, time.Second); err == nil {
				c.Close()
				t.Errorf("the demo bound its own address %s instead of failing", d.addr)
			}
		})
	}
	t.Run("LISTEN_PID of another process", func(t *testing.T) {
		ctl := filepath.Join(t.TempDir(), "control.sock")
		d := startDemoSpec(t, demoSpec{control: ctl, env: []string{"LISTEN_PID=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=http"}, files: []*os.File{sock}})
		if n := d.events().Count("inherit_ignored", logs.KV("pid", d.current())); n != 1 {
			t.Errorf("%d event=inherit_ignored logged, want the descriptors ignored once (LISTEN_PID=1 names another process)", n)
		}
		checkBoundOnly(t, d, ctl, "bound")
		d.stop()
	})
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// rawListen returns the address of a listener that accepts and holds connections
// until the test ends.
func rawListen(t testing.TB) string {
	t.Helper()
	l := listenLoopback(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return l.Addr().String()
}

// checkBoundOnly checks through the control socket that the demo serves only its
// -listen address and the control socket, from source ("bound" for the first
// generation, "parent" for the next ones).
func checkBoundOnly(t *testing.T, d *demo, ctl, source string) {
	t.Helper()
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range st.Listeners {
		got = append(got, l.Network+":"+l.Addr+" ("+l.Source+")")
	}
	want := []string{"unix:" + ctl + " (" + source + ")", "tcp:" + d.addr + " (" + source + ")"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the demo serves %v, want only %v", got, want)
	}
}

// TestStrayInheritedFD: descriptors the demo inherits without any LISTEN_* variable
// (a file and a listening socket at fds 3 and 4, as a careless parent leaks them), or
// with LISTEN_FDS but no LISTEN_PID, are not adopted: the demo binds its own address,
// and no later generation inherits them.
func TestStrayInheritedFD(t *testing.T) {
	for _, c := range []struct {
		name    string
		env     []string
		ignored int // event=inherit_ignored lines: the variables were seen and refused
	}{
		{"no LISTEN variables", nil, 0},
		{"LISTEN_FDS without LISTEN_PID", []string{"LISTEN_FDS=2"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			stray, err := os.Create(filepath.Join(t.TempDir(), "stray-descriptor"))
			if err != nil {
				t.Fatal(err)
			}
			defer stray.Close()
			sock, inode := listenerFile(t)
			ctl := filepath.Join(t.TempDir(), "control.sock")
			d := startDemoSpec(t, demoSpec{control: ctl, env: c.env, files: []*os.File{stray, sock}})
			// The first generation holds them (they were inherited: nothing can undo
			// that), so the test means something.
			if targets := strings.Join(fdTargets(d.current()), " "); !strings.Contains(targets, "3->"+stray.Name()) || !strings.Contains(targets, "socket:["+inode+"]") {
				t.Fatalf("the first generation does not hold the stray descriptors: %s", targets)
			}
			ev := d.events()
			if n := ev.Count("inherit_ignored"); n != c.ignored {
				t.Errorf("%d event=inherit_ignored logged, want %d:\n%s", n, c.ignored, d.log())
			}
			// Nothing was adopted, so nothing was left unclaimed either.
			if n := ev.Count("fd_unclaimed"); n != 0 {
				t.Errorf("%d inherited descriptors reported unclaimed: they were adopted:\n%s", n, d.log())
			}
			checkBoundOnly(t, d, ctl, "bound")
			_, cur := d.upgrade()
			for _, target := range fdTargets(cur) {
				if strings.Contains(target, stray.Name()) || strings.Contains(target, "socket:["+inode+"]") {
					t.Errorf("the next generation inherited the stray descriptor: %s", target)
				}
			}
			checkBoundOnly(t, d, ctl, "parent")
			d.stop()
		})
	}
}
