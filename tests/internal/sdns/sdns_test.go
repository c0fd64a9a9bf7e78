package sdns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

func TestInstalledSystemd(t *testing.T) {
	v := RequireInstalled(t)
	t.Logf("testing %v", v)
	testSocketActivation(t, v)
}

func TestBackportsSystemd254(t *testing.T) {
	v := RequireBackports(t)
	t.Logf("testing %v", v)
	if v.Major < 254 {
		t.Fatalf("Backports returned systemd %d", v.Major)
	}
	testSocketActivation(t, v)
}

// TestSuspiciousPinned: every fragment of Suspicious that a service can provoke
// matches a line of this systemd's console when provoked (a unit file with an unknown
// key, an unknown section and a value that does not parse; a notification from a
// process that is not the main one; MAINPID= naming a process that is not
// systemd's child). The end-to-end tests assert that no console line matches
// Suspicious: if systemd changed its wording, that check would pass silently; this
// test fails instead. Not provoked: "does not belong to service" (systemd accepts a
// foreign MAINPID= from a root service, and the state directory is root's only) and
// the fragments of systemd's own crashes.
func TestSuspiciousPinned(t *testing.T) {
	for _, get := range []func(testing.TB) Version{RequireInstalled, RequireBackports} {
		v := get(t)
		t.Run(v.Name, func(t *testing.T) { testSuspiciousPinned(t, v) })
	}
}

func testSuspiciousPinned(t *testing.T, v Version) {
	s, err := New(t, v)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(s.Dir(), "bin", "suspicious")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./testdata/suspicious")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build suspicious: %v\n%s", err, b)
	}
	name := uniqueName(t)
	logFile := s.LogPath(name + ".log")
	units := map[string]string{
		"test.target": "[Unit]\nDefaultDependencies=no\n",
		name + "-bad.service": `[Unit]
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/true
NoSuchKey=1
Restart=no-such-value

[NoSuchSection]
Key=1
`,
		name + ".service": fmt.Sprintf(`[Unit]
DefaultDependencies=no

[Service]
Type=notify
NotifyAccess=main
ExecStart=%[1]s
StandardOutput=append:%[2]s
StandardError=append:%[2]s
TimeoutStartSec=20
`, bin, logFile),
	}
	for n, u := range units {
		if err := s.AddUnit(n, u); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Boot(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CtlOK("start", name+"-bad.service"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CtlOK("start", name+".service"); err != nil {
		t.Fatalf("%v\nservice log: %s", err, s.ReadLog(name+".log"))
	}
	provoked := []string{"which is not our child", "Got notification message from PID",
		"Failed to parse", "Unknown key", "Unknown section"}
	var lines []string
	err = waitFor(10*time.Second, func() bool {
		lines = s.SuspiciousLines()
		for _, frag := range provoked {
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, frag) }) {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Errorf("systemd %d's console does not match every fragment of Suspicious that was provoked %q; matching lines:\n%s\nconsole:\n%s",
			v.Major, provoked, strings.Join(lines, "\n"), tail(s.ConsoleLog(), 40))
	}
	for _, l := range lines {
		t.Logf("matched: %s", l)
	}
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func TestCheckPrivateDir(t *testing.T) {
	for _, bad := range []string{"/", "/tmp", "/tmp/x", "/run/x", "/var/tmp", "/etc/systemd/system",
		"/usr/lib/systemd/system", "/lib/systemd", "/var/lib/a:b", "relative", "/var/lib/with space"} {
		if err := checkPrivateDir(bad); err == nil {
			t.Errorf("checkPrivateDir(%q) = nil, want an error", bad)
		}
	}
	if err := checkPrivateDir("/var/lib"); err != nil {
		t.Errorf("checkPrivateDir(/var/lib) = %v", err)
	}
}

func TestAddUnitNeedsNoDefaultDependencies(t *testing.T) {
	s := &Systemd{unitDir: t.TempDir()} // only AddUnit's checks are used
	if err := s.AddUnit("x.service", "[Unit]\n[Service]\nExecStart=/bin/true\n"); err == nil {
		t.Error("AddUnit accepted a unit without DefaultDependencies=no")
	}
	if err := s.AddUnit("../x.service", "[Unit]\nDefaultDependencies=no\n"); err == nil {
		t.Error("AddUnit accepted a unit name with a slash")
	}
	if err := s.AddUnit("x.service", "[Unit]\nDefaultDependencies=no\n"); err != nil {
		t.Error(err)
	}
}

func TestBootFailureIsReported(t *testing.T) {
	v := RequireInstalled(t)
	defer func(d time.Duration) { BootTimeout = d }(BootTimeout)
	BootTimeout = 5 * time.Second
	name := uniqueName(t)
	began := time.Now()
	s, err := Start(t, v, map[string]string{
		"test.target":     "[Unit]\nDefaultDependencies=no\nRequires=" + name + ".service\nAfter=" + name + ".service\n",
		name + ".service": "[Unit]\nDefaultDependencies=no\n[Service]\nType=oneshot\nExecStart=/bin/false\n",
	})
	if err == nil {
		t.Fatal("Start succeeded although test.target cannot start")
	}
	t.Logf("took %v; error:\n%v", time.Since(began), err)
	if s != nil {
		t.Error("Start returned an instance with its error")
	}
	if !strings.Contains(err.Error(), "console log") || !strings.Contains(err.Error(), name+".service") {
		t.Errorf("error lacks the console log or the failing unit")
	}
	// This process's: once Start has let the lock go, another test process's
	// instance may be booting beside it (its own run-PID-* directory).
	dirs, _ := filepath.Glob(filepath.Join(BaseDir, fmt.Sprintf("run-%d-*", os.Getpid())))
	if len(dirs) != 0 {
		t.Errorf("state dirs left: %v", dirs)
	}
}

// testSocketActivation boots v with a socket-activated Type=notify service
// and checks activation, MainPID, stopping, and that Stop leaves nothing.
func testSocketActivation(t *testing.T, v Version) {
	marker := hostTmpMarker(t)

	s, err := New(t, v)
	if err != nil {
		t.Fatal(err)
	}
	bin := buildHelper(t, s)
	name := uniqueName(t)
	port := freePort(t)
	logFile := s.LogPath(name + ".log")
	units := map[string]string{
		name + ".socket": fmt.Sprintf(`[Unit]
Description=sdns test socket
DefaultDependencies=no

[Socket]
ListenStream=127.0.0.1:%d
Accept=no
`, port),
		name + ".service": fmt.Sprintf(`[Unit]
Description=sdns test service
DefaultDependencies=no
Requires=%[1]s.socket
After=%[1]s.socket

[Service]
Type=notify
ExecStart=%[2]s
StandardOutput=append:%[3]s
StandardError=append:%[3]s
TimeoutStartSec=20
TimeoutStopSec=10
`, name, bin, logFile),
		// Never started: only checks whether this systemd knows the type.
		name + "-reload.service": fmt.Sprintf(`[Unit]
Description=sdns notify-reload type check
DefaultDependencies=no

[Service]
Type=notify-reload
ExecStart=%s
`, bin),
	}
	for n, u := range units {
		if err := s.AddUnit(n, u); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Boot(); err != nil {
		t.Fatal(err)
	}
	sock, svc := name+".socket", name+".service"
	if err := s.WaitActive(sock, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if st, err := s.ActiveState(svc); err != nil || st != "inactive" {
		t.Fatalf("before any connection %s is %q (%v), want inactive", svc, st, err)
	}

	// Socket activation: connecting from the host starts the service.
	pid1 := get(t, port)
	if err := s.WaitActive(svc, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	main1, err := s.MainPID(svc)
	if err != nil {
		t.Fatal(err)
	}
	if main1 != pid1 {
		t.Fatalf("MainPID %d, but the service says its PID is %d", main1, pid1)
	}
	host1, err := s.HostPID(main1)
	if err != nil {
		t.Fatal(err)
	}
	st1, err := readStat(host1)
	if err != nil {
		t.Fatal(err)
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", host1)); err != nil || exe != bin {
		t.Errorf("/proc/%d/exe = %q (%v), want %s", host1, exe, err, bin)
	}
	if fd3, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", host1)); err != nil || !strings.HasPrefix(fd3, "socket:") {
		t.Errorf("/proc/%d/fd/3 = %q (%v), want the passed socket", host1, fd3, err)
	}
	// systemd gives services a clean environment: nothing of init.sh's.
	for _, e := range readEnviron(host1) {
		if strings.HasPrefix(e, "SYSTEMD_UNIT_PATH=") || strings.HasPrefix(e, "LD_LIBRARY_PATH=") {
			t.Errorf("service environment has %s", e)
		}
	}
	if hp, err := s.HostPID(1); err != nil || hp != s.PID() {
		t.Errorf("HostPID(1) = %d, %v; want systemd's %d", hp, err, s.PID())
	}
	t.Logf("%s: MainPID %d in the namespace is host PID %d", svc, main1, host1)

	// Type=notify-reload: new in systemd 253.
	typ, err := s.Show(name+"-reload.service", "Type")
	if err != nil {
		t.Fatal(err)
	}
	if v.Major >= 254 && typ != "notify-reload" {
		t.Errorf("systemd %d: Type of a Type=notify-reload unit is %q", v.Major, typ)
	}
	if v.Major < 253 {
		if typ == "notify-reload" {
			t.Errorf("systemd %d claims to know Type=notify-reload", v.Major)
		}
		if len(s.Grep(`Failed to parse service type.*notify-reload`)) == 0 {
			t.Errorf("systemd %d did not complain about Type=notify-reload", v.Major)
		}
	}

	// systemctl stop: the service goes away, the socket stays.
	if _, err := s.CtlOK("stop", svc); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitState(svc, "inactive", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(host1, st1.start, 10*time.Second); err != nil {
		t.Fatalf("service process: %v", err)
	}
	if st, err := s.ActiveState(sock); err != nil || st != "active" {
		t.Fatalf("%s is %q (%v) after stopping the service, want active", sock, st, err)
	}
	// ... and a new connection starts it again.
	pid2 := get(t, port)
	if err := s.WaitActive(svc, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if main2, err := s.MainPID(svc); err != nil || main2 != pid2 || main2 == main1 {
		t.Fatalf("after re-activation MainPID %d (%v), service PID %d, first MainPID %d", main2, err, pid2, main1)
	}
	if out, code, err := s.Exec("cat", "/proc/1/comm"); err != nil || code != 0 || strings.TrimSpace(out) != "systemd" {
		t.Errorf("Exec cat /proc/1/comm: %q, exit %d, %v", out, code, err)
	}
	if got := s.ReadLog(name + ".log"); !strings.Contains(got, "ready, pid") {
		t.Errorf("service log %s: %q, want its \"ready\" lines", logFile, got)
	}
	if bad := s.SuspiciousLines(); len(bad) > 0 && v.Major >= 253 {
		t.Errorf("suspicious console lines:\n%s", strings.Join(bad, "\n"))
	} else if v.Major < 253 {
		for _, l := range bad {
			if !strings.Contains(l, "Failed to parse service type") {
				t.Errorf("suspicious console line: %s", l)
			}
		}
	}

	// Stop: every process we started is gone and reaped.
	type proc struct {
		pid   int
		start uint64
	}
	var procs []proc
	nsProcs, err := s.Processes()
	if err != nil {
		t.Fatal(err)
	}
	if len(nsProcs) < 2 {
		t.Errorf("Processes() = %v, want systemd and the service", nsProcs)
	}
	for _, p := range append(nsProcs, descendants(s.cmd.Process.Pid)...) {
		if st, err := readStat(p); err == nil {
			procs = append(procs, proc{p, st.start})
		}
	}
	scriptPID, sdPID, sdStart := s.cmd.Process.Pid, s.PID(), s.start
	scriptStat, err := readStat(scriptPID)
	if err != nil {
		t.Fatal(err)
	}
	dir := s.Dir()
	began := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop took %v", time.Since(began))
	if s.cmd.ProcessState == nil {
		t.Errorf("script (PID %d) was not reaped", scriptPID)
	}
	if sameProcess(scriptPID, scriptStat.start) {
		t.Errorf("script (PID %d) still exists", scriptPID)
	}
	if isOurSystemd(sdPID, sdStart) == nil {
		t.Errorf("systemd (host PID %d) still running", sdPID)
	}
	for _, p := range procs {
		if sameProcess(p.pid, p.start) {
			t.Errorf("process %d (%s) survived Stop", p.pid, readComm(p.pid))
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir %s still there after Stop (%v)", dir, err)
	}
	if _, _, err := s.Ctl("is-system-running"); err == nil {
		t.Error("Ctl after Stop did not fail")
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	marker.check(t)
}

// tmpMarker is a file in the host's /tmp that must survive a systemd run.
type tmpMarker struct{ path, content string }

func hostTmpMarker(t *testing.T) tmpMarker {
	t.Helper()
	f, err := os.CreateTemp("/tmp", "handover-sdns-marker-*")
	if err != nil {
		t.Fatal(err)
	}
	m := tmpMarker{f.Name(), "marker " + f.Name()}
	_, err = f.WriteString(m.content)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(m.path) })
	return m
}

func (m tmpMarker) check(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(m.path)
	if err != nil || string(b) != m.content {
		t.Errorf("host /tmp marker %s: %q, %v; the host's /tmp was touched", m.path, b, err)
	}
}

// buildHelper compiles testdata/notifyhttp into the state directory (which,
// unlike t.TempDir under /tmp, is visible inside the namespace).
func buildHelper(t *testing.T, s *Systemd) string {
	t.Helper()
	out := filepath.Join(s.Dir(), "bin", "notifyhttp")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./testdata/notifyhttp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build notifyhttp: %v\n%s", err, b)
	}
	return out
}

// uniqueName returns a unit-name prefix unique to this run.
func uniqueName(t *testing.T) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "sdns-test-" + hex.EncodeToString(b[:])
}

// freePort returns a TCP port on 127.0.0.1 nothing listens on now, below the
// kernel's ephemeral range (32768 and up by default), where ":0" would pick one:
// outgoing connections take their source ports there, and could take it before the
// socket unit binds it. Random ports in 20000-32000 are tried until a bind succeeds.
func freePort(t *testing.T) int {
	t.Helper()
	var err error
	for i := 0; i < 200; i++ {
		port := 20000 + mrand.IntN(12001)
		release, ok := proc.ReservePort("tcp", port) // against the other test processes
		if !ok {
			continue
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			ln.Close()
			t.Cleanup(release)
			return port
		}
		release()
	}
	t.Fatalf("no free port in 20000-32000: %v", err)
	return 0
}

// get fetches http://127.0.0.1:port/ and returns the PID the service reports.
func get(t *testing.T, port int) int {
	t.Helper()
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "pid=")
	n, err := strconv.Atoi(s)
	if !ok || err != nil {
		t.Fatalf("service answered %q", b)
	}
	return n
}

// TestTestPrefix: with TestPrefix set, a test whose top-level name lacks it may not
// boot a systemd (New, Require* fail it); its subtests are judged by that name.
func TestTestPrefix(t *testing.T) {
	defer func(p string) { TestPrefix = p }(TestPrefix)
	TestPrefix = ""
	if err := testNameError("TestAnything/252"); err != nil {
		t.Errorf("no prefix required: %v", err)
	}
	TestPrefix = "TestSystemd"
	for name, ok := range map[string]bool{
		"TestSystemdReload":      true,
		"TestSystemdReload/254":  true,
		"TestReload":             false,
		"TestReload/TestSystemd": false,
	} {
		err := testNameError(name)
		if (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "must start with TestSystemd")) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
