package tests

import (
	"fmt"
	"io"
	"math/rand/v2"
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

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
	"github.com/seed-a7250cfa/handover/tests/internal/shard"
	"golang.org/x/sys/unix"
)

// demoPkg is the demo server every end-to-end test drives.
const demoPkg = "github.com/seed-a7250cfa/handover/cmd/handover-demo"

// systemdTests starts the name of every test that boots a systemd (package sdns):
// those share the host's cgroups, so they run one at a time; every other test runs
// beside others, each in a process of its own (see package shard). sdns.New fails a
// test that boots a systemd without this prefix.
const systemdTests = "TestSystemd"

// TestMain runs the tests at the same time, each in a process of its own (package
// shard): `go test ./tests/` takes about as long as its longest lane, the systemd
// tests one after another. For a new test to keep the package fast and safe:
//
//   - One that boots a systemd (package sdns) is named TestSystemd...: those run one
//     at a time (sdns fails any other that tries). Every other test runs beside
//     others; a test needs no list to be run, and no list decides where.
//   - A test has its process to itself (children, reaping, subreaper, descriptors,
//     environment, working directory), but not the machine: ports from freePort
//     and listenPort, files under t.TempDir(), no fixed names elsewhere, and every
//     process it starts reaped (a process left running when the test's process
//     ends fails the run, naming the test).
//   - Wait for events (a log line by event=, the PID file, a status, answers of the
//     load: waitEvent, waitAnswers, window.close), not for fixed times: the test
//     shares two cores with others. Configure short deadlines (drain, upgrade
//     timeout) where the test only waits them out; a long soak takes a short
//     default and its full length under CI=true.
//   - Binaries come from proc.Binary and buildVariant: built once per run.
func TestMain(m *testing.M) {
	sdns.TestPrefix = systemdTests
	os.Exit(shard.Main(shard.Config{
		Serial: func(name string) bool { return strings.HasPrefix(name, systemdTests) },
		// The binaries most tests run, built before the first test starts.
		Setup: func() ([]string, func(), error) { return proc.ShareBuilds(demoPkg, handoverPkg) },
		Run:   func() int { return runTests(m) },
	}))
}

// runTests runs the tests in this process: a child subreaper (a generation whose
// parent exits is reparented to the test, which reaps it).
func runTests(m *testing.M) int {
	if err := proc.SetSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, "tests: cannot become a child subreaper:", err)
		return 1
	}
	// Descriptors this test binary inherited (from a shell, a CI runner) must not
	// reach the servers it starts, or fd counts would compare unlike processes.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	code := m.Run()
	proc.CleanupBuilds()
	return code
}

// Test ports. A port picked with ":0" comes from the kernel's ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), the same range the load's
// thousands of outgoing connections take their source ports from: between the pick and
// the server's bind, a client connection can take it. So the tests pick their ports
// below that range: random ports in [portLow, portHigh], below the ephemeral range's
// first port, until a bind succeeds.
const (
	portLow  = 20000
	portHigh = 32000
)

// portRange returns the range test ports are picked from: [portLow, portHigh], cut
// below the first ephemeral port if the machine's ephemeral range starts lower.
func portRange(t testing.TB) (lo, hi int) {
	t.Helper()
	lo, hi = portLow, portHigh
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if first, err := strconv.Atoi(f[0]); err == nil && first <= hi {
				hi = first - 1
			}
		}
	}
	if hi-lo < 1000 {
		t.Fatalf("the ephemeral port range starts at %d: no room for test ports in [%d, %d]", hi+1, portLow, portHigh)
	}
	return lo, hi
}

// listenPort binds network ("tcp" or "udp") on 127.0.0.1 at a random port below the
// ephemeral range (see portLow) and returns the bound listener or packet connection.
func listenPort(t testing.TB, network string) io.Closer {
	t.Helper()
	lo, hi := portRange(t)
	var err error
	for i := 0; i < 200; i++ {
		port := lo + rand.IntN(hi-lo+1)
		// Reserved for the whole test, against the other test processes: freePort's
		// caller binds the port later.
		release, ok := proc.ReservePort(network, port)
		if !ok {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		var c io.Closer
		if network == "udp" {
			c, err = net.ListenPacket("udp", addr)
		} else {
			c, err = net.Listen(network, addr)
		}
		if err == nil {
			t.Cleanup(release)
			return c
		}
		release()
	}
	t.Fatalf("no free %s port in [%d, %d] after 200 tries: %v", network, lo, hi, err)
	return nil
}

// freePort returns a loopback address with a TCP port below the ephemeral range that
// nothing listens on right now (see portLow).
func freePort(t testing.TB) string {
	t.Helper()
	l := listenPort(t, "tcp").(net.Listener)
	addr := l.Addr().String()
	l.Close()
	return addr
}

// freeUDPPort is freePort for UDP.
func freeUDPPort(t testing.TB) string {
	t.Helper()
	c := listenPort(t, "udp").(net.PacketConn)
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// listenLoopback returns a TCP listener on 127.0.0.1 at a port below the ephemeral
// range, closed when the test ends.
func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	l := listenPort(t, "tcp").(net.Listener)
	t.Cleanup(func() { l.Close() })
	return l
}

// copyFile copies src to dst atomically (temp file + rename), as a deploy does.
func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b, mode)
}

func writeFile(t testing.TB, dst string, b []byte, mode os.FileMode) {
	t.Helper()
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// demo is a running line of handover-demo generations.
type demo struct {
	t       testing.TB
	dir     string
	bin     string // the path the demo runs as; tests replace the file to deploy
	good    string // the built demo binary
	addr    string
	pidfile string
	logPath string
	drain   time.Duration
	pids    []int // every generation seen, in order
}

type demoOpts struct {
	args  []string
	drain time.Duration
	// link, if set, starts the demo through a symlink of that name pointing at
	// releases/1/handover-demo, the way deploys switch /opt/app/current.
	link string
}

// startDemo copies the demo binary into a fresh directory and starts it there.
func startDemo(t testing.TB, o demoOpts) *demo {
	t.Helper()
	if o.drain == 0 {
		o.drain = 10 * time.Second
	}
	dir := t.TempDir()
	d := &demo{
		t:       t,
		dir:     dir,
		bin:     filepath.Join(dir, "handover-demo"),
		good:    proc.Binary(t, demoPkg),
		addr:    freePort(t),
		pidfile: filepath.Join(dir, "demo.pid"),
		logPath: filepath.Join(dir, "demo.log"),
		drain:   o.drain,
	}
	if o.link != "" {
		rel := filepath.Join("releases", "1", "handover-demo")
		if err := os.MkdirAll(filepath.Join(dir, "releases", "1"), 0o755); err != nil {
			t.Fatal(err)
		}
		copyFile(t, d.good, filepath.Join(dir, rel), 0o755)
		d.bin = filepath.Join(dir, o.link)
		if err := os.Symlink(rel, d.bin); err != nil {
			t.Fatal(err)
		}
	} else {
		copyFile(t, d.good, d.bin, 0o755)
	}
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"-listen", d.addr, "-pidfile", d.pidfile, "-drain-timeout", o.drain.String()}, o.args...)
	args = append(args, testProbation(o.args)...)
	cmd := exec.Command(d.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	d.pids = append(d.pids, pid)
	t.Cleanup(d.cleanup)
	d.waitPID(pid)
	return d
}

// testProbation is the -probation the tests give the servers they start (the demo
// and the test programs), unless args has one: half a second, not the library's 10 s
// (graceful.Config.Probation), so that a test that waits for an old generation to
// exit does not wait out the default. The tests of the probation itself
// (probation_test.go) give their own.
func testProbation(args []string) []string {
	if slices.Contains(args, "-probation") {
		return nil
	}
	return []string{"-probation", "500ms"}
}

// log returns everything the generations logged so far.
func (d *demo) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// events parses what the generations logged so far (see package logs: lines are
// selected by event= and other keys, never by wording).
func (d *demo) events() logs.Log { return logs.Parse(d.log()) }

// waitEvent waits until more than before lines of event with every key=value of match
// have been logged, and returns the last one.
func (d *demo) waitEvent(before int, timeout time.Duration, event string, match ...string) logs.Line {
	d.t.Helper()
	return waitLogged(d.t, d.log, before, timeout, event, match...)
}

// waitLogged waits until the log that read returns has more than before lines of
// event with every key=value of match, and returns the last one. It fails t, with the
// log's tail, at timeout.
func waitLogged(t testing.TB, read func() string, before int, timeout time.Duration, event string, match ...string) logs.Line {
	t.Helper()
	var last logs.Line
	err := proc.WaitFor(func() bool {
		ls := logs.Parse(read()).Where(event, match...)
		if len(ls) > before {
			last = ls[len(ls)-1]
			return true
		}
		return false
	}, timeout, fmt.Sprintf("event=%s %v in the log", event, match))
	if err != nil {
		t.Fatalf("%v\nlog:\n%s", err, tail(read(), 30))
	}
	return last
}

// pidFromFile reads the PID file; 0 if absent or partial.
func (d *demo) pidFromFile() int {
	b, err := os.ReadFile(d.pidfile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitPID waits until the PID file names pid.
func (d *demo) waitPID(pid int) {
	d.t.Helper()
	err := proc.WaitFor(func() bool { return d.pidFromFile() == pid || !proc.Alive(pid) }, 20*time.Second, fmt.Sprintf("PID file to name %d", pid))
	if err == nil && d.pidFromFile() != pid {
		err = fmt.Errorf("generation %d exited before it was ready", pid)
	}
	if err != nil {
		d.t.Fatalf("%v\nlog:\n%s", err, d.log())
	}
}

// current is the PID of the current generation.
func (d *demo) current() int { return d.pids[len(d.pids)-1] }

// signal sends sig to the current generation.
func (d *demo) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := syscall.Kill(d.current(), sig); err != nil {
		d.t.Fatalf("kill -%d %d: %v", sig, d.current(), err)
	}
}

// upgrade sends SIGUSR2 to the current generation and waits until a new one has
// taken over (the PID file names it, and it logged event=ready). It returns the old
// and new PIDs.
func (d *demo) upgrade() (old, cur int) {
	d.t.Helper()
	old = d.current()
	d.signal(syscall.SIGUSR2)
	err := proc.WaitFor(func() bool {
		p := d.pidFromFile()
		return p != 0 && p != old
	}, 20*time.Second, fmt.Sprintf("a new generation to replace %d", old))
	if err != nil {
		d.t.Fatalf("%v\nlog:\n%s", err, d.log())
	}
	cur = d.pidFromFile()
	d.pids = append(d.pids, cur)
	// The old generation writes the PID file as it hands over, a moment before the
	// new one hears it is the current generation: until then a SIGUSR2 to it is
	// refused (reason=not_ready). The upgrade is complete once it says ready.
	d.waitEvent(0, 20*time.Second, "ready", logs.KV("pid", cur))
	return old, cur
}

// upgradeAndDrain upgrades and checks that the old generation exits within the drain
// deadline.
func (d *demo) upgradeAndDrain() (old, cur int) {
	d.t.Helper()
	old, cur = d.upgrade()
	if err := waitGone(old, d.drain); err != nil {
		d.t.Error(err)
	}
	return old, cur
}

// pace waits for dur, letting the load run between restarts.
func pace(dur time.Duration) {
	target := time.Now().Add(dur)
	proc.WaitFor(func() bool { return time.Now().After(target) }, dur+time.Second, "pacing")
}

// waitGone waits until pid has exited and reaps it once it is the test's child (a
// generation is reparented to the test, a subreaper, when its parent exits).
func waitGone(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	werr := proc.WaitFor(func() bool {
		switch {
		case proc.State(pid) == "":
			return true
		case proc.PPid(pid) == os.Getpid():
			_, err = proc.Reap(pid, time.Until(deadline))
			return true
		}
		return false
	}, timeout, fmt.Sprintf("pid %d to exit", pid))
	if werr != nil {
		return fmt.Errorf("%w (state %q, parent %d)", werr, proc.State(pid), proc.PPid(pid))
	}
	return err
}

// stop sends SIGTERM to the current generation and waits for every generation to
// be gone.
func (d *demo) stop() {
	d.t.Helper()
	d.signal(syscall.SIGTERM)
	for _, pid := range d.pids {
		if err := waitGone(pid, d.drain+5*time.Second); err != nil {
			d.t.Errorf("generation %d: %v", pid, err)
		}
	}
}

// cleanup kills and reaps whatever generation is still there.
func (d *demo) cleanup() {
	for _, pid := range d.pids {
		if proc.Alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, pid := range d.pids {
		if err := waitGone(pid, 10*time.Second); err != nil {
			d.t.Errorf("cleanup: %v", err)
		}
	}
	checkVocabulary(d.t, d.log())
	if d.t.Failed() {
		d.t.Logf("demo log:\n%s", tail(d.log(), 60))
	}
}

// checkVocabulary fails the test if a line of the Upgrader in log has no event= or
// one the tests do not know (logs.Events), or an enumerated attribute (cause=,
// reason=, action=) with an unknown value. Every test runs it on its whole log, so
// that a check that some event did NOT happen cannot pass because the library
// renamed the event.
func checkVocabulary(t testing.TB, log string) {
	t.Helper()
	if bad := logs.Parse(log).Check(); len(bad) > 0 {
		t.Errorf("the log does not speak the event vocabulary the tests match (logs.Events):\n  %s", strings.Join(bad, "\n  "))
	}
}

// fdTargets lists what pid's descriptors point at, for messages.
func fdTargets(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return out
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// textLines counts the lines of a command's human-readable output (handover status)
// that contain every one of the substrings. Logs are never read this way: they are
// parsed by key (package logs).
func textLines(text string, substrs ...string) int {
	n := 0
	for _, line := range strings.Split(text, "\n") {
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// inflight is a request on a connection the test opened before an upgrade.
type inflight struct {
	resp  *rawhttp.Response
	lines []string
	err   error
	at    time.Time // when it ended
}

// slowOn sends path on a new keep-alive connection that first proves it reaches pid
// (a / answered by it); the result arrives on the channel.
func slowOn(t testing.TB, addr string, pid int, path string, timeout time.Duration) <-chan inflight {
	t.Helper()
	c, err := rawhttp.Dial(addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do("GET", "/", nil, 5*time.Second)
	if err != nil || resp.PID() != pid {
		c.Close()
		t.Fatalf("a request to %s: %v, answered by pid %d, want %d", addr, err, respPID(resp), pid)
	}
	done := make(chan inflight, 1)
	go func() {
		defer c.Close()
		r, err := c.Do("GET", path, nil, timeout)
		done <- inflight{resp: r, err: err, at: time.Now()}
	}()
	return done
}

// streamOn starts a streaming request for path on a new connection and returns once
// its first line has arrived (so that the server handling it is the one serving
// now); the whole result arrives on the channel.
func streamOn(t testing.TB, addr, path string) <-chan inflight {
	t.Helper()
	c, err := rawhttp.Dial(addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{})
	done := make(chan inflight, 1)
	go func() {
		defer c.Close()
		var lines []string
		resp, err := c.Stream("GET", path, nil, 10*time.Second, func(l []byte) error {
			lines = append(lines, string(l))
			if len(lines) == 1 {
				close(first)
			}
			return nil
		})
		done <- inflight{resp: resp, lines: lines, err: err, at: time.Now()}
	}()
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatalf("the stream %s did not start", path)
	}
	return done
}

// buildVariant builds a test program from tests/testdata with -ldflags -X main.mode=mode,
// once per run (see proc.Variant): copy it, do not change it.
func buildVariant(t testing.TB, pkgDir, mode string) string {
	t.Helper()
	return proc.Variant(t, "./"+pkgDir, filepath.Base(pkgDir)+"-"+mode, "-ldflags", "-X main.mode="+mode)
}

// TestPortsBelowEphemeralRange: every port the tests pick for a server is below the
// kernel's ephemeral range, where the load's own connections take their source ports.
func TestPortsBelowEphemeralRange(t *testing.T) {
	first := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			first, _ = strconv.Atoi(f[0])
		}
	}
	port := func(addr string) int {
		_, p, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(p)
		return n
	}
	for i := 0; i < 20; i++ {
		for what, p := range map[string]int{
			"freePort":       port(freePort(t)),
			"freeUDPPort":    port(freeUDPPort(t)),
			"listenLoopback": port(listenLoopback(t).Addr().String()),
		} {
			if p < portLow || p >= first {
				t.Fatalf("%s picked port %d, outside [%d, %d)", what, p, portLow, first)
			}
		}
	}
}
