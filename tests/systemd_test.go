package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
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
		// Before sdns.New's cleanup removes the state directory.
		checkVocabulary(t, sd.ReadLog("demo.log"))
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

// events parses what the demo's processes (and ExecReload=) logged so far.
func (d *sdDemo) events() logs.Log { return logs.Parse(d.sd.ReadLog("demo.log")) }

// waitEvent waits until more than before lines of event with every key=value of match
// have been logged by the demo's processes, and returns the last one.
func (d *sdDemo) waitEvent(before int, timeout time.Duration, event string, match ...string) logs.Line {
	d.t.Helper()
	return waitLogged(d.t, func() string { return d.sd.ReadLog("demo.log") }, before, timeout, event, match...)
}

// status runs `handover status -json` inside the namespace (as root) and returns
// the service's status.
func (d *sdDemo) status() (graceful.Status, error) {
	var st graceful.Status
	out, code, err := d.sd.Exec(filepath.Join(d.bin, "handover"), "status", "-json", "-control", d.ctl)
	if err == nil && code != 0 {
		err = fmt.Errorf("handover status: exit %d: %s", code, strings.TrimSpace(out))
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("handover status -json: %v: %q", err, out)
	}
	return st, nil
}

// checkListenerFrom checks through the status that the service serves its http
// listener on d.addr, from source ("systemd": a socket unit or the fd store).
func (d *sdDemo) checkListenerFrom(source string) graceful.Status {
	d.t.Helper()
	st, err := d.status()
	if err != nil {
		d.t.Fatal(err)
	}
	for _, l := range st.Listeners {
		if l.Name == "http" {
			if l.Network != "tcp" || l.Addr != d.addr || l.Source != source {
				d.t.Errorf("pid %d serves http on %s:%s from %s, want tcp:%s from %s", st.PID, l.Network, l.Addr, l.Source, d.addr, source)
			}
			return st
		}
	}
	d.t.Errorf("pid %d has no http listener: %+v", st.PID, st.Listeners)
	return st
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

// demoProcesses lists the demo processes in the namespace (host PIDs), zombies
// included: a zombie is a process nobody reaped, and counts as one left behind.
func (d *sdDemo) demoProcesses() []int {
	pids, _ := d.sd.Processes()
	var out []int
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if strings.TrimSpace(string(comm)) == "handover-demo" {
			out = append(out, p)
		}
	}
	return out
}

// describe lists processes with their state, for messages ("123 (Z)" for a zombie).
func describe(pids []int) string {
	var parts []string
	for _, p := range pids {
		parts = append(parts, fmt.Sprintf("%d (%s)", p, proc.State(p)))
	}
	return "[" + strings.Join(parts, " ") + "]"
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

// resetStartLimit makes systemd forget the unit's earlier starts (`systemctl
// reset-failed` resets the start rate limit counter), so that a test can restart it
// more often than StartLimitBurst= allows within StartLimitIntervalSec= (5 in 10s).
func (d *sdDemo) resetStartLimit() {
	d.t.Helper()
	if out, err := d.sd.CtlOK("reset-failed", unit); err != nil {
		d.t.Fatalf("systemctl reset-failed: %v\n%s", err, out)
	}
}

// waitSingle waits until exactly one demo process is left (the old ones drained).
func (d *sdDemo) waitSingle(timeout time.Duration) {
	d.t.Helper()
	if err := proc.WaitFor(func() bool { return len(d.demoProcesses()) == 1 }, timeout, "old generations to exit and be reaped"); err != nil {
		d.t.Errorf("%v: demo processes %s", err, describe(d.demoProcesses()))
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
		// The service answers as it tells systemd it is ready (READY=1): the unit
		// is active once systemd has read that.
		if err := d.sd.WaitActive(unit, 10*time.Second); err != nil {
			t.Error(err)
		}
		d.checkState(pid)
		d.checkConsole()
		if st := d.checkListenerFrom("systemd"); st.PID != pid || st.State != "serving" || !st.Systemd {
			t.Errorf("status %+v, want pid %d serving under systemd", st, pid)
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
			// The load runs on the new generation until the old one has drained.
			waitAnswers(t, r, pid, 0, int64(r.Config().Concurrency)+1)
			d.waitSingle(35 * time.Second)
		}
		res := r.Stop()
		checkLoad(t, res)
		checkAnswered(t, res, "generation", pids...)
		if n := len(res.PIDs()); n != 11 {
			t.Errorf("answers came from %d PIDs, want 11", n)
		}
		d.waitSingle(35 * time.Second)
		d.checkConsole()
	})
}

// TestSystemdKillNewMain: kill -9 of the main process that took over in a reload:
// systemd notices and restarts the service from the socket unit; only requests in
// flight in the killed process fail. The load runs from before that reload to after
// the next one, so that a drain that loses requests fails the test too.
func TestSystemdKillNewMain(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		d.answer()
		r := startLoad(t, d.addr, 0.5)
		restarted, k := d.killNewMain(r, 35*time.Second)
		// Let the load run on the restarted service.
		after := openWindow(r, "the restarted service", restarted)
		after.close(t, r)
		// systemd restarted the unit because its main process died (Restart=on-failure).
		if got := d.show("NRestarts"); got != "1" {
			t.Errorf("NRestarts=%s, want 1", got)
		}
		d.checkState(restarted)
		// The restarted service upgrades as before, under load.
		d.checkAfterKill(r, k, after)
		d.checkConsole()
	})
}

// TestSystemdFailedUpgrade: a new binary that exits 1, that never becomes ready, or
// that is missing makes `systemctl reload` fail; the unit stays active with the old
// main PID, which answers the load after each failure; the failed process is gone
// (no zombie) and no request fails.
func TestSystemdFailedUpgrade(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "-upgrade-timeout 3s")
		d.answer()
		main := d.mainPID()
		good := filepath.Join(d.bin, "handover-demo")
		saved := filepath.Join(d.sd.Dir(), "handover-demo.good")
		copyFile(t, good, saved, 0o755)
		r := startLoad(t, d.addr, 0.5)
		var windows []*window
		for _, c := range []struct {
			name   string
			deploy func()
			want   failedUpgrade
		}{
			// (A new process is systemd's child, not the old main's: its exit
			// status is systemd's to read, so err= cannot say how it ended.)
			{"exits 1", func() { writeFile(t, good, []byte("#!/bin/sh\nexit 1\n"), 0o755) },
				failedUpgrade{causes: []string{"exited"}}},
			{"hangs", func() { copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), good, 0o755) },
				failedUpgrade{causes: []string{"timeout"}}},
			{"missing", func() {
				if err := os.Remove(good); err != nil {
					t.Fatal(err)
				}
			}, failedUpgrade{causes: []string{"start"}, facts: []string{good}}},
		} {
			c.deploy()
			before := d.events().Count("upgrade_failed")
			w := openWindow(r, c.name, main)
			out, code := d.reload()
			if code == 0 {
				t.Errorf("%s: systemctl reload succeeded", c.name)
			}
			got := d.waitEvent(before, 10*time.Second, "upgrade_failed", logs.KV("pid", main))
			t.Logf("%s: systemctl reload exit %d: %s; logged %s", c.name, code, strings.TrimSpace(out), got)
			c.want.check(t, c.name, got)
			d.checkState(main)
			if got := d.answer(); got != main {
				t.Errorf("%s: answered by %d, want the old main %d", c.name, got, main)
			}
			if ps := d.demoProcesses(); len(ps) != 1 {
				t.Errorf("%s: demo processes %s, want only the old main (the failed one killed and reaped)", c.name, describe(ps))
			}
			w.close(t, r)
			windows = append(windows, w)
		}
		copyFile(t, saved, good, 0o755)
		if out, code := d.reload(); code != 0 {
			t.Errorf("reload with the good binary: exit %d\n%s", code, out)
		}
		next := openWindow(r, "the generation after the failures", d.mainPID())
		next.close(t, r)
		res := r.Stop()
		checkLoad(t, res)
		checkWindows(t, res, append(windows, next))
		d.checkConsole()
	})
}

// TestSystemdStop: `systemctl stop` while /slow requests are in flight: they complete
// after the stop began; the unit goes inactive before the drain deadline the test set,
// its main process having exited 0 by itself (not killed), and no process is left.
func TestSystemdStop(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		const drain = 10 * time.Second
		d := startSystemd(t, v, "", "-drain-timeout "+drain.String())
		main := d.answer()
		const n = 4
		type result struct {
			err error
			at  time.Time
		}
		results := make(chan result, n)
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
				results <- result{err, time.Now()}
			}()
		}
		// Every slow request is in flight (its handler runs) before the stop.
		if err := proc.WaitFor(func() bool {
			st, err := d.status()
			return err == nil && st.Connections.Active == n
		}, 10*time.Second, "the slow requests to be in flight"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if out, code, err := d.sd.Ctl("stop", unit); err != nil || code != 0 {
			t.Fatalf("systemctl stop: %v %d\n%s", err, code, out)
		}
		took := time.Since(start)
		for i := 0; i < n; i++ {
			r := <-results
			if r.err != nil {
				t.Errorf("in-flight request: %v", r.err)
			} else if !r.at.After(start) {
				t.Errorf("an in-flight request ended before the stop began; the test proves nothing")
			}
		}
		if st, _ := d.sd.ActiveState(unit); st != "inactive" {
			t.Errorf("after stop the unit is %s", st)
		}
		// The drain deadline (-drain-timeout 10s) is the test's own bound.
		if took > drain {
			t.Errorf("the stop ended after the drain deadline (%v)", drain)
		}
		d.checkExitedByItself()
		if ps := d.demoProcesses(); len(ps) > 0 {
			t.Errorf("demo processes left after stop: %s", describe(ps))
		}
		t.Logf("systemctl stop took %s with %d slow requests in flight", took.Round(time.Millisecond), n)
		d.checkConsole()
	})
}

// TestSystemdRestart: `systemctl restart` with the socket unit: connections made
// while no process runs wait in the backlog and are answered; nothing is refused, and
// every restarted process serves the load.
func TestSystemdRestart(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "", "")
		first := d.answer()
		r := startLoad(t, d.addr, 0.5)
		windows := []*window{openWindow(r, "the first process", first)}
		for i := 0; i < 3; i++ {
			before := d.mainPID()
			windows[len(windows)-1].close(t, r)
			if out, code, err := d.sd.Ctl("restart", unit); err != nil || code != 0 {
				t.Fatalf("restart: %v %d\n%s", err, code, out)
			}
			after := d.mainPID()
			if after == before || after == 0 {
				t.Errorf("restart %d: MainPID %d → %d", i+1, before, after)
			}
			windows = append(windows, openWindow(r, fmt.Sprintf("restart %d", i+1), after))
		}
		windows[len(windows)-1].close(t, r)
		res := r.Stop()
		checkLoad(t, res)
		checkWindows(t, res, windows)
		d.checkConsole()
	})
}

// fiveReloads runs five `systemctl reload` of the variant's unit, each once the
// previous old generation has drained, under load: each hands over to a new main process, which serves the load, and no
// request fails. When waits is true, systemctl reload returns only once the new main
// has taken over; otherwise (ExecReload=kill) it returns at once and the test waits
// for the handover.
func fiveReloads(t *testing.T, v sdns.Version, variant string, waits bool) {
	d := startSystemd(t, v, variant, "")
	prev := d.answer()
	r := startLoad(t, d.addr, 0.5)
	windows := []*window{openWindow(r, "generation 1", prev)}
	for i := 0; i < 5; i++ {
		d.waitSingle(30 * time.Second) // the previous generation has drained
		windows[len(windows)-1].close(t, r)
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
		windows = append(windows, openWindow(r, fmt.Sprintf("generation %d", i+2), prev))
	}
	windows[len(windows)-1].close(t, r)
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, windows)
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
// systemd's fd store: five restarts (and a reload) under load, nothing refused; each
// restarted process got the socket back from systemd and served the load.
func TestSystemdFDStore(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d := startSystemd(t, v, "fdstore", "")
		if out, code, err := d.sd.Ctl("start", unit); err != nil || code != 0 {
			t.Fatalf("start: %v %d\n%s", err, code, out)
		}
		first := d.answer()
		r := startLoad(t, d.addr, 0.5)
		prev := first
		windows := []*window{openWindow(r, "the first process", first)}
		for i := 0; i < 5; i++ {
			d.resetStartLimit()
			windows[len(windows)-1].close(t, r)
			if out, code, err := d.sd.Ctl("restart", unit); err != nil || code != 0 {
				t.Fatalf("restart %d: %v %d\n%s", i+1, err, code, out)
			}
			pid := d.mainPID()
			if pid == prev {
				t.Fatalf("restart %d: MainPID still %d", i+1, pid)
			}
			if st := d.checkListenerFrom("systemd"); st.PID != pid {
				t.Errorf("restart %d: status from pid %d, MainPID %d", i+1, st.PID, pid)
			}
			prev = pid
			windows = append(windows, openWindow(r, fmt.Sprintf("restart %d", i+1), pid))
		}
		windows[len(windows)-1].close(t, r)
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		last := openWindow(r, "the generation after the reload", d.mainPID())
		last.close(t, r)
		res := r.Stop()
		checkLoad(t, res)
		checkWindows(t, res, append(windows, last))
		d.checkConsole()
	})
}
