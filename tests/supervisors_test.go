package tests

// The deploy/run recipes for supervisord, runit and s6, each run as written under its
// own supervisor, which the test starts privately: supervisord -n with a configuration
// and a unix socket in the test's directory, runsvdir and s6-svscan on a scan directory
// there. Nothing touches the host's /etc/service, /etc/supervisor or a supervisor the
// host runs; every process is reaped by PID at the end. The test substitutes only what
// must differ here (the binaries' locations, the port, the control socket's and the
// log's paths); each substituted string must still be in the recipe.

import (
	"context"
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
)

// supervised is a deploy/run recipe running under a supervisor the test started.
type supervised struct {
	t      *testing.T
	name   string // the supervisor, for messages
	dir    string
	pid    int     // the supervisor the test started: supervisord, runsvdir, s6-svscan
	logs   string  // the supervisor's own output
	m      *master // the master the recipe runs; m.host follows its restarts
	hupCmd string  // the supervisor's command that sends the service SIGHUP, for messages

	// servicePID is the PID the supervisor tracks for the service, 0 while it is down.
	servicePID func() int
	// hup sends the service SIGHUP the supervisor's way; down stops it that way.
	hup, down func() error
	// exited is the service's last exit as the supervisor saw it, once it is down:
	// its exit code, and false while it runs or when a signal killed it.
	exited func() (code int, ok bool)
}

// recipeDir is a private directory of the test with the paths the recipes get in
// place of theirs.
type recipeDir struct {
	dir, addr, ctl, demo, handover string
	log                            string // the master's log, if not the supervisor's output
}

func newRecipeDir(t *testing.T) recipeDir {
	dir := t.TempDir()
	return recipeDir{dir: dir, addr: freePort(t), demo: proc.Binary(t, demoPkg), handover: proc.Binary(t, handoverPkg)}
}

// recipeFile reads deploy/run/name with each old string of subst (old, new pairs)
// replaced: a recipe that no longer has one fails the test instead of running
// something else.
func recipeFile(t *testing.T, name string, subst ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "run", name))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(subst); i += 2 {
		if !strings.Contains(string(b), subst[i]) {
			t.Fatalf("deploy/run/%s no longer has %q: update the test's substitutions", name, subst[i])
		}
	}
	return strings.NewReplacer(subst...).Replace(string(b))
}

// shellRecipe is the run script of the runit and s6 recipes, which name the same
// paths, for the test's directory.
func (r *recipeDir) shellRecipe(t *testing.T, name string) string {
	runDir := filepath.Join(r.dir, "run", "handover-demo")
	r.ctl = filepath.Join(runDir, "control.sock")
	return recipeFile(t, name,
		"/usr/local/bin/handover-demo", r.demo,
		"/usr/local/bin/handover run", r.handover+" run",
		"127.0.0.1:8080", r.addr,
		"/run/handover-demo", runDir)
}

// start starts the supervisor (argv) privately, with its output in the directory,
// and waits until the master the recipe runs serves.
func (s *supervised) start(r recipeDir, argv ...string) {
	t := s.t
	s.dir, s.logs = r.dir, filepath.Join(r.dir, "supervisor.log")
	s.m = &master{t: t, dir: r.dir, addr: r.addr, ctl: r.ctl, logPath: r.log, exited: true}
	if r.log == "" {
		s.m.logPath = s.logs
	}
	out, err := os.Create(s.logs)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	// TMPDIR: the master's notification socket goes in the test's directory.
	cmd.Env = cleanEnv("TMPDIR=" + r.dir)
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.pid = cmd.Process.Pid
	cmd.Process.Release()
	t.Cleanup(s.cleanup)
	s.waitMaster(0)
}

// waitMaster waits until the supervisor runs a master other than old that serves,
// and makes it s.m.
func (s *supervised) waitMaster(old int) {
	t := s.t
	t.Helper()
	var pid int
	err := proc.WaitFor(func() bool {
		pid = s.servicePID()
		if pid == 0 || pid == old {
			return false
		}
		st, err := ctlStatus(t, s.m.ctl)
		return err == nil && st.PID == pid && st.State == "serving" && st.Child != 0
	}, 30*time.Second, fmt.Sprintf("%s to run a master (other than %d) that serves", s.name, old))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(proc.Descendants(s.pid), pid) {
		t.Fatalf("the master %d is not under the %s the test started (%d)", pid, s.name, s.pid)
	}
	s.m.host = pid
}

// checkRecipe runs the checks every recipe passes.
func checkRecipe(t *testing.T, s *supervised) {
	s.upgradesUnderLoad()
	s.killedMasterRestarts()
	s.stopDrains()
}

// upgradesUnderLoad: two `handover reload` and two SIGHUPs sent the supervisor's way,
// alternately, under load: each makes a new child, which answers; the master's PID
// does not change, and it is still the PID the supervisor tracks; no request fails.
func (s *supervised) upgradesUnderLoad() {
	t, m := s.t, s.m
	first := m.status()
	r := startLoad(t, m.addr, 0.5)
	children := []int{first.Child}
	for i, how := range []string{"reload", "hup", "reload", "hup"} {
		before := m.status()
		trigger := "control socket"
		if how == "reload" {
			if out, code := m.reload(); code != 0 {
				r.Stop()
				t.Fatalf("upgrade %d: handover reload exited %d\n%s", i+1, code, out)
			}
		} else {
			trigger = "SIGHUP"
			if err := s.hup(); err != nil {
				r.Stop()
				t.Fatalf("upgrade %d: %s: %v", i+1, s.hupCmd, err)
			}
			// It returns at once: wait for the upgrade to be over.
			if err := proc.WaitFor(func() bool {
				st, err := ctlStatus(t, m.ctl)
				return err == nil && st.Generation == before.Generation+1 && st.State == "serving" && st.Upgrading == 0
			}, 30*time.Second, "the upgrade "+s.hupCmd+" asked for"); err != nil {
				r.Stop()
				t.Fatal(err)
			}
		}
		st := m.status()
		if st.PID != first.PID || s.servicePID() != first.PID {
			t.Errorf("upgrade %d (%s): the master is %d, %s tracks %d; want %d throughout", i+1, trigger, st.PID, s.name, s.servicePID(), first.PID)
		}
		last := st.Upgrades[len(st.Upgrades)-1]
		if st.Child == before.Child || st.Generation != before.Generation+1 || last.Trigger != trigger || last.Outcome != "ok" || last.To != st.Child {
			t.Errorf("upgrade %d (%s): status %+v, last upgrade %+v", i+1, trigger, st, last)
		}
		children = append(children, st.Child)
		pace(500 * time.Millisecond)
	}
	res := r.Stop()
	checkLoad(t, res)
	for i, c := range children {
		if !slices.ContainsFunc(res.PIDs(), func(p load.PIDSeen) bool { return p.PID == c }) {
			t.Errorf("child %d (PID %d) never answered", i+1, c)
		}
	}
	m.waitSettled(15 * time.Second)
	t.Logf("%s: 4 upgrades (2 handover reload, 2 %s): %d requests, %d failed; master PID %d kept", s.name, s.hupCmd, res.Total(), res.FailureCount(), first.PID)
}

// killedMasterRestarts: the master killed with SIGKILL (its child goes with it, by
// its parent-death signal) is started again by the supervisor; the new master binds
// the socket again, serves, and upgrades.
func (s *supervised) killedMasterRestarts() {
	t, m := s.t, s.m
	old := m.status()
	if err := syscall.Kill(old.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The child is reparented to the test (a subreaper), which reaps it; the
	// supervisor reaps the master.
	for _, pid := range []int{old.Child, old.PID} {
		if err := waitGone(pid, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	s.waitMaster(old.PID)
	st := m.status()
	resp, err := rawhttp.Get(m.addr, "/", 5*time.Second)
	if err != nil || resp.Status != 200 || resp.PID() != st.Child {
		t.Fatalf("after the restart: %v, answered by %d; want 200 from the new child %d", err, respPID(resp), st.Child)
	}
	if out, code := m.reload(); code != 0 {
		t.Errorf("handover reload to the restarted master: exit %d\n%s", code, out)
	}
	t.Logf("%s: master %d killed; restarted as %d, serving", s.name, old.PID, st.PID)
}

// stopDrains: a stop through the supervisor while a slow request is in flight: the
// child answers it, then the master exits 0 (as the supervisor saw it, and logged
// event=exit code=0), and the service stays down.
func (s *supervised) stopDrains() {
	t, m := s.t, s.m
	st := m.status()
	slow := slowOn(t, m.addr, st.Child, "/slow?ms=1500", 20*time.Second)
	if err := s.down(); err != nil {
		t.Fatalf("stopping through %s: %v", s.name, err)
	}
	for _, pid := range []int{st.Child, st.PID} {
		if err := waitGone(pid, 45*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	res := <-slow
	if res.err != nil || res.resp.Status != 200 || res.resp.PID() != st.Child {
		t.Errorf("the request in flight at the stop: %v, %+v; want 200 from %d", res.err, res.resp, st.Child)
	}
	var code int
	var ok bool
	if err := proc.WaitFor(func() bool { code, ok = s.exited(); return ok }, 10*time.Second, s.name+" to report the master's exit"); err != nil || code != 0 {
		t.Errorf("%s reports the master's exit: code %d (%v); want 0", s.name, code, err)
	}
	if n := logs.Parse(m.log()).Count("exit", logs.KV("pid", st.PID), "code=0"); n != 1 {
		t.Errorf("the master %d logged event=exit code=0 %d times, want 1", st.PID, n)
	}
	// The supervisor may still be running its own step after the exit (runsv's
	// ./finish, whose PID it records as the service's until it ends): the service
	// must be down once that is over, not started again.
	if err := proc.WaitFor(func() bool { return s.servicePID() == 0 }, 10*time.Second, s.name+" to record the service down"); err != nil {
		t.Errorf("%s runs the service again (PID %d, %s) after the stop: %v", s.name, s.servicePID(), proc.Cmdline(s.servicePID()), err)
	}
	t.Logf("%s: stopped with a 1.5s request in flight: answered, master exit %d", s.name, code)
}

// cleanup kills the supervisor and whatever still runs under it, by PID, and reaps
// them (what it leaves is reparented to the test, a subreaper).
func (s *supervised) cleanup() {
	t := s.t
	if t.Failed() {
		b, _ := os.ReadFile(s.logs)
		t.Logf("%s's output:\n%s\nthe master's log:\n%s", s.name, tail(string(b), 30), tail(s.m.log(), 60))
	}
	under := proc.Descendants(s.pid)
	if _, err := proc.KillAndReap(s.pid, 10*time.Second); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	for _, pid := range under {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range under {
		if err := waitGone(pid, 10*time.Second); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// runTool runs a supervisor's command line tool; its output is in the error.
func runTool(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// TestRecipeSupervisord: deploy/run/supervisord.conf's [program] section in a
// supervisord of the test's own (its configuration, socket and logs in the test's
// directory): `handover reload` and `supervisorctl signal HUP` upgrade under load
// with 0 failed requests while supervisord's PID for the program stays the master's;
// a SIGKILL of the master is answered by a restart that serves; `supervisorctl stop`
// lets the request in flight finish, and the master exits 0 (supervisord's
// exitstatus).
func TestRecipeSupervisord(t *testing.T) {
	supervisord := needTool(t, "supervisord", "/usr/bin/supervisord")
	supervisorctl := needTool(t, "supervisorctl", "/usr/bin/supervisorctl")
	r := newRecipeDir(t)
	r.ctl, r.log = filepath.Join(r.dir, "control.sock"), filepath.Join(r.dir, "master.log")
	program := recipeFile(t, "supervisord.conf",
		"/usr/local/bin/handover-demo", r.demo,
		"/usr/local/bin/handover run", r.handover+" run",
		"127.0.0.1:8080", r.addr,
		"/run/handover-demo.sock", r.ctl,
		"/var/log/handover-demo.log", r.log)
	sock := filepath.Join(r.dir, "supervisor.sock")
	conf := filepath.Join(r.dir, "supervisord.conf")
	writeFile(t, conf, []byte(fmt.Sprintf(`; the test's own supervisord, then the recipe
[supervisord]
nodaemon=true
logfile=%[1]s/supervisord.log
pidfile=%[1]s/supervisord.pid
childlogdir=%[1]s
[unix_http_server]
file=%[2]s
chmod=0700
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://%[2]s

%[3]s`, r.dir, sock, program)), 0o600)
	ctl := func(args ...string) error {
		return runTool(append([]string{supervisorctl, "-c", conf}, args...)...)
	}
	info := func() map[string]string {
		v, _ := supervisorProcessInfo(sock, "handover-demo") // none while supervisord starts
		return v
	}
	s := &supervised{t: t, name: "supervisord", hupCmd: "supervisorctl signal HUP",
		servicePID: func() int { n, _ := strconv.Atoi(info()["pid"]); return n },
		hup:        func() error { return ctl("signal", "HUP", "handover-demo") },
		down:       func() error { return ctl("stop", "handover-demo") },
		exited: func() (int, bool) {
			v := info()
			code, err := strconv.Atoi(v["exitstatus"])
			return code, err == nil && v["statename"] == "STOPPED"
		},
	}
	s.start(r, supervisord, "-n", "-c", conf)
	checkRecipe(t, s)
}

// supervisorProcessInfo asks supervisord (XML-RPC over its unix socket, as
// supervisorctl does) for supervisor.getProcessInfo(name): the program's pid, its
// state and its last exit status, which supervisorctl does not print.
func supervisorProcessInfo(sock, name string) (map[string]string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	var arg strings.Builder
	xml.EscapeText(&arg, []byte(name))
	req := `<?xml version="1.0"?><methodCall><methodName>supervisor.getProcessInfo</methodName>` +
		`<params><param><value><string>` + arg.String() + `</string></value></param></params></methodCall>`
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Post("http://supervisord/RPC2", "text/xml", strings.NewReader(req))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Members []struct {
			Name  string `xml:"name"`
			Value struct {
				Int  string `xml:"int"`
				Str  string `xml:"string"`
				Text string `xml:",chardata"`
			} `xml:"value"`
		} `xml:"params>param>value>struct>member"`
	}
	if err := xml.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("getProcessInfo: %v", err)
	}
	if len(r.Members) == 0 {
		return nil, fmt.Errorf("getProcessInfo(%s): no struct in the answer (a fault?)", name)
	}
	v := map[string]string{}
	for _, m := range r.Members {
		v[m.Name] = strings.TrimSpace(m.Value.Int + m.Value.Str + m.Value.Text)
	}
	return v, nil
}

// TestRecipeRunit: deploy/run/runit/run as the run script of a service under a
// runsvdir of the test's own (a scan directory in the test's directory): `handover
// reload` and `sv hup` upgrade under load with 0 failed requests while runsv's PID
// for the service stays the master's; a SIGKILL of the master is answered by a
// restart that serves; `sv down` lets the request in flight finish, and the master
// exits 0 (the exit code runsv passes to ./finish, which the test adds beside the
// recipe to record it).
func TestRecipeRunit(t *testing.T) {
	runsvdir := needTool(t, "runsvdir", "/usr/bin/runsvdir")
	sv := needTool(t, "sv", "/usr/bin/sv")
	r := newRecipeDir(t)
	scan := filepath.Join(r.dir, "service")
	svc := filepath.Join(scan, "handover-demo")
	if err := os.MkdirAll(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(svc, "run"), []byte(r.shellRecipe(t, "runit/run")), 0o755)
	finished := filepath.Join(r.dir, "finish.log")
	writeFile(t, filepath.Join(svc, "finish"), []byte("#!/bin/sh\n# runsv runs it after ./run exits with its exit code (-1 if a signal killed it) and wait status.\necho \"$1 $2\" >> "+finished+"\n"), 0o755)
	s := &supervised{t: t, name: "runsv", hupCmd: "sv hup",
		servicePID: func() int {
			b, _ := os.ReadFile(filepath.Join(svc, "supervise", "pid"))
			n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return n
		},
		hup:  func() error { return runTool(sv, "hup", svc) },
		down: func() error { return runTool(sv, "down", svc) },
		exited: func() (int, bool) {
			b, _ := os.ReadFile(finished)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			code, err := strconv.Atoi(strings.Split(lines[len(lines)-1], " ")[0])
			return code, err == nil && code >= 0
		},
	}
	s.start(r, runsvdir, scan)
	checkRecipe(t, s)
	if b, _ := os.ReadFile(finished); strings.TrimSpace(string(b)) != "-1 9\n0 0" {
		t.Errorf("the exits runsv saw (./finish's arguments): %q; want the SIGKILL (-1 9), then 0 0", b)
	}
}

// TestRecipeS6: deploy/run/s6/handover-demo/ (run, type, timeout-kill) as a service
// directory under an s6-svscan of the test's own: `handover reload` and `s6-svc -h`
// upgrade under load with 0 failed requests while s6-supervise's PID for the service
// stays the master's; a SIGKILL of the master is answered by a restart that serves;
// `s6-svc -d` lets the request in flight finish, and the master exits 0 (s6-svstat's
// exitcode).
func TestRecipeS6(t *testing.T) {
	svscan := needTool(t, "s6-svscan", "/usr/bin/s6-svscan")
	svc6 := needTool(t, "s6-svc", "/usr/bin/s6-svc")
	svstat := needTool(t, "s6-svstat", "/usr/bin/s6-svstat")
	r := newRecipeDir(t)
	scan := filepath.Join(r.dir, "scan")
	svc := filepath.Join(scan, "handover-demo")
	if err := os.MkdirAll(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(svc, "run"), []byte(r.shellRecipe(t, "s6/handover-demo/run")), 0o755)
	for _, f := range []string{"type", "timeout-kill"} {
		writeFile(t, filepath.Join(svc, f), []byte(recipeFile(t, "s6/handover-demo/"+f)), 0o644)
	}
	stat := func() []string {
		out, _ := exec.Command(svstat, "-o", "up,pid,exitcode", svc).Output()
		return append(strings.Fields(string(out)), "", "", "")
	}
	s := &supervised{t: t, name: "s6-supervise", hupCmd: "s6-svc -h",
		servicePID: func() int { n, _ := strconv.Atoi(stat()[1]); return max(n, 0) },
		hup:        func() error { return runTool(svc6, "-h", svc) },
		down:       func() error { return runTool(svc6, "-d", svc) },
		exited: func() (int, bool) {
			f := stat()
			code, err := strconv.Atoi(f[2])
			return code, f[0] == "false" && err == nil && code >= 0
		},
	}
	s.start(r, svscan, scan)
	checkRecipe(t, s)
}
