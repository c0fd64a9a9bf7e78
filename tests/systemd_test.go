package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// These tests run the unit files in deploy/ under a real systemd (252, as installed,
// and 254 from bookworm-backports), PID 1 of its own PID and mount namespaces.

const (
	cliPkg = "github.com/seed-a7250cfa/handover/cmd/handover"
	unit   = "handover-demo.service"
)

// forEachSystemd runs fn as a subtest for each systemd version (min: the oldest major
// version the test needs).
func forEachSystemd(t *testing.T, min int, fn func(t *testing.T, v sdns.Version)) {
	versions := []func(testing.TB) sdns.Version{sdns.RequireInstalled, sdns.RequireBackports}
	for _, get := range versions {
		v := get(t)
		if v.Major < min {
			continue
		}
		t.Run(strconv.Itoa(v.Major), func(t *testing.T) { fn(t, v) })
	}
}

// sdDemo is the demo installed under a test systemd.
type sdDemo struct {
	t    testing.TB
	sd   *sdns.Systemd
	bin  string // directory standing in for /usr/local/bin
	addr string
	ctl  string // control socket path
}

// deployUnit reads a unit file from deploy/ and adapts it to the test systemd: the
// binaries in bin, the address addr, output to a log file, DefaultDependencies=no
// (there is no sysinit.target in the namespace), and extra flags on ExecStart.
func deployUnit(t testing.TB, sd *sdns.Systemd, path, bin, addr, extra string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", path))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.ReplaceAll(line, "/usr/local/bin/", bin+"/")
		line = strings.ReplaceAll(line, "127.0.0.1:8080", addr)
		if strings.HasPrefix(line, "ExecStart=") && extra != "" {
			line += " " + extra
		}
		out = append(out, line)
		switch line {
		case "[Unit]":
			out = append(out, "DefaultDependencies=no")
		case "[Service]":
			log := sd.LogPath("demo.log")
			out = append(out, "StandardOutput=append:"+log, "StandardError=append:"+log)
		}
	}
	return strings.Join(out, "\n")
}

// startSystemd boots a systemd with the demo's units: variant "" (socket unit and
// the waiting ExecReload), "kill-reload", "notify-reload" or "fdstore".
func startSystemd(t *testing.T, v sdns.Version, variant, extra string) *sdDemo {
	t.Helper()
	return startSystemdWith(t, v, variant, func(*sdns.Systemd) string { return extra })
}

// startSystemdWith is startSystemd with the extra flags made once the test
// systemd's directory exists (for files the service reads: put them there).
func startSystemdWith(t *testing.T, v sdns.Version, variant string, flags func(sd *sdns.Systemd) string) *sdDemo {
	t.Helper()
	sd, err := sdns.New(t, v)
	if err != nil {
		sdns.SkipOrFail(t, err)
	}
	extra := flags(sd)
	d := &sdDemo{t: t, sd: sd, bin: filepath.Join(sd.Dir(), "bin"), addr: freePort(t), ctl: "/run/handover-demo/control.sock"}
	if err := os.MkdirAll(d.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, proc.Binary(t, demoPkg), filepath.Join(d.bin, "handover-demo"), 0o755)
	copyFile(t, proc.Binary(t, cliPkg), filepath.Join(d.bin, "handover"), 0o755)
	service := "handover-demo.service"
	if variant != "" {
		service = variant + "/handover-demo.service"
	}
	if err := sd.AddUnit(unit, deployUnit(t, sd, service, d.bin, d.addr, extra)); err != nil {
		t.Fatal(err)
	}
	if variant != "fdstore" {
		if err := sd.AddUnit("handover-demo.socket", deployUnit(t, sd, "handover-demo.socket", d.bin, d.addr, "")); err != nil {
			t.Fatal(err)
		}
	}
	if err := sd.Boot(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("demo log:\n%s", tail(sd.ReadLog("demo.log"), 80))
			t.Logf("systemd console:\n%s", tail(sd.ConsoleLog(), 80))
		}
	})
	return d
}

// mainPID returns the service's main PID as systemd sees it (namespace PID).
func (d *sdDemo) mainPID() int {
	d.t.Helper()
	pid, err := d.sd.MainPID(unit)
	if err != nil {
		d.t.Fatal(err)
	}
	return pid
}

// answer makes one request and returns the PID that answered.
func (d *sdDemo) answer() int {
	d.t.Helper()
	resp, err := rawhttp.Get(d.addr, "/", 10*time.Second)
	if err != nil || resp.Status != 200 {
		d.t.Fatalf("request to %s: %v (%+v)", d.addr, err, resp)
	}
	return resp.PID()
}

// checkState asserts the unit is active (running) with main PID pid.
func (d *sdDemo) checkState(pid int) {
	d.t.Helper()
	active, _ := d.sd.Show(unit, "ActiveState")
	sub, _ := d.sd.Show(unit, "SubState")
	if active != "active" || sub != "running" {
		d.t.Errorf("unit is %s (%s), want active (running)", active, sub)
	}
	if got := d.mainPID(); got != pid {
		d.t.Errorf("MainPID=%d, want %d", got, pid)
	}
}

// checkConsole asserts systemd logged nothing about processes it does not supervise.
func (d *sdDemo) checkConsole() {
	d.t.Helper()
	if lines := d.sd.SuspiciousLines(); len(lines) > 0 {
		d.t.Errorf("systemd logged:\n  %s", strings.Join(lines, "\n  "))
	}
}

// demoProcesses lists the demo processes in the namespace (host PIDs).
func (d *sdDemo) demoProcesses() []int {
	pids, _ := d.sd.Processes()
	var out []int
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if strings.TrimSpace(string(comm)) == "handover-demo" && !proc.Zombie(p) {
			out = append(out, p)
		}
	}
	return out
}

// reload runs `systemctl reload` and returns its output and exit code.
func (d *sdDemo) reload() (string, int) {
	d.t.Helper()
	out, code, err := d.sd.Ctl("reload", unit)
	if err != nil {
		d.t.Fatal(err)
	}
	return out, code
}

// waitSingle waits until exactly one demo process is left (the old ones drained).
func (d *sdDemo) waitSingle(timeout time.Duration) {
	d.t.Helper()
	if err := proc.WaitFor(func() bool { return len(d.demoProcesses()) == 1 }, timeout, "old generations to exit"); err != nil {
		d.t.Errorf("%v: demo processes %v", err, d.demoProcesses())
	}
}

// TestSystemdSocketActivation: the first connection to the socket unit starts the
// service, which answers it on the socket systemd passed.
func TestSystemdSocketActivation(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		if st, _ := d.sd.ActiveState(unit); st != "inactive" {
			t.Fatalf("service is %s before any connection, want inactive", st)
		}
		pid := d.answer()
		d.checkState(pid)
		d.checkConsole()
		out, code, err := d.sd.Exec(filepath.Join(d.bin, "handover"), "status", "-control", d.ctl)
		if err != nil || code != 0 || !strings.Contains(out, "http tcp:"+d.addr+" (from systemd)") {
			t.Errorf("handover status: %v\n%s", err, out)
		}
	})
}

// TestSystemdReloadUnderLoad: ten `systemctl reload` under the standard load: no
// failed request; after each, MainPID is the new process, the unit is active
// (running), and systemd never complains about a process it does not supervise.
func TestSystemdReloadUnderLoad(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		first := d.answer()
		r := startLoad(t, d.addr, 0.5)
		pids := []int{first}
		for i := 0; i < 10; i++ {
			out, code := d.reload()
			if code != 0 {
				t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
			}
			pid := d.mainPID()
			if pid == pids[len(pids)-1] {
				t.Fatalf("reload %d: MainPID is still %d", i+1, pid)
			}
			pids = append(pids, pid)
			d.checkState(pid)
			if got := d.answer(); got != pid {
				t.Errorf("reload %d: answered by %d, MainPID %d", i+1, got, pid)
			}
			pace(2 * time.Second)
		}
		res := r.Stop()
		checkLoad(t, res)
		if n := len(res.PIDs()); n != 11 {
			t.Errorf("answers came from %d PIDs, want 11", n)
		}
		d.waitSingle(35 * time.Second)
		d.checkConsole()
	})
}

// TestSystemdKillNewMain: after a reload, kill -9 of the new main process: systemd
// notices and restarts the service from the socket unit; only requests in flight in
// the killed process fail.
func TestSystemdKillNewMain(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		d.answer()
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		victim := d.mainPID()
		d.waitSingle(35 * time.Second)
		r := startLoad(t, d.addr, 0.5)
		host, err := d.sd.HostPID(victim)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(host, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := proc.WaitFor(func() bool {
			p, _ := d.sd.MainPID(unit)
			st, _ := d.sd.ActiveState(unit)
			return p != 0 && p != victim && st == "active"
		}, 30*time.Second, "systemd to restart the service"); err != nil {
			t.Fatal(err)
		}
		restarted := d.mainPID()
		// Let the load run on the restarted service.
		if err := proc.WaitFor(func() bool { _, _, last := r.Progress(); return last == restarted }, 10*time.Second, "answers from the restarted service"); err != nil {
			t.Error(err)
		}
		checkKilledInFlight(t, r.Stop())
		if n := d.sd.Grep("Main process exited, code=killed"); len(n) == 0 {
			t.Errorf("systemd did not log the main process's death")
		}
		d.checkState(restarted)
		// The restarted service upgrades as before.
		if out, code := d.reload(); code != 0 {
			t.Errorf("reload after the restart: exit %d\n%s", code, out)
		} else if pid := d.mainPID(); pid == restarted {
			t.Errorf("reload after the restart: MainPID still %d", pid)
		} else {
			d.checkState(pid)
		}
		d.checkConsole()
	})
}

// checkKilledInFlight fails the test unless the only failed requests are resets and
// EOFs of requests that were in flight in a killed process: at most one per client.
// Nothing may be refused or time out while systemd restarts the service.
func checkKilledInFlight(t testing.TB, res *load.Result) {
	t.Helper()
	t.Log(res.Summary())
	for kind, n := range res.Failures() {
		if kind != rawhttp.Reset && kind != rawhttp.EOF {
			t.Errorf("%d failures of kind %s; only resets and EOFs of requests in flight in the killed process are expected", n, kind)
		}
	}
	if n := res.FailureCount(); n > load.DefaultConcurrency {
		t.Errorf("%d failed requests, more than the %d that could have been in flight", n, load.DefaultConcurrency)
	}
}

// TestSystemdFailedUpgrade: a new binary that exits 1, or that never becomes ready,
// makes `systemctl reload` fail; the unit stays active with the old main PID and no
// request fails.
func TestSystemdFailedUpgrade(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-upgrade-timeout 3s")
		d.answer()
		main := d.mainPID()
		good := filepath.Join(d.bin, "handover-demo")
		saved := filepath.Join(d.sd.Dir(), "handover-demo.good")
		copyFile(t, good, saved, 0o755)
		r := startLoad(t, d.addr, 0.5)
		for _, c := range []struct {
			name, want string
			deploy     func()
		}{
			{"exits 1", "exit", func() { writeFile(t, good, []byte("#!/bin/sh\nexit 1\n"), 0o755) }},
			{"hangs", "not ready within 3s", func() { copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), good, 0o755) }},
		} {
			c.deploy()
			out, code := d.reload()
			if code == 0 {
				t.Errorf("%s: systemctl reload succeeded", c.name)
			}
			log := d.sd.ReadLog("demo.log")
			if !strings.Contains(log, "upgrade failed") || !strings.Contains(log, c.want) {
				t.Errorf("%s: the log does not say why (%q):\n%s\n%s", c.name, c.want, out, tail(log, 10))
			}
			d.checkState(main)
			if got := d.answer(); got != main {
				t.Errorf("%s: answered by %d, want the old main %d", c.name, got, main)
			}
			if n := len(d.demoProcesses()); n != 1 {
				t.Errorf("%s: %d demo processes, want 1 (the failed one killed)", c.name, n)
			}
		}
		copyFile(t, saved, good, 0o755)
		if out, code := d.reload(); code != 0 {
			t.Errorf("reload with the good binary: exit %d\n%s", code, out)
		}
		checkLoad(t, r.Stop())
		d.checkConsole()
	})
}

// TestSystemdStop: `systemctl stop` while /slow requests are in flight: they complete,
// the unit goes inactive within the drain deadline, and no process is left.
func TestSystemdStop(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-drain-timeout 10s")
		main := d.answer()
		const n = 4
		results := make(chan error, n)
		for i := 0; i < n; i++ {
			c, err := rawhttp.Dial(d.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Prove the connection is the main process's before the slow request.
			if resp, err := c.Do("GET", "/", nil, 5*time.Second); err != nil || resp.PID() != main {
				t.Fatalf("warm-up: %v", err)
			}
			go func() {
				resp, err := c.Do("GET", "/slow?ms=2000", nil, 15*time.Second)
				if err == nil && (resp.Status != 200 || resp.PID() != main) {
					err = fmt.Errorf("status %d from %d", resp.Status, resp.PID())
				}
				results <- err
			}()
		}
		start := time.Now()
		if out, code, err := d.sd.Ctl("stop", unit); err != nil || code != 0 {
			t.Fatalf("systemctl stop: %v %d\n%s", err, code, out)
		}
		took := time.Since(start)
		for i := 0; i < n; i++ {
			if err := <-results; err != nil {
				t.Errorf("in-flight request: %v", err)
			}
		}
		if st, _ := d.sd.ActiveState(unit); st != "inactive" {
			t.Errorf("after stop the unit is %s", st)
		}
		if took > 10*time.Second {
			t.Errorf("stop took %s, beyond the drain deadline", took)
		}
		if ps := d.demoProcesses(); len(ps) > 0 {
			t.Errorf("demo processes left after stop: %v", ps)
		}
		if len(d.sd.Grep("Killing process")) > 0 {
			t.Errorf("systemd had to kill processes:\n%s", strings.Join(d.sd.Grep("Killing process"), "\n"))
		}
		t.Logf("systemctl stop took %s with %d slow requests in flight", took.Round(time.Millisecond), n)
		d.checkConsole()
	})
}

// TestSystemdRestart: `systemctl restart` with the socket unit: connections made
// while no process runs wait in the backlog and are answered; nothing is refused.
func TestSystemdRestart(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		d.answer()
		r := startLoad(t, d.addr, 0.5)
		for i := 0; i < 3; i++ {
			pace(time.Second)
			before := d.mainPID()
			if out, code, err := d.sd.Ctl("restart", unit); err != nil || code != 0 {
				t.Fatalf("restart: %v %d\n%s", err, code, out)
			}
			if after := d.mainPID(); after == before || after == 0 {
				t.Errorf("restart %d: MainPID %d → %d", i+1, before, after)
			}
		}
		checkLoad(t, r.Stop())
		d.checkConsole()
	})
}

// fiveReloads runs five `systemctl reload` of the variant's unit, a second apart,
// under load: each hands over to a new main process, and no request fails. When
// waits is true, systemctl reload returns only once the new main has taken over;
// otherwise (ExecReload=kill) it returns at once and the test waits for the handover.
func fiveReloads(t *testing.T, v sdns.Version, variant string, waits bool) {
	d := startSystemd(t, v, variant, "")
	prev := d.answer()
	r := startLoad(t, d.addr, 0.5)
	for i := 0; i < 5; i++ {
		pace(time.Second)
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
		}
		if waits {
			if pid := d.mainPID(); pid == prev {
				t.Fatalf("reload %d: MainPID still %d", i+1, pid)
			}
		} else if err := proc.WaitFor(func() bool {
			p, _ := d.sd.MainPID(unit)
			st, _ := d.sd.Show(unit, "SubState")
			return p != prev && p != 0 && st == "running"
		}, 30*time.Second, "the new main process"); err != nil {
			t.Fatal(err)
		}
		prev = d.mainPID()
		d.checkState(prev)
	}
	checkLoad(t, r.Stop())
	d.checkConsole()
}

// TestSystemdKillReload: the plain ExecReload=/bin/kill -USR2 $MAINPID hands over as
// well as the waiting reload.
func TestSystemdKillReload(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) { fiveReloads(t, v, "kill-reload", false) })
}

// TestSystemdNotifyReload: Type=notify-reload (systemd 253+) with ReloadSignal=SIGUSR2:
// five reloads, no failed request.
func TestSystemdNotifyReload(t *testing.T) {
	forEachSystemd(t, 253, func(t *testing.T, v sdns.Version) { fiveReloads(t, v, "notify-reload", true) })
}

// TestSystemdFDStore: without a socket unit, the service's own socket lives in
// systemd's fd store: five restarts (and a reload) under load, nothing refused.
func TestSystemdFDStore(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "fdstore", "")
		if out, code, err := d.sd.Ctl("start", unit); err != nil || code != 0 {
			t.Fatalf("start: %v %d\n%s", err, code, out)
		}
		first := d.answer()
		r := startLoad(t, d.addr, 0.5)
		prev := first
		for i := 0; i < 5; i++ {
			// systemd refuses more than 5 starts in 10s (StartLimitBurst=): pace them.
			pace(2500 * time.Millisecond)
			if out, code, err := d.sd.Ctl("restart", unit); err != nil || code != 0 {
				t.Fatalf("restart %d: %v %d\n%s", i+1, err, code, out)
			}
			pid := d.mainPID()
			if pid == prev {
				t.Fatalf("restart %d: MainPID still %d", i+1, pid)
			}
			prev = pid
		}
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		res := r.Stop()
		checkLoad(t, res)
		log := d.sd.ReadLog("demo.log")
		if n := countLines(log, "descriptors from systemd"); n < 5 {
			t.Errorf("%d starts took their socket from systemd's fd store, want 5", n)
		}
		d.checkConsole()
	})
}
