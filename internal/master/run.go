//go:build linux

package master

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
	"golang.org/x/sys/unix"
)

// Defaults for Config's zero values.
const (
	DefaultDrainTimeout    = 30 * time.Second
	DefaultUpgradeTimeout  = 30 * time.Second
	DefaultRestartDelay    = 100 * time.Millisecond
	DefaultRestartDelayMax = 10 * time.Second
	DefaultMaxDraining     = 3
)

// MasterEnv is set for every child to the master's PID: a child built with handover's
// library learns from it that a master manages its upgrades.
const MasterEnv = "HANDOVER_MASTER"

// Config configures the master.
type Config struct {
	// Prog is the program to run, as given (a path, or a name looked up in $PATH).
	// It is resolved again for every child, so that a new build on disk is picked up.
	Prog string
	// Args are its arguments (without argv[0], which is Prog).
	Args []string
	// Listen are the sockets to bind (or, under a socket unit, to take from systemd
	// by name). Under a socket unit an empty Listen passes every socket on.
	Listen []Listen
	// Control is the path of the control socket for `handover reload` and `handover
	// status` ("" for none, unless a socket unit passes one named ControlName).
	Control string
	// PIDFile, if set, is written (atomically) with the master's PID.
	PIDFile string
	// DrainTimeout is how long a child has, after the stop signal, before SIGKILL.
	DrainTimeout time.Duration
	// UpgradeTimeout bounds how long a new child (first start, restart or upgrade)
	// may take to become ready.
	UpgradeTimeout time.Duration
	// StopSignal is what stops a child: an old one after an upgrade, every one when
	// the master stops. Zero means SIGTERM.
	StopSignal syscall.Signal
	// ReadyAfter, if positive, makes a child that has not sent READY=1 ready once it
	// has run this long. Zero: READY=1 is required.
	ReadyAfter time.Duration
	// RestartDelay and RestartDelayMax bound the backoff before restarting a child
	// that exited while serving: the first restart waits RestartDelay, each failed
	// one doubles it up to RestartDelayMax, a child that served 10s resets it.
	RestartDelay, RestartDelayMax time.Duration
	// MaxDraining bounds how many old children may drain at once (each until its own
	// drain deadline): when an upgrade would make one more, the oldest is killed
	// (SIGKILL to its process group) at once. The upgrade is not refused: a deploy
	// is not blocked by one long-lived connection, and those connections would be
	// cut at their deadline anyway, the oldest first (the library's
	// graceful.Config.MaxDraining does the same). Zero means DefaultMaxDraining.
	MaxDraining int
	// Settle, if positive, is how long a new child must serve after it took over
	// before an upgrade's requester (`handover reload`) is told it succeeded: should
	// the child die meanwhile, the answer is the reason (the upgrade died; the last
	// good build is started). Zero: the answer comes as the new child takes over.
	// Either way a new child that dies within its probation (10 s, or Settle if
	// longer) is replaced by the last good build.
	Settle time.Duration
	// Logger receives the master's logs (every line has event=). nil: slog.Default().
	Logger *slog.Logger
	// Stderr receives the children's stderr, line by line. nil: os.Stderr.
	Stderr io.Writer
}

func (c *Config) setDefaults() error {
	if c.Prog == "" {
		return errors.New("no program to run")
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.UpgradeTimeout <= 0 {
		c.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	if c.RestartDelay <= 0 {
		c.RestartDelay = DefaultRestartDelay
	}
	if c.MaxDraining <= 0 {
		c.MaxDraining = DefaultMaxDraining
	}
	if c.RestartDelayMax <= 0 {
		c.RestartDelayMax = max(DefaultRestartDelayMax, c.RestartDelay)
	}
	if c.RestartDelayMax < c.RestartDelay {
		return fmt.Errorf("the restart delay's maximum %s is below its minimum %s", c.RestartDelayMax, c.RestartDelay)
	}
	if c.ReadyAfter >= c.UpgradeTimeout {
		return fmt.Errorf("-ready-after %s is not below -upgrade-timeout %s: a child that does not notify would never be ready in time", c.ReadyAfter, c.UpgradeTimeout)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	return nil
}

// Run runs the master until it stops and returns its exit code: the stopped serving
// child's (0 when it drained and exited 0), 1 when the first child failed. It
// returns an error, without starting anything, when the set-up fails (a socket
// cannot be bound, the control socket is in use...).
func Run(cfg Config) (int, error) {
	if err := cfg.setDefaults(); err != nil {
		return 2, err
	}
	log := cfg.Logger.With("pid", os.Getpid())
	// Orphans of the children (a daemon they double-fork) come to the master, which
	// reaps them, as PID 1 or not.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Warn("cannot become a child subreaper", "event", "subreaper_failed", "err", err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGPIPE)
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	defer signal.Stop(sigchld)

	socks, err := openSockets(cfg.Listen)
	if err != nil {
		return 1, err
	}
	defer socks.close()
	for _, w := range socks.warn {
		log.Warn(w, "event", "listen_warning")
	}

	notifier, err := sdnotify.FromEnv()
	if err != nil {
		return 1, err
	}
	wd, err := sdnotify.ParseWatchdog(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
	if err != nil {
		return 1, err
	}
	// NOTIFY_SOCKET stays in the master's environment (sdnotify sends plain
	// notifications to $NOTIFY_SOCKET); childEnv gives children the master's own.
	os.Unsetenv("WATCHDOG_USEC")
	os.Unsetenv("WATCHDOG_PID")

	ns, err := listenNotify()
	if err != nil {
		return 1, err
	}
	defer ns.close()

	var ctl net.Listener
	if socks.control != nil {
		if ctl, err = net.FileListener(socks.control); err != nil {
			return 1, fmt.Errorf("control socket from systemd: %w", err)
		}
	} else if cfg.Control != "" {
		if ctl, err = listenControl(cfg.Control); err != nil {
			return 1, err
		}
	}
	if ctl != nil {
		defer ctl.Close()
	}

	if cfg.PIDFile != "" {
		if err := pidfile.Write(cfg.PIDFile, os.Getpid()); err != nil {
			return 1, err
		}
		defer pidfile.Remove(cfg.PIDFile, os.Getpid())
	}

	m := newMachine(cfg, log)
	m.systemd = notifier != nil
	m.watchdog = wd != nil
	for _, k := range socks.list {
		m.sockets = append(m.sockets, graceful.Socket{Name: k.name, Network: k.network, Addr: k.addr, Source: k.source})
	}
	events := make(chan event, 64)
	done := make(chan struct{})
	post := func(ev event) bool {
		select {
		case events <- ev:
			return true
		case <-done:
			return false
		}
	}
	r := &runner{cfg: &cfg, socks: socks, notifyPath: ns.path, post: post, log: log}
	r.env = childEnv(os.Environ(), socks, ns.path, wd)
	m.spawn = r.spawn
	m.signal = func(pid int, sig syscall.Signal) error { return unix.Kill(pid, sig) }
	m.after = func(d time.Duration, ev event) func() bool {
		t := time.AfterFunc(d, func() { post(ev) })
		return t.Stop
	}
	m.settle = func(c *child) {
		go func() {
			t := time.NewTimer(outputGrace)
			defer t.Stop()
			select {
			case <-c.outDone:
			case <-t.C:
			}
			post(goneEvent{c})
		}()
	}
	m.resolve = resolveProg
	m.open = openBuild
	m.ran = ranBuild
	m.leftovers = func(pgid int) int {
		n := 0
		for _, p := range directChildren() {
			if p.pgrp == pgid {
				unix.Kill(p.pid, syscall.SIGKILL)
				n++
			}
		}
		if n > 0 {
			unix.Kill(-pgid, syscall.SIGKILL) // and their own children, still in the group
		}
		return n
	}
	m.orphans = func() []int {
		var out []int
		for _, p := range directChildren() {
			if m.children[p.pid] == nil && !p.zombie {
				out = append(out, p.pid)
			}
		}
		return out
	}
	m.sd = func(state string) {
		if err := notifier.Send(state); err != nil {
			log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
		}
	}

	go func() {
		for s := range sigs {
			if s == syscall.SIGPIPE {
				continue // a closed stdout or stderr must not kill the master
			}
			if !post(sigEvent{s.(syscall.Signal)}) {
				return
			}
		}
	}()
	go reap(sigchld, post, done)
	go ns.serve(func(pids []int, fields []Field, fds []int) {
		if !post(notifyEvent{pids: pids, fields: fields, fds: fds}) {
			closeFDs(fds)
		}
	})
	if ctl != nil {
		go serveControl(ctl, post, done, cfg.UpgradeTimeout+cfg.Settle, log)
	}

	var names []string
	for _, k := range socks.list {
		names = append(names, fmt.Sprintf("%s=%s:%s (%s)", k.name, k.network, k.addr, k.source))
	}
	log.Info("starting", "event", "start", "prog", cfg.Prog, "listeners", strings.Join(names, ", "), "systemd", notifier != nil, "pid1", os.Getpid() == 1, "control", cfg.Control)

	// The children are started from this goroutine's thread, which never runs
	// anything else: their parent-death signal (SIGKILL) fires only when the master
	// dies, not when a thread of it exits.
	runtime.LockOSThread()
	if m.begin() {
		for !m.done {
			m.handle(<-events)
		}
	}
	close(done)
	log.Info("exiting", "event", "exit", "code", m.exitCode)
	return m.exitCode, nil
}

// runner holds what the real spawn needs.
type runner struct {
	cfg        *Config
	socks      *sockets
	notifyPath string
	env        []string
	post       func(event) bool
	log        *slog.Logger
	devnull    *os.File
}

// protocolVars are the variables of socket passing and service managers; the
// master's own values must not reach a child.
var protocolVars = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "HANDOVER_PARENT", MasterEnv, handoff.GenerationEnv, ShimEnv, ShimFDEnv}

// childEnv is the environment of every child, but LISTEN_FDS and LISTEN_FDNAMES,
// which spawn adds (the shim adds LISTEN_PID).
func childEnv(environ []string, socks *sockets, notifyPath string, wd *sdnotify.Watchdog) []string {
	var env []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, p := range protocolVars {
			drop = drop || k == p
		}
		if !drop {
			env = append(env, kv)
		}
	}
	env = append(env,
		"NOTIFY_SOCKET="+notifyPath,
		MasterEnv+"="+strconv.Itoa(os.Getpid()))
	if wd != nil {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(wd.Interval.Microseconds(), 10))
	}
	return env
}

// resolveProg finds the program on disk now: a name without a slash in $PATH, a path
// as it is (following symlinks, so that retargeting /opt/app/current upgrades).
func resolveProg(prog string) (string, error) {
	p := prog
	if !strings.Contains(prog, "/") {
		lp, err := exec.LookPath(prog)
		if err != nil {
			return "", fmt.Errorf("program %q not found in $PATH (%s)", prog, os.Getenv("PATH"))
		}
		p = lp
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("program %s does not exist (was it removed or renamed during the deploy?)", abs)
	}
	if err != nil {
		return "", fmt.Errorf("program %s: %w", abs, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("program %s is not a regular file (%s)", abs, fileType(st.Mode()))
	}
	if err := unix.Access(abs, unix.X_OK); err != nil {
		return "", fmt.Errorf("program %s is not executable (mode %s)", abs, st.Mode().Perm())
	}
	return abs, nil
}

// spawn starts c through the re-exec shim: this binary, with ShimEnv naming the
// program, execs it in place once it has set LISTEN_PID to its own PID. The child
// gets /dev/null as stdin, the master's stdout, a pipe as stderr (copied to the
// master's stderr, its last lines kept), the sockets at fd 3 and up, then the fd
// store's descriptors (c.stored), its own process group, and SIGKILL if the master
// dies. A child started from the kept build (c.kept) also gets that build's
// descriptor after those, named by ShimFDEnv: the shim runs that file, not the one
// now at the path, and the program does not inherit it.
func (r *runner) spawn(c *child) error {
	if r.devnull == nil {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return err
		}
		r.devnull = f
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pw.Close()
	files := []uintptr{r.devnull.Fd(), os.Stdout.Fd(), pw.Fd()}
	var names []string
	for _, k := range r.socks.list {
		files = append(files, uintptr(k.fd))
		names = append(names, k.name)
	}
	for _, s := range c.stored {
		files = append(files, uintptr(s.fd))
		names = append(names, s.name)
	}
	env := append(append([]string(nil), r.env...),
		"LISTEN_FDS="+strconv.Itoa(len(names)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		ShimEnv+"="+c.exe, handoff.GenerationEnv+"="+strconv.Itoa(c.gen))
	argv := append([]string{r.cfg.Prog}, r.cfg.Args...)
	if c.kept && c.build.f != nil {
		env = append(env, ShimFDEnv+"="+strconv.Itoa(len(files)))
		files = append(files, c.build.f.Fd())
		argv = c.build.argv(r.cfg.Prog, r.cfg.Args)
	}
	pid, err := syscall.ForkExec("/proc/self/exe", argv, &syscall.ProcAttr{
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		pr.Close()
		return fmt.Errorf("starting %s: %w", c.exe, err)
	}
	c.pid = pid
	c.out = newRing(ringLines)
	c.outDone = make(chan struct{})
	go func() {
		defer close(c.outDone)
		defer pr.Close()
		copyOutput(pr, r.cfg.Stderr, c.out)
	}()
	return nil
}

// reap is the master's one reaper: it collects the exit status of every child
// (managed or orphaned to the master) whenever SIGCHLD arrives and posts it.
func reap(sigchld <-chan os.Signal, post func(event) bool, done <-chan struct{}) {
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if !post(reapedEvent{pid: pid, status: syscall.WaitStatus(ws)}) {
				return
			}
		}
		select {
		case <-sigchld:
		case <-done:
			return
		}
	}
}

// listenControl binds the control socket at path (mode 0600), replacing a stale one.
func listenControl(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("control socket %s: directory %s does not exist (create it first)", path, dir)
	}
	if err := handoff.RemoveStaleSocket(path); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// serveControl answers `handover reload` and `handover status` (the protocol of
// internal/control) until ln is closed. Only peers running as the master's user or
// root are answered.
func serveControl(ln net.Listener, post func(event) bool, done <-chan struct{}, upgradeTimeout time.Duration, log *slog.Logger) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handleControl(c, post, done, upgradeTimeout, log)
	}
}

func handleControl(c net.Conn, post func(event) bool, done <-chan struct{}, upgradeTimeout time.Duration, log *slog.Logger) {
	control.Serve(c, log, func(req string) control.Response {
		return answerControl(req, post, done, upgradeTimeout)
	})
}

// answerControl answers a control request through the master's state loop (post).
func answerControl(req string, post func(event) bool, done <-chan struct{}, upgradeTimeout time.Duration) control.Response {
	gone := control.Response{Error: "handover run is exiting", Stopping: true}
	if req == control.Status {
		ch := make(chan graceful.Status, 1)
		if !post(statusRequest{reply: ch}) {
			return gone
		}
		select {
		case st := <-ch:
			return control.StatusResponse(st.PID, st.Generation, st)
		case <-done:
			return gone
		}
	}
	ch := make(chan result, 1)
	if !post(upgradeRequest{trigger: "control socket", reply: ch}) {
		return gone
	}
	t := time.NewTimer(upgradeTimeout + time.Minute)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != "" {
			return control.Response{Error: r.err, Stopping: r.stopping}
		}
		return control.Response{OK: true, PID: r.pid, Generation: r.gen}
	case <-t.C:
		return control.Response{Error: "no outcome from the master in time"}
	case <-done:
		return gone
	}
}

// procEntry is one of the master's children as /proc shows it.
type procEntry struct {
	pid, pgrp int
	zombie    bool
}

// directChildren lists the master's children (managed ones, and processes
// reparented to it), from /proc.
func directChildren() []procEntry {
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	var out []procEntry
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := statFields(e.Name()) // state ppid pgrp ...
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		if ppid == self {
			out = append(out, procEntry{pid: pid, pgrp: pgrp, zombie: f[0] == "Z"})
		}
	}
	return out
}
