package tests

// Security: who may use the control socket, which descriptors and variables reach
// programs the server runs, no shell between generations, and the PID file.

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// runAs runs a program as cred and returns its output and exit code.
func runAs(t testing.TB, cred *syscall.Credential, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("running %s as uid %d: %v", name, cred.Uid, err)
	}
	return o.String(), e.String(), 0
}

// TestControlSocketPermissions: the control socket is created with mode 0600, so
// that another user cannot even connect; and if the mode is loosened (a mistaken chmod,
// a directory shared on purpose), the server checks the peer's credentials
// (SO_PEERCRED) and refuses anyone but its own user and root, logging the refusal.
// Root may use it. A refused reload starts nothing.
func TestControlSocketPermissions(t *testing.T) {
	dir := publicDir(t) // traversable by nobody: only the socket's own mode stops it
	ctl := filepath.Join(dir, "control.sock")
	cli := filepath.Join(dir, "handover")
	copyFile(t, proc.Binary(t, handoverPkg), cli, 0o755)
	d := startDemoSpec(t, demoSpec{control: ctl})
	pid := d.current()
	st, err := os.Lstat(ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %v, want a socket with mode 0600", st.Mode())
	}

	t.Run("file mode refuses another user", func(t *testing.T) {
		_, stderr, code := runAs(t, nobody, cli, "status", "-control", ctl)
		t.Logf("as nobody: exit %d: %s", code, strings.TrimSpace(stderr))
		// The kernel refused the connection (EACCES): the server never saw it.
		if code != 1 || !strings.Contains(stderr, syscall.EACCES.Error()) {
			t.Errorf("handover status as nobody: exit %d, %q; want 1 and %q", code, stderr, syscall.EACCES.Error())
		}
		if n := d.events().Count("control_refused"); n != 0 {
			t.Errorf("the server saw %d connections from nobody; the socket's mode should have stopped them", n)
		}
	})
	t.Run("peer check refuses another user", func(t *testing.T) {
		if err := os.Chmod(ctl, 0o666); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(ctl, 0o600)
		for i, cmd := range []string{"status", "reload"} {
			_, stderr, code := runAs(t, nobody, cli, cmd, "-control", ctl)
			t.Logf("%s as nobody: exit %d: %s", cmd, code, strings.TrimSpace(stderr))
			if code != 1 {
				t.Errorf("handover %s as nobody: exit %d, %q; want 1", cmd, code, stderr)
			}
			// The server refused it by the peer's credentials, and said so.
			d.waitEvent(i, 5*time.Second, "control_refused", "uid=65534", logs.KV("pid", pid))
		}
		if kids := proc.Children(pid); len(kids) > 0 || d.pidFromFile() != pid || d.events().Count("upgrade_start") > 0 {
			t.Errorf("a refused reload started something: children %v, PID file %d\n%s", kids, d.pidFromFile(), tail(d.log(), 5))
		}
	})
	t.Run("root is allowed", func(t *testing.T) {
		s, err := ctlStatus(t, ctl)
		if err != nil || s.PID != pid || s.State != "serving" {
			t.Fatalf("status as root: %+v, %v", s, err)
		}
		out, stderr, code := runAs(t, &syscall.Credential{Uid: 0, Gid: 0}, cli, "reload", "-control", ctl)
		if code != 0 || !strings.HasPrefix(out, "upgraded: PID ") {
			t.Fatalf("reload as root: exit %d, %q %q", code, out, stderr)
		}
		d.pids = append(d.pids, d.waitNewPID(10*time.Second, pid))
	})
	d.stop()
}

// fdLine is one line of `ls -l /proc/self/fd`: "lrwx------ 1 root root 64 ... 3 -> socket:[123]".
var fdLine = regexp.MustCompile(`\s(\d+) -> (.*)$`)

// checkProbe fetches /probe from the server at addr, answered by pid, and checks that
// the programs it ran saw no descriptor beyond 0-2 (but ls's own directory) and none
// of the socket-passing or watchdog variables.
func checkProbe(t *testing.T, addr string, pid int) {
	t.Helper()
	resp, err := rawhttp.Get(addr, "/probe", 10*time.Second)
	if err != nil || resp.Status != 200 || resp.PID() != pid {
		t.Fatalf("/probe: %v, status %d from %d, want 200 from %d", err, statusOf(resp), respPID(resp), pid)
	}
	body := string(resp.Body)
	ls, env, ok := strings.Cut(body, "--- env")
	if !ok || !strings.HasPrefix(ls, "--- ls (err <nil>)") || !strings.HasPrefix(env, " (err <nil>)") {
		t.Fatalf("/probe did not run both programs:\n%s", body)
	}
	var fds []string
	sc := bufio.NewScanner(strings.NewReader(ls))
	for sc.Scan() {
		m := fdLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fds = append(fds, m[1]+"->"+m[2])
		n, _ := strconv.Atoi(m[1])
		// ls reads the directory through a descriptor of its own.
		if n > 2 && !regexp.MustCompile(`^/proc/\d+/fd$`).MatchString(m[2]) {
			t.Errorf("a program the server ran (pid %d) inherited fd %s -> %s", pid, m[1], m[2])
		}
	}
	if len(fds) < 3 {
		t.Fatalf("no descriptors listed:\n%s", ls)
	}
	for _, kv := range strings.Split(env, "\n") {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LISTEN_") || strings.HasPrefix(k, "WATCHDOG_") || k == "HANDOVER_PARENT" {
			t.Errorf("a program the server ran (pid %d) inherited %s", pid, kv)
		}
	}
	t.Logf("pid %d: its programs see fds %v and no protocol variable", pid, fds)
}

// TestNoFDLeakToSubprocess: a program the server runs (os/exec) sees neither the
// server's descriptors from 3 up (listening sockets, the control socket, the handover
// channel, anything the server inherited by accident) nor LISTEN_*, HANDOVER_PARENT
// or WATCHDOG_*: for a first generation that bound its socket (started with a stray
// descriptor and a watchdog variable), a generation that adopted its parent's sockets,
// one started by systemd-socket-activate, and that one's successor.
func TestNoFDLeakToSubprocess(t *testing.T) {
	probe := proc.Binary(t, probePkg)
	t.Run("bound, then from the parent", func(t *testing.T) {
		stray, err := os.Create(filepath.Join(t.TempDir(), "stray"))
		if err != nil {
			t.Fatal(err)
		}
		defer stray.Close()
		d := startDemoSpec(t, demoSpec{program: probe, files: []*os.File{stray}, env: []string{"WATCHDOG_USEC=60000000"}})
		checkProbe(t, d.addr, d.current())
		_, cur := d.upgrade()
		checkProbe(t, d.addr, cur)
		d.stop()
	})
	t.Run("systemd-socket-activate, then from the parent", func(t *testing.T) {
		tool, err := exec.LookPath("systemd-socket-activate")
		if err != nil {
			sdns.SkipOrFail(t, fmt.Errorf("systemd-socket-activate not installed: %v", err))
		}
		dir := t.TempDir()
		addr := freePort(t)
		logPath := filepath.Join(dir, "log")
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		pidfile := filepath.Join(dir, "probe.pid")
		cmd := exec.Command(tool, "-l", addr, "--fdname=http", "-E", "WATCHDOG_USEC=60000000",
			probe, "-listen", "127.0.0.1:1", "-pidfile", pidfile, "-drain-timeout", "5s")
		cmd.Env = cleanEnv()
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		d := &demo{t: t, dir: dir, addr: addr, pidfile: pidfile, logPath: logPath, drain: 5 * time.Second, pids: []int{cmd.Process.Pid}}
		cmd.Process.Release()
		t.Cleanup(d.cleanup)
		// The tool execs the server at the first connection.
		var first *rawhttp.Response
		if err := proc.WaitFor(func() bool {
			first, err = rawhttp.Get(addr, "/", time.Second)
			return err == nil
		}, 10*time.Second, "systemd-socket-activate to start the server"); err != nil {
			t.Fatalf("%v\n%s", err, d.log())
		}
		// Answered by the process the tool became, which listens on the passed
		// socket's port only (-listen names port 1: it bound nothing of its own).
		_, port, _ := net.SplitHostPort(addr)
		if ports, err := listeningTCPPorts(d.current()); first.PID() != d.current() || err != nil || !slices.Equal(ports, []int{atoiOr0(port)}) {
			t.Fatalf("answered by %d listening on %v (%v), want the activated %d serving systemd's socket on port %s only:\n%s", first.PID(), ports, err, d.current(), port, d.log())
		}
		d.waitPID(d.current())
		checkProbe(t, addr, d.current())
		_, cur := d.upgrade()
		checkProbe(t, addr, cur)
		d.stop()
	})
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// TestNoShellInSpawn: the new generation is started with the exact argument vector of
// the old one, with no shell in between: a binary path and an argument full of spaces
// and shell syntax arrive verbatim (/proc/PID/cmdline), nothing in them is run, and
// each new generation is a direct child of the old one.
func TestNoShellInSpawn(t *testing.T) {
	// A shell would create files named pwned* in its working directory, dir.
	dir := filepath.Join(t.TempDir(), "deploy dir; $(touch pwned1) `touch pwned2` & | > pwned3")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	message := `a  b; $(touch pwned4) | & "q" 'x' \ * ~ $HOME %s` + "\ttab > pwned5"
	d := startDemoSpec(t, demoSpec{dir: dir, args: []string{"-message", message}})
	want := strings.Split(strings.TrimSuffix(readCmdline(t, d.current()), "\x00"), "\x00")
	if want[0] != d.bin || !slices.Contains(want, message) {
		t.Fatalf("first generation's argv %q", want)
	}
	for i := 0; i < 2; i++ {
		// A request in flight keeps the old generation draining (alive) until its
		// successor's parent has been read: the parent check always runs.
		slow := slowOn(t, d.addr, d.current(), "/slow?ms=2000", 20*time.Second)
		old, cur := d.upgrade()
		pp := proc.PPid(cur)
		if !proc.Alive(old) {
			t.Fatalf("the old generation %d exited with a request in flight; cannot check its successor's parent", old)
		}
		if pp != old {
			t.Errorf("generation %d (pid %d) has parent %d, not the old generation %d", i+2, cur, pp, old)
		}
		if s := <-slow; s.err != nil || s.resp.PID() != old {
			t.Errorf("the request in flight on generation %d: %v, from %d", i+1, s.err, respPID(s.resp))
		}
		got := strings.Split(strings.TrimSuffix(readCmdline(t, cur), "\x00"), "\x00")
		if !slices.Equal(got, want) {
			t.Errorf("generation %d's argv is %q, want %q", i+2, got, want)
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cur)); err != nil || exe != d.bin {
			t.Errorf("generation %d runs %q (%v), want %q", i+2, exe, err, d.bin)
		}
		resp, err := rawhttp.Get(d.addr, "/", 5*time.Second)
		if err != nil || !strings.Contains(string(resp.Body), "message="+message) {
			t.Errorf("generation %d answers %q (%v), want the message verbatim", i+2, respBody(resp), err)
		}
		if err := waitGone(old, d.drain); err != nil {
			t.Error(err)
		}
	}
	t.Logf("argv kept verbatim across 2 upgrades: %q", want)
	for _, p := range []string{dir, filepath.Dir(dir)} {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "pwned") {
				t.Errorf("something ran the shell syntax in the arguments: %s", filepath.Join(p, e.Name()))
			}
		}
	}
	d.stop()
}

func readCmdline(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func respBody(r *rawhttp.Response) string {
	if r == nil {
		return ""
	}
	return string(r.Body)
}

// TestPIDFileAtomic: across twenty upgrades a reader polling the PID file never
// finds it missing, empty or partial; it is always a regular file of mode 0644 (or
// stricter) owned by the server's user, no temporary file is left beside it, and the
// stop removes it. (A symlink in its place is refused: TestPIDFileFaults.)
func TestPIDFileAtomic(t *testing.T) {
	d := startDemo(t, demoOpts{})
	check := func(when string) {
		t.Helper()
		st, err := os.Lstat(d.pidfile)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&^0o644 != 0 || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s: PID file mode %v owner %d, want a regular file of mode 0644 or stricter owned by root", when, st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
		}
	}
	check("first generation")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, lastSeen atomic.Int64
	var bad []string
	var seen []int // the PIDs the reader found, in order, once each
	wg.Add(1)
	go func() {
		defer wg.Done()
		valid := regexp.MustCompile(`^[1-9][0-9]*\n$`)
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(d.pidfile)
			reads.Add(1)
			if err != nil || !valid.Match(b) {
				if len(bad) < 10 {
					bad = append(bad, fmt.Sprintf("%q %v", b, err))
				}
				continue
			}
			if p, _ := strconv.Atoi(strings.TrimSpace(string(b))); len(seen) == 0 || seen[len(seen)-1] != p {
				seen = append(seen, p)
				lastSeen.Store(int64(p))
			}
		}
	}()
	// The reader reads around every rewrite: it is reading right before each signal
	// (minReads reads since the last check) and has read the new generation's PID
	// before the next one; across the upgrades (from each signal until the new
	// generation is ready) it reads minReads times per upgrade on average. (A busy
	// machine may starve it during one short window; it then reads in the others.)
	const minReads = 20
	readsFrom := func(n int64, what string) {
		t.Helper()
		if err := proc.WaitFor(func() bool { return reads.Load() >= n+minReads }, 10*time.Second, what); err != nil {
			t.Fatal(err)
		}
	}
	var during []int64
	for i := 0; i < 20; i++ {
		readsFrom(reads.Load(), "the reader to read before the signal")
		before := reads.Load()
		old, cur := d.upgrade()
		during = append(during, reads.Load()-before)
		if err := proc.WaitFor(func() bool { return lastSeen.Load() == int64(cur) }, 10*time.Second, "the reader to see the new PID"); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("generation %d", i+2))
		if err := waitGone(old, d.drain); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d reads of the PID file during 20 upgrades; reads while each was in progress: %v", reads.Load(), during)
	if len(bad) > 0 {
		t.Errorf("a reader saw the PID file missing or partial: %q", bad)
	}
	var total int64
	for _, n := range during {
		total += n
	}
	if total < minReads*int64(len(during)) {
		t.Errorf("only %d reads of the PID file while it was rewritten %d times (%v), want at least %d: the reader proves nothing", total, len(during), during, minReads*len(during))
	}
	// The reader saw every generation's PID, in order: it read across every rewrite.
	if !slices.Equal(seen, d.pids) {
		t.Errorf("the reader saw the PIDs %v, want every generation's in order %v", seen, d.pids)
	}
	ents, _ := os.ReadDir(d.dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"demo.log", "demo.pid", "handover-demo"}; !slices.Equal(names, want) {
		t.Errorf("files beside the PID file: %q, want %q (no temporary file left)", names, want)
	}
	d.stop()
	if _, err := os.Lstat(d.pidfile); !os.IsNotExist(err) {
		t.Errorf("PID file after the stop: %v", err)
	}
}
