package main

import (
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// approach is one way of restarting a server under the load.
type approach struct {
	Name    string // flag and JSON name
	Label   string // for tables and the picture
	Server  string // what serves
	Restart string // what the bench does to restart it
	Systemd bool   // runs under a real systemd (needs root and namespaces)
	new     func(e *env) (server, error)
}

// env is what the approaches share within one run.
type env struct {
	opts    options
	repo    string
	bin     string // built binaries
	work    string // logs of servers not run by systemd
	systemd sdns.Version
	// serverEnv is added to the environment of the servers the bench starts
	// itself (-server-env), e.g. GODEBUG=inittrace=1.
	serverEnv []string
}

// server is one approach's server, from start to stop.
type server interface {
	// Addr is the loopback address the server listens on.
	Addr() string
	// Start starts the server and returns once it answers, with the PID that
	// answered (X-Pid).
	Start() (int, error)
	// Restart restarts the server whose current generation answers as pid. It
	// returns once the restart command has returned (at once for a signal).
	Restart(pid int) error
	// Host translates an X-Pid into a PID of this (the host's) PID namespace.
	Host(pid int) (int, error)
	// Reaps says whether old generations end up children of this process (a
	// subreaper), so that it must reap them by PID; under systemd, systemd does.
	Reaps() bool
	// Leaks lists the server processes other than the serving one (host PID
	// current) that are still running, and the server processes that are zombies.
	Leaks(current int) (running, zombies []int)
	// Stop stops every process of the server.
	Stop() error
	// Log returns the tail of the server's logs, for error messages.
	Log() string
	// Notes returns remarks for the report (e.g. what systemd logged).
	Notes() []string
	// CtlOverhead times n no-op service manager commands (nil without one).
	CtlOverhead(n int) []time.Duration
}

// holder is a server with a process that holds the sockets for the serving one
// without serving itself (handover run's master): the switch bench reports the CPU
// it takes while the probe runs.
type holder interface {
	// Holder returns that process's PID (0 until it runs).
	Holder() int
}

// demoFlags are handover-demo's flags in every approach that starts it itself. The
// probation is short: an old generation stands by, once drained, for its
// successor's probation (the library's default is 10 s without a service manager),
// and the benches wait for the old process to exit between restarts. It stands by
// idle, holding its copies of the sockets without accepting: nothing of a switch or
// of the load goes through it.
var demoFlags = []string{"-drain-timeout", "30s", "-probation", "200ms"}

var approaches = []approach{
	{
		Name:    "handover-usr2",
		Label:   "handover: SIGUSR2 (no systemd)",
		Server:  "cmd/handover-demo -drain-timeout 30s -probation 200ms",
		Restart: "kill -USR2 <pid>: the process starts its new generation (fork+exec)",
		new: func(e *env) (server, error) {
			return newProcServer(e, "handover-demo", syscall.SIGUSR2, false, demoFlags...)
		},
	},
	{
		Name:    "handover-lean",
		Label:   "handover: SIGUSR2, the peers' server",
		Server:  "servers/handover-lean: the library as in its README (graceful.ListenAndServe), the peers' endpoints, no state: the peers' server with handover as its restarter",
		Restart: "kill -USR2 <pid>: the process starts its new generation (fork+exec)",
		new: func(e *env) (server, error) {
			return newProcServer(e, "handover-lean", syscall.SIGUSR2, false)
		},
	},
	{
		Name:    "handover-run",
		Label:   "handover run: SIGHUP (stable PID)",
		Server:  "cmd/handover run -listen http=… -drain-timeout 30s -- cmd/handover-demo -drain-timeout 30s -probation 200ms (the master holds the socket; the demo is its child)",
		Restart: "kill -HUP <master>: the master starts a new child, waits for its READY=1, then stops the old one",
		new: func(e *env) (server, error) {
			return newRunServer(e)
		},
	},
	{
		Name:    "handover-reload",
		Label:   "handover: systemctl reload",
		Server:  "cmd/handover-demo under systemd, deploy/handover-demo.service + .socket",
		Restart: "systemctl reload handover-demo (ExecReload=handover reload: waits for the new generation)",
		Systemd: true,
		new: func(e *env) (server, error) {
			return newDemoUnits(e, "reload")
		},
	},
	{
		Name:    "handover-restart",
		Label:   "handover: systemctl restart",
		Server:  "cmd/handover-demo under systemd, deploy/handover-demo.service + .socket",
		Restart: "systemctl restart handover-demo (the socket unit keeps the socket; the old process drains, then the new one starts)",
		Systemd: true,
		new: func(e *env) (server, error) {
			return newDemoUnits(e, "restart")
		},
	},
	{
		Name:    "tableflip",
		Label:   "tableflip v1.2.3 + Shutdown",
		Server:  "servers/tableflip: github.com/cloudflare/tableflip v1.2.3 as in its README, http.Server.Shutdown on upg.Exit()",
		Restart: "kill -HUP <pid> (upg.Upgrade)",
		new: func(e *env) (server, error) {
			return newProcServer(e, "tableflip", syscall.SIGHUP, false)
		},
	},
	{
		Name:    "gracehttp",
		Label:   "facebookgo/grace gracehttp",
		Server:  "servers/gracehttp: github.com/facebookgo/grace/gracehttp (75cf19382434), gracehttp.Serve",
		Restart: "kill -USR2 <pid>",
		new: func(e *env) (server, error) {
			return newProcServer(e, "gracehttp", syscall.SIGUSR2, false)
		},
	},
	{
		Name:    "endless",
		Label:   "fvbock/endless",
		Server:  "servers/endless: github.com/fvbock/endless (447134032cb6), endless.ListenAndServe",
		Restart: "kill -HUP <pid>",
		new: func(e *env) (server, error) {
			return newProcServer(e, "endless", syscall.SIGHUP, false)
		},
	},
	{
		Name:    "plain-restart",
		Label:   "plain net/http: systemctl restart",
		Server:  "servers/plain: net/http on the socket systemd passes, http.Server.Shutdown on SIGTERM; plain.socket as deploy/handover-demo.socket",
		Restart: "systemctl restart plain (the socket unit keeps the socket)",
		Systemd: true,
		new: func(e *env) (server, error) {
			return newPlainUnits(e)
		},
	},
	{
		Name:    "naive",
		Label:   "naive: kill and start",
		Server:  "servers/naive: http.ListenAndServe",
		Restart: "kill <pid> (SIGTERM: the process ends at once), wait for it, start a new one that binds the port",
		new: func(e *env) (server, error) {
			return newProcServer(e, "naive", syscall.SIGTERM, true)
		},
	},
}

func approachNames() []string { return namesOf(approaches, func(a approach) string { return a.Name }) }

func approachByName(name string) (approach, bool) {
	return byName(approaches, func(a approach) string { return a.Name }, name)
}

// namesOf lists the names of list's items.
func namesOf[T any](list []T, name func(T) string) []string {
	var out []string
	for _, a := range list {
		out = append(out, name(a))
	}
	return out
}

// byName returns the item of list called n.
func byName[T any](list []T, name func(T) string, n string) (T, bool) {
	for _, a := range list {
		if name(a) == n {
			return a, true
		}
	}
	var zero T
	return zero, false
}

// freePort returns a loopback address nothing listens on right now, with a port
// below 32768: outside the kernel's range of ephemeral ports, so that no
// connection a client opens meanwhile (the switch probe opens thousands) takes it
// before the server binds it.
func freePort() (string, error) {
	for i := 0; i < 100; i++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+mrand.IntN(12000)))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr, nil
		}
	}
	return "", errors.New("no free port between 20000 and 32000 on 127.0.0.1")
}

// cleanEnv is the environment of the servers the bench starts: nothing of its own
// (no LISTEN_FDS, NOTIFY_SOCKET, ...).
func cleanEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
}

// waitAnswer waits until addr answers GET / with a 200 and an X-Pid, or alive
// reports false, or timeout passes.
func waitAnswer(addr string, timeout time.Duration, alive func() bool) (int, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := rawhttp.Get(addr, "/", 2*time.Second)
		if err == nil && resp.Status == 200 && resp.PID() != 0 {
			return resp.PID(), nil
		}
		if err == nil {
			err = fmt.Errorf("status %d, X-Pid %q", resp.Status, resp.Header.Get("X-Pid"))
		}
		last = err
		if alive != nil && !alive() {
			return 0, fmt.Errorf("the server exited before answering (last try: %v)", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s did not answer within %v: %v", addr, timeout, last)
}

// procServer is a server the bench starts itself, restarted by a signal (or, for
// the naive server, killed and started again).
type procServer struct {
	e     *env
	name  string
	bin   string
	args  []string
	sig   syscall.Signal
	naive bool
	addr  string
	log   string

	mu   sync.Mutex
	pids []int // every process started or seen, for cleanup
}

func newProcServer(e *env, name string, sig syscall.Signal, naive bool, extra ...string) (*procServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &procServer{
		e: e, name: name, bin: filepath.Join(e.bin, name), sig: sig, naive: naive, addr: addr,
		log: filepath.Join(e.work, name+".log"),
	}
	s.args = append([]string{"-listen", addr}, extra...)
	return s, nil
}

func (s *procServer) Addr() string { return s.addr }

// Reaps is true but for the naive server, whose Restart reaps the killed process.
func (s *procServer) Reaps() bool { return !s.naive }

func (s *procServer) Host(pid int) (int, error) { return pid, nil }

func (s *procServer) Notes() []string { return nil }

func (s *procServer) CtlOverhead(int) []time.Duration { return nil }

// spawn starts one process of the server, its output appended to the log.
func (s *procServer) spawn() (int, error) {
	f, err := os.OpenFile(s.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// An absolute path as argv[0]: the peers re-execute os.Args[0].
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = append(cleanEnv(), s.e.serverEnv...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = s.e.work
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	// Reaped by PID with proc.Reap, never by cmd.Wait.
	cmd.Process.Release()
	s.mu.Lock()
	s.pids = append(s.pids, pid)
	s.mu.Unlock()
	return pid, nil
}

func (s *procServer) Start() (int, error) {
	pid, err := s.spawn()
	if err != nil {
		return 0, err
	}
	got, err := waitAnswer(s.addr, 20*time.Second, func() bool { return proc.Alive(pid) })
	if err == nil && got != pid {
		err = fmt.Errorf("answered by PID %d, started %d", got, pid)
	}
	return got, err
}

func (s *procServer) Restart(pid int) error {
	s.mu.Lock()
	s.pids = append(s.pids, pid)
	s.mu.Unlock()
	if err := syscall.Kill(pid, s.sig); err != nil {
		return fmt.Errorf("kill -%d %d: %w", s.sig, pid, err)
	}
	if !s.naive {
		return nil
	}
	// The naive restart: wait for the killed process, then start a new one.
	if _, err := proc.Reap(pid, s.e.opts.exitTimeout); err != nil {
		return err
	}
	_, err := s.spawn()
	return err
}

func (s *procServer) Leaks(current int) (running, zombies []int) {
	s.mu.Lock()
	pids := append([]int(nil), s.pids...)
	s.mu.Unlock()
	seen := map[int]bool{}
	for _, p := range append(pids, proc.Children(os.Getpid())...) {
		if seen[p] || p == current {
			continue
		}
		seen[p] = true
		switch st := proc.State(p); {
		case st == "":
		case st == "Z":
			zombies = append(zombies, p)
		case isOurs(p, s.bin):
			running = append(running, p)
		}
	}
	return running, zombies
}

// isOurs reports whether pid runs bin (so that a reused PID is not blamed).
func isOurs(pid int, bin string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == bin
}

// Stop sends SIGTERM to every process still running and reaps them all, with
// SIGKILL for any still there after the exit timeout.
func (s *procServer) Stop() error {
	s.mu.Lock()
	pids := append([]int(nil), s.pids...)
	s.mu.Unlock()
	for _, p := range append(pids, proc.Children(os.Getpid())...) {
		if proc.Alive(p) && isOurs(p, s.bin) {
			syscall.Kill(p, syscall.SIGTERM)
			pids = append(pids, p)
		}
	}
	var errs []error
	deadline := time.Now().Add(s.e.opts.exitTimeout)
	for _, p := range proc.Children(os.Getpid()) {
		// A process that is exiting may no longer show its executable: reap what
		// was signalled or started whatever it shows.
		if !slices.Contains(pids, p) && !isOurs(p, s.bin) && proc.State(p) != "Z" {
			continue
		}
		if _, err := proc.Reap(p, time.Until(deadline)); err != nil {
			if _, kerr := proc.KillAndReap(p, 5*time.Second); kerr != nil {
				errs = append(errs, kerr)
			}
		}
	}
	return errors.Join(errs...)
}

func (s *procServer) Log() string {
	b, _ := os.ReadFile(s.log)
	return tail(string(b), 30)
}

// runServer is the demo under `handover run`: the master keeps its PID and the
// socket; each restart (SIGHUP to the master) replaces its child. The master reaps
// the old children itself.
type runServer struct {
	e      *env
	addr   string
	log    string
	master int
}

func newRunServer(e *env) (*runServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	return &runServer{e: e, addr: addr, log: filepath.Join(e.work, "handover-run.log")}, nil
}

func (s *runServer) Addr() string                    { return s.addr }
func (s *runServer) Reaps() bool                     { return false }
func (s *runServer) Host(pid int) (int, error)       { return pid, nil }
func (s *runServer) Notes() []string                 { return nil }
func (s *runServer) CtlOverhead(int) []time.Duration { return nil }
func (s *runServer) Holder() int                     { return s.master }

func (s *runServer) Start() (int, error) {
	f, err := os.OpenFile(s.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	args := slices.Concat([]string{"run", "-listen", "http=" + s.addr, "-drain-timeout", "30s", "--", filepath.Join(s.e.bin, "handover-demo")}, demoFlags)
	cmd := exec.Command(filepath.Join(s.e.bin, "handover"), args...)
	cmd.Env = append(cleanEnv(), s.e.serverEnv...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = s.e.work
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	s.master = cmd.Process.Pid
	// Reaped by PID with proc.Reap, never by cmd.Wait.
	cmd.Process.Release()
	return waitAnswer(s.addr, 20*time.Second, func() bool { return proc.Alive(s.master) })
}

func (s *runServer) Restart(int) error {
	if err := syscall.Kill(s.master, syscall.SIGHUP); err != nil {
		return fmt.Errorf("kill -HUP %d: %w", s.master, err)
	}
	return nil
}

// Leaks lists the master's children other than the serving one, and zombies under it.
func (s *runServer) Leaks(current int) (running, zombies []int) {
	for _, p := range proc.Descendants(s.master) {
		switch {
		case proc.Zombie(p):
			zombies = append(zombies, p)
		case p != current && proc.Alive(p):
			running = append(running, p)
		}
	}
	return running, zombies
}

// Stop sends the master SIGTERM (its child drains) and reaps it.
func (s *runServer) Stop() error {
	if s.master == 0 {
		return nil
	}
	syscall.Kill(s.master, syscall.SIGTERM)
	if _, err := proc.Reap(s.master, s.e.opts.exitTimeout); err != nil {
		_, kerr := proc.KillAndReap(s.master, 5*time.Second)
		return errors.Join(err, kerr)
	}
	return nil
}

func (s *runServer) Log() string {
	b, _ := os.ReadFile(s.log)
	return tail(string(b), 30)
}

// sdServer is a server run by a real systemd in namespaces (tests/internal/sdns).
type sdServer struct {
	e       *env
	tb      *cmdTB
	sd      *sdns.Systemd
	unit    string
	verb    string // systemctl verb that restarts: reload or restart
	comm    string // the server binary's name, to find its processes
	addr    string
	logName string
}

// copyFile copies src to dst (mode 0755).
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// bootSystemd creates a systemd instance with units (name → contents) after
// calling prepare with its binary directory. On error everything is cleaned up.
func bootSystemd(e *env, name string, units func(sd *sdns.Systemd, bin string) (map[string]string, error), bins ...string) (*sdns.Systemd, *cmdTB, error) {
	tb := newCmdTB("handover-bench/"+name, logf)
	fail := func(err error) (*sdns.Systemd, *cmdTB, error) {
		tb.runCleanups()
		return nil, nil, err
	}
	sd, err := sdns.New(tb, e.systemd)
	if err != nil {
		return fail(err)
	}
	bin := filepath.Join(sd.Dir(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return fail(err)
	}
	for _, b := range bins {
		if err := copyFile(filepath.Join(e.bin, b), filepath.Join(bin, b)); err != nil {
			return fail(err)
		}
	}
	us, err := units(sd, bin)
	if err != nil {
		return fail(err)
	}
	for n, c := range us {
		if err := sd.AddUnit(n, c); err != nil {
			return fail(err)
		}
	}
	if err := sd.Boot(); err != nil {
		return fail(err)
	}
	return sd, tb, nil
}

// adaptUnit turns a unit file of deploy/ into one for the test systemd, as
// tests/systemd_test.go does: the binaries in bin, the address addr, output to a
// log file, DefaultDependencies=no (there is no sysinit.target in the namespace),
// plus extraUnit lines in [Unit].
func adaptUnit(text, bin, addr, log string, extraUnit ...string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.ReplaceAll(line, "/usr/local/bin/", bin+"/")
		line = strings.ReplaceAll(line, "127.0.0.1:8080", addr)
		out = append(out, line)
		switch line {
		case "[Unit]":
			out = append(out, "DefaultDependencies=no")
			out = append(out, extraUnit...)
		case "[Service]":
			out = append(out, "StandardOutput=append:"+log, "StandardError=append:"+log)
		}
	}
	return strings.Join(out, "\n")
}

// startLimitOff lets a unit be restarted more than five times in ten seconds
// (systemd's default StartLimitBurst=/StartLimitIntervalSec=), which a restart
// every -interval needs.
const startLimitOff = "StartLimitIntervalSec=0"

// newDemoUnits runs handover-demo with the units of deploy/, restarted with
// systemctl verb.
func newDemoUnits(e *env, verb string) (*sdServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	service, err := os.ReadFile(filepath.Join(e.repo, "deploy", "handover-demo.service"))
	if err != nil {
		return nil, err
	}
	socket, err := os.ReadFile(filepath.Join(e.repo, "deploy", "handover-demo.socket"))
	if err != nil {
		return nil, err
	}
	var extra []string
	if verb == "restart" {
		extra = append(extra, startLimitOff)
	}
	sd, tb, err := bootSystemd(e, "handover-"+verb, func(sd *sdns.Systemd, bin string) (map[string]string, error) {
		log := sd.LogPath("demo.log")
		return map[string]string{
			"handover-demo.service": adaptUnit(string(service), bin, addr, log, extra...),
			"handover-demo.socket":  adaptUnit(string(socket), bin, addr, log),
		}, nil
	}, "handover-demo", "handover")
	if err != nil {
		return nil, err
	}
	return &sdServer{e: e, tb: tb, sd: sd, unit: "handover-demo.service", verb: verb, comm: "handover-demo", addr: addr, logName: "demo.log"}, nil
}

// plainUnits are the plain server's units: the socket as deploy/handover-demo.socket
// (same backlog), a simple service with the same stop timeout.
const plainSocket = `[Unit]
Description=plain net/http server socket (benchmark)

[Socket]
ListenStream=127.0.0.1:8080
Accept=no
Backlog=4096
`

const plainService = `[Unit]
Description=plain net/http server (benchmark)
Requires=plain.socket
After=plain.socket

[Service]
Type=simple
ExecStart=/usr/local/bin/plain
KillMode=control-group
TimeoutStopSec=45s
`

func newPlainUnits(e *env) (*sdServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	sd, tb, err := bootSystemd(e, "plain-restart", func(sd *sdns.Systemd, bin string) (map[string]string, error) {
		log := sd.LogPath("plain.log")
		return map[string]string{
			"plain.service": adaptUnit(plainService, bin, addr, log, startLimitOff),
			"plain.socket":  adaptUnit(plainSocket, bin, addr, log),
		}, nil
	}, "plain")
	if err != nil {
		return nil, err
	}
	return &sdServer{e: e, tb: tb, sd: sd, unit: "plain.service", verb: "restart", comm: "plain", addr: addr, logName: "plain.log"}, nil
}

func (s *sdServer) Addr() string { return s.addr }
func (s *sdServer) Reaps() bool  { return false }

// Start makes the first connection, which starts the service (socket activation).
func (s *sdServer) Start() (int, error) {
	return waitAnswer(s.addr, 30*time.Second, nil)
}

func (s *sdServer) Restart(int) error {
	out, code, err := s.sd.Ctl(s.verb, s.unit)
	if err == nil && code != 0 {
		err = fmt.Errorf("systemctl %s %s: exit %d: %s", s.verb, s.unit, code, strings.TrimSpace(out))
	}
	return err
}

func (s *sdServer) Host(pid int) (int, error) { return s.sd.HostPID(pid) }

func (s *sdServer) CtlOverhead(n int) []time.Duration {
	var out []time.Duration
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := s.sd.Show(s.unit, "MainPID"); err != nil {
			return out
		}
		out = append(out, time.Since(t))
	}
	return out
}

func (s *sdServer) Leaks(current int) (running, zombies []int) {
	pids, _ := s.sd.Processes()
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if strings.TrimSpace(string(comm)) != s.comm || p == current {
			continue
		}
		switch proc.State(p) {
		case "":
		case "Z":
			zombies = append(zombies, p)
		default:
			running = append(running, p)
		}
	}
	return running, zombies
}

func (s *sdServer) Stop() error {
	err := s.sd.Stop()
	s.tb.runCleanups()
	return err
}

func (s *sdServer) Log() string {
	return tail(s.sd.ReadLog(s.logName), 30) + "\nsystemd console:\n" + tail(s.sd.ConsoleLog(), 20)
}

func (s *sdServer) Notes() []string {
	var out []string
	if lines := s.sd.SuspiciousLines(); len(lines) > 0 {
		out = append(out, "systemd logged: "+strings.Join(lines, " | "))
	}
	if pid, err := s.sd.MainPID(s.unit); err == nil {
		out = append(out, fmt.Sprintf("MainPID at the end: %d", pid))
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
