package tests

// Issue 17's security audit, end to end: the control socket of a process out of
// descriptors, an upgrade asked for by a client that has gone, a helper that leaves
// its child's process group, a failed build's fd-store changes, terminal escapes in a
// failed child's stderr, and the last good build of an interpreted program deployed
// as releases behind a symlink.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"golang.org/x/sys/unix"
)

// lowerFileLimit sets the soft RLIMIT_NOFILE of the running process pid to 3: its
// open descriptors stay, every new one fails with EMFILE (fds 0-2 are in use). It
// returns the function that gives the limit back.
func lowerFileLimit(t *testing.T, pid int) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 3, Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	done := false
	restore = func() {
		if !done {
			done = true
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}

// statusAnswer is what `handover status -json` answered, in a goroutine.
type statusAnswer struct {
	st  graceful.Status
	err error
}

// checkControlOutOfDescriptors: the control socket ctl of process pid (the library's,
// or a master's), whose log read returns, while pid has no descriptor free. A
// `handover reload` that gives up (it sends "upgrade" and closes) and a `handover
// status` that waits both sit in the socket's queue: the server's accept fails
// (event control_accept_failed) and nothing is answered. Once descriptors are free,
// the server accepts again: the status is answered, and the upgrade whose client has
// gone is not run (event control_abandoned; the generation is still gen, no upgrade
// recorded). A reload asked for then runs.
func checkControlOutOfDescriptors(t *testing.T, pid int, ctl string, read func() string, gen int) {
	t.Helper()
	before := len(logs.Parse(read()).Where("control_accept_failed"))
	restore := lowerFileLimit(t, pid)
	gone, err := net.DialTimeout("unix", ctl, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(gone, "upgrade\n")
	gone.Close()
	answered := make(chan statusAnswer, 1)
	go func() {
		st, err := ctlStatus(t, ctl)
		answered <- statusAnswer{st, err}
	}()
	waitLogged(t, read, before, 10*time.Second, "control_accept_failed")
	select {
	case a := <-answered:
		t.Fatalf("a status request was answered while the server had no descriptor free: %+v, %v", a.st, a.err)
	default:
	}
	restore()
	var a statusAnswer
	select {
	case a = <-answered:
	case <-time.After(20 * time.Second):
		t.Fatalf("no answer to the status request once descriptors were free\nlog:\n%s", tail(read(), 20))
	}
	if a.err != nil || a.st.Generation != gen || a.st.State != "serving" {
		t.Fatalf("the status once descriptors were free: %+v, %v", a.st, a.err)
	}
	waitLogged(t, read, 0, 10*time.Second, "control_abandoned")
	st, err := ctlStatus(t, ctl)
	if err != nil || st.Generation != gen || len(st.Upgrades) != 0 || logs.Parse(read()).Count("upgrade_start") != 0 {
		t.Errorf("the upgrade whose client had gone ran: %+v, %v", st, err)
	}
	out, err := exec.Command(proc.Binary(t, handoverPkg), "reload", "-control", ctl, "-timeout", "30s").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "upgraded: PID ") {
		t.Errorf("handover reload afterwards: %v: %s", err, out)
	}
	if st, err := ctlStatus(t, ctl); err != nil || st.Generation != gen+1 {
		t.Errorf("after the reload: %+v, %v; want generation %d", st, err, gen+1)
	}
}

// TestControlOutOfDescriptors: security audit item 1. A process that runs out of
// descriptors has its control socket back once they are free, and does not run an
// upgrade queued meanwhile by a client that gave up: for a process built with the
// library (the demo), for `handover run`'s master, and for examples/lines, whose
// accept loop the README teaches (a line sent while it had no descriptor free is
// answered once it has). Before, the examples' loop returned at the first failed
// accept and the queued upgrade ran, unasked. The limit is lowered on the running
// process (prlimit), to 3.
func TestControlOutOfDescriptors(t *testing.T) {
	t.Run("library", func(t *testing.T) {
		ctl := filepath.Join(t.TempDir(), "control.sock")
		d := startDemoSpec(t, demoSpec{control: ctl})
		checkControlOutOfDescriptors(t, d.current(), ctl, d.log, 1)
		d.pids = append(d.pids, d.waitNewPID(10*time.Second, d.pids...))
		d.stop()
	})
	t.Run("handover run", func(t *testing.T) {
		m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
		checkControlOutOfDescriptors(t, m.host, m.ctl, m.log, 1)
		m.waitSettled(15 * time.Second)
		checkStoppedClean(t, m)
	})
	t.Run("examples/lines", func(t *testing.T) {
		addr := freePort(t)
		p := startProgram(t, proc.Binary(t, examplesPkg+"lines"), "-listen", addr)
		waitListening(t, addr)
		restore := lowerFileLimit(t, p.current())
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintln(c, "hello")
		// Its accept fails now (EMFILE). The program logs nothing to wait for: give
		// it a moment, so that a loop that returns at the first failure has. (The
		// line must be answered below whatever this wait.)
		time.Sleep(300 * time.Millisecond)
		restore()
		reply, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || reply != fmt.Sprintf("%d hello\n", p.current()) {
			t.Errorf("the line sent while the server had no descriptor free: %q, %v", reply, err)
		}
		p.stop()
	})
}

// readPIDFile waits for the file at path and returns the PID it holds.
func readPIDFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	if err := proc.WaitFor(func() bool {
		b, err := os.ReadFile(path)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}, 10*time.Second, path); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestRunHelperLeavesGroup: security audit item 2. Each child of a Python server
// under `handover run` leaves a helper behind that calls setsid (a session and a
// process group of its own: the old child's stop signal and the SIGKILL of its group
// do not reach it) and serves on the listening socket, ignoring SIGTERM. After an
// upgrade, at the old child's drain deadline, the master kills the old child's
// helper (nothing owns it: it is in no child's group, and the generation in its
// environment is the dead child's) and reaps it; the new child's helper is kept.
// Then every answer comes from the new generation. Before, the old helper served the
// old code for ever.
func TestRunHelperLeavesGroup(t *testing.T) {
	python := needTool(t, "python3", "/usr/bin/python3")
	pids := filepath.Join(t.TempDir(), "helper")
	m := startMaster(t, masterSpec{prog: []string{python, abs(t, pythonServer), "--escape", pids}, drain: 2 * time.Second})
	child1 := m.status().Child
	helper1 := readPIDFile(t, pids+".1")
	if f := strings.Fields(statLine(helper1)); len(f) < 6 || f[3] != strconv.Itoa(m.host) || f[4] == strconv.Itoa(child1) || f[4] != f[5] {
		t.Fatalf("the helper %d is not an orphan of the master (%d) in a session and process group of its own: stat %v", helper1, m.host, f)
	}
	if out, code := m.reload(); code != 0 {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	child2 := m.status().Child
	helper2 := readPIDFile(t, pids+".2")
	if err := proc.WaitFor(func() bool { return proc.State(helper1) == "" }, 2*time.Second+10*time.Second, "the old child's helper to be killed and reaped"); err != nil {
		t.Fatalf("%v (state %q)", err, proc.State(helper1))
	}
	ev := logs.Parse(m.log())
	if ev.Count("drain_deadline", logs.KV("child", child1), "leftovers=1") != 1 {
		t.Errorf("the master did not log killing what the old child left at its drain deadline:\n%s", tail(m.log(), 20))
	}
	if !proc.Alive(helper2) {
		t.Errorf("the new child's helper %d was killed", helper2)
	}
	seen := map[int]int{}
	for i := 0; i < 40; i++ {
		resp, err := rawhttp.Get(m.addr, "/", 5*time.Second)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		seen[resp.PID()]++
	}
	for pid, n := range seen {
		if pid != child2 && pid != helper2 {
			t.Errorf("%d answers came from %d, neither the new child %d nor its helper %d (old child %d, its helper %d)", n, pid, child2, helper2, child1, helper1)
		}
	}
	checkStoppedClean(t, m)
}

// statLine is /proc/PID/stat after the command name: state ppid pgrp session ...,
// with the PID in front.
func statLine(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = strconv.Itoa(pid) + " x" + s[i+1:]
	}
	return s
}

// TestRunFDStoreFailedBuild: security audit item 3, end to end. A program under
// `handover run` keeps its keys in the master's fd store; a new build that removes
// them, stores a descriptor of its own and exits before it is ready (after a
// BARRIER=1, so that the master has handled both) fails its upgrade and leaves the
// store as it was: the next child gets exactly the keys the first one stored, and
// not the failed build's descriptor. Before, the failed build's changes stayed.
func TestRunFDStoreFailedBuild(t *testing.T) {
	python := needTool(t, "python3", "/usr/bin/python3")
	dir := t.TempDir()
	mode, out := filepath.Join(dir, "mode"), filepath.Join(dir, "out")
	writeFile(t, mode, []byte("good\n"), 0o644)
	m := startMaster(t, masterSpec{prog: []string{python, abs(t, "testdata/run/fdstore.py"), mode, out}})
	if b, err := os.ReadFile(out + ".1"); err != nil || string(b) != "names=http\nkeys=\n" {
		t.Fatalf("the first child: %q, %v", b, err)
	}
	writeFile(t, mode, []byte("bad\n"), 0o644)
	if msg, code := m.reload(); code != 1 || !strings.Contains(msg, "exited before it was ready") || !strings.Contains(msg, "the bad build gives up") {
		t.Errorf("the bad build's reload: exit %d\n%s", code, msg)
	}
	ev := logs.Parse(m.log())
	if d, ok := ev.Last("fdstore_discarded"); !ok || d.Get("changes") != "2" || d.Get("closed") != "1" || ev.Count("fdstore_held", logs.KV("child", d.Get("child"))) != 2 {
		t.Errorf("the bad build's two changes were not held and discarded:\n%s", tail(m.log(), 20))
	}
	writeFile(t, mode, []byte("good\n"), 0o644)
	if msg, code := m.reload(); code != 0 {
		t.Fatalf("the good build's reload: exit %d\n%s", code, msg)
	}
	if b, err := os.ReadFile(out + ".2"); err != nil || string(b) != "names=http:keys\nkeys=keys of generation 1\n" {
		t.Errorf("the child after the failed build was given %q, %v; want the first child's keys only", b, err)
	}
	m.waitSettled(15 * time.Second)
	checkStoppedClean(t, m)
}

// escapingBuild is a new build that fails at start after writing terminal escapes
// (a color, a window title, a bell) and a byte that is not UTF-8 on stderr.
const escapingBuild = "#!/bin/sh\nprintf '\\033[31mred alert\\033[0m \\033]0;pwned\\007\\n' >&2\nprintf 'bad \\377 byte\\n' >&2\nexit 1\n"

// checkNoEscapes checks that text (what the operator's terminal would show) has
// the escaping build's lines made visible, and no control character but newlines.
func checkNoEscapes(t *testing.T, what, text string) {
	t.Helper()
	if !strings.Contains(text, `\x1b[31mred alert\x1b[0m \x1b]0;pwned\x07`) || !strings.Contains(text, `bad \xff byte`) {
		t.Errorf("%s does not show the failed build's stderr, escaped:\n%s", what, text)
	}
	for _, r := range text {
		if r < 0x20 && r != '\n' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == 0xfffd {
			t.Errorf("%s holds control character %U:\n%q", what, r, text)
			return
		}
	}
}

// TestTerminalEscapes: security audit item 7. A failed new build's last stderr
// lines, with terminal escapes and a byte that is not UTF-8, reach `handover
// reload`, `handover status` and its JSON escaped (\x1b, \x07, \xff), for a master's
// child and for a generation of the library. Before, they reached the terminal raw.
func TestTerminalEscapes(t *testing.T) {
	check := func(t *testing.T, ctl string) {
		t.Helper()
		code, stdout, stderr := reloadCLI(t, ctl)
		if code != 1 || stdout != "" {
			t.Errorf("handover reload: exit %d, stdout %q", code, stdout)
		}
		checkNoEscapes(t, "handover reload", stderr)
		text, err := exec.Command(proc.Binary(t, handoverPkg), "status", "-control", ctl).CombinedOutput()
		if err != nil {
			t.Fatalf("handover status: %v\n%s", err, text)
		}
		checkNoEscapes(t, "handover status", string(text))
		st, err := ctlStatus(t, ctl)
		if err != nil || len(st.Upgrades) == 0 {
			t.Fatalf("handover status -json: %+v, %v", st, err)
		}
		b, _ := json.Marshal(struct{ LastError, Stderr string }{st.LastError, st.Upgrades[len(st.Upgrades)-1].Stderr})
		var decoded struct{ LastError, Stderr string }
		json.Unmarshal(b, &decoded)
		checkNoEscapes(t, "the last error", decoded.LastError)
		checkNoEscapes(t, "the upgrade's record", decoded.Stderr)
	}
	t.Run("handover run", func(t *testing.T) {
		app := filepath.Join(t.TempDir(), "app")
		copyFile(t, proc.Binary(t, demoPkg), app, 0o755)
		m := startMaster(t, masterSpec{prog: []string{app}})
		writeFile(t, app, []byte(escapingBuild), 0o755)
		check(t, m.ctl)
		checkStoppedClean(t, m)
	})
	t.Run("library", func(t *testing.T) {
		ctl := filepath.Join(t.TempDir(), "control.sock")
		d := startDemoSpec(t, demoSpec{control: ctl})
		writeFile(t, d.bin, []byte(escapingBuild), 0o755)
		check(t, ctl)
		d.stop()
	})
}

// release writes releases/N/app.py under base: the Python test server, answering
// "release=N"; a bad one dies a second after it is ready (and says so on stderr).
func release(t *testing.T, base string, n int, bad bool) {
	t.Helper()
	src, err := os.ReadFile(pythonServer)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(src), "lang=python", fmt.Sprintf("lang=python release=%d", n))
	if bad {
		const anchor = "\n    signal.signal(signal.SIGTERM, lambda"
		if !strings.Contains(s, anchor) {
			t.Fatalf("%s has no line %q to put the bad release's death before", pythonServer, anchor)
		}
		s = strings.Replace(s, anchor, "\n    threading.Timer(1.0, lambda: (print('release dying after a second', file=sys.stderr, flush=True), os._exit(1))).start()"+anchor, 1)
	}
	dir := filepath.Join(base, "releases", strconv.Itoa(n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "app.py"), []byte(s), 0o644)
}

// switchCurrent points base/current at releases/N, atomically (rename over it).
func switchCurrent(t *testing.T, base string, n int) {
	t.Helper()
	tmp := filepath.Join(base, "current.new")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join("releases", strconv.Itoa(n)), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(base, "current")); err != nil {
		t.Fatal(err)
	}
}

// answersRelease checks that GET / is answered by the serving child with release n.
func answersRelease(t *testing.T, m *master, n int) {
	t.Helper()
	st := m.status()
	resp, err := rawhttp.Get(m.addr, "/", 5*time.Second)
	if err != nil || resp.PID() != st.Child || !strings.Contains(string(resp.Body), fmt.Sprintf("release=%d\n", n)) {
		t.Errorf("GET /: %v, %q from %d; want release=%d from the serving child %d", err, respBody(resp), respPID(resp), n, st.Child)
	}
}

// TestRunLastGoodRelease: issue 17, the trial's item 5. A Python program deployed as
// releases behind a symlink (current -> releases/N), run as `python3
// /srv/app/current/app.py`, or as `python3 app.py` from /srv/app/current: the kept
// build is the interpreter, the code is reached through the symlink. The master
// resolves the symlink when it starts a child from disk and keeps the resolved
// arguments and working directory with the last good build. A broken release 2
// takes over and dies within its probation: the replacement runs release 1 (its
// answers say so), `handover status` calls release 1 the last good build, and
// release 3, deployed next, upgrades through the symlink. Code edited in place (no
// symlink) cannot be kept: status says it is read from disk again, and does not
// call it the last good build. Before, the replacement ran current/app.py, release
// 2 again, and status called it the last good build.
func TestRunLastGoodRelease(t *testing.T) {
	python := needTool(t, "python3", "/usr/bin/python3")
	for _, c := range []struct {
		name string
		spec func(base string) masterSpec
	}{
		{"via path", func(base string) masterSpec {
			return masterSpec{prog: []string{python, filepath.Join(base, "current", "app.py")}}
		}},
		{"via cwd", func(base string) masterSpec {
			return masterSpec{prog: []string{python, "app.py"}, cwd: filepath.Join(base, "current")}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			base, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			release(t, base, 1, false)
			switchCurrent(t, base, 1)
			s := c.spec(base)
			s.drain, s.flags = 5*time.Second, []string{"-settle", "3s"}
			m := startMaster(t, s)
			rel1 := filepath.Join(base, "releases", "1")
			if st := m.status(); !strings.Contains(st.ChildExecutable, rel1) || !strings.HasSuffix(st.ChildExecutable, "(the last good build)") {
				t.Errorf("the first child runs %q; want release 1, the last good build", st.ChildExecutable)
			}
			answersRelease(t, m, 1)

			release(t, base, 2, true)
			switchCurrent(t, base, 2)
			out, code := m.reload()
			if code != 1 || !strings.Contains(out, "died") || !strings.Contains(out, "release dying after a second") || !strings.Contains(out, rel1) {
				t.Errorf("reload of the broken release: exit %d, want 1 naming the death and release 1 as the last good build:\n%s", code, out)
			}
			var st graceful.Status
			if err := proc.WaitFor(func() bool {
				st = m.status()
				return st.State == "serving" && st.Generation == 3
			}, 10*time.Second, "the replacement to serve"); err != nil {
				t.Fatalf("%v: %+v", err, st)
			}
			answersRelease(t, m, 1)
			if !strings.Contains(st.ChildExecutable, rel1) || !strings.HasSuffix(st.ChildExecutable, "(the last good build)") || strings.Contains(st.ChildExecutable, "releases/2") {
				t.Errorf("the replacement runs %q; want release 1, the last good build", st.ChildExecutable)
			}
			if ev := logs.Parse(m.log()); ev.Count("child_started", logs.KV("child", st.Child), "trigger=replacement", "build=last_good") != 1 {
				t.Errorf("the replacement was not started from the last good build:\n%s", tail(m.log(), 20))
			}

			release(t, base, 3, false)
			switchCurrent(t, base, 3)
			if out, code := m.reload(); code != 0 {
				t.Fatalf("reload of release 3: exit %d\n%s", code, out)
			}
			answersRelease(t, m, 3)
			m.waitSettled(15 * time.Second)
			checkStoppedClean(t, m)
		})
	}
	t.Run("in place", func(t *testing.T) {
		dir, err := filepath.EvalSymlinks(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		app := filepath.Join(dir, "app.py")
		copyFile(t, pythonServer, app, 0o644)
		m := startMaster(t, masterSpec{prog: []string{python, app}})
		st := m.status()
		if strings.Contains(st.ChildExecutable, "(the last good build)") || !strings.Contains(st.ChildExecutable, app+", not reached through a symlink, is read from disk again") {
			t.Errorf("a script edited in place: child_executable %q; want it said that the script is read from disk again, not the last good build", st.ChildExecutable)
		}
		if text := m.statusText(); !strings.Contains(text, "is read from disk again") {
			t.Errorf("handover status does not say the script is read from disk again:\n%s", text)
		}
		checkStoppedClean(t, m)
	})
}
