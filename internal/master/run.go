//go:build linux

package master

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
	"github.com/seed-a7250cfa/handover/internal/wire"
	"golang.org/x/sys/unix"
)

// Run runs the master until it stops and returns its exit code: the stopped serving
// child's (0 when it drained and exited 0), 1 when the first child failed. It
// returns an error, without starting anything, when the set-up fails (a socket
// cannot be bound, the control socket is in use...).
func Run(cfg Config) (int, error) {
	if err := cfg.setDefaults(); err != nil {
		return 2, err
	}
	h := &host{cfg: cfg, log: cfg.Logger.With("pid", os.Getpid()), events: make(chan event, 64), done: make(chan struct{})}
	// Orphans of the children (a daemon they double-fork) come to the master, which
	// reaps them, as PID 1 or not.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		h.log.Warn("cannot become a child subreaper", "event", "subreaper_failed", "err", err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGPIPE)
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	defer signal.Stop(sigchld)
	defer h.close()
	if err := h.open(); err != nil {
		return 1, err
	}
	m := h.machine()
	h.serve(sigs, sigchld)
	var names []string
	for _, k := range h.socks.list {
		names = append(names, fmt.Sprintf("%s=%s:%s (%s)", k.name, k.network, k.addr, k.source))
	}
	h.log.Info("starting", "event", "start", "prog", cfg.Prog, "listeners", strings.Join(names, ", "), "systemd", h.notifier != nil, "pid1", os.Getpid() == 1, "control", cfg.Control)

	// The children are started from this goroutine's thread, which never runs
	// anything else: their parent-death signal (SIGKILL) fires only when the master
	// dies, not when a thread of it exits.
	runtime.LockOSThread()
	if m.begin() {
		for !m.done {
			m.handle(<-h.events)
		}
	}
	close(h.done)
	h.log.Info("exiting", "event", "exit", "code", m.exitCode)
	return m.exitCode, nil
}

// host is the world around the machine, as Run sets it up: the sockets, systemd,
// the children's notification socket, the control socket and the PID file, and the
// channel of events.
type host struct {
	cfg      Config
	log      *slog.Logger
	socks    *sockets
	notifier *sdnotify.Notifier
	watchdog *sdnotify.Watchdog
	notify   *notifySocket
	ctl      net.Listener
	env      []string // the children's environment (childEnv)
	devnull  *os.File
	events   chan event
	done     chan struct{} // closed when the loop has ended: post gives up
	closers  []func()
}

// open sets up what the master holds; close releases whatever it set up.
func (h *host) open() error {
	var err error
	if h.socks, err = openSockets(h.cfg.Listen); err != nil {
		return err
	}
	h.closers = append(h.closers, h.socks.close)
	for _, w := range h.socks.warn {
		h.log.Warn(w, "event", "listen_warning")
	}
	if h.notifier, err = sdnotify.FromEnv(); err != nil {
		return err
	}
	// NOTIFY_SOCKET stays in the master's environment (sdnotify sends plain
	// notifications to $NOTIFY_SOCKET); childEnv gives children the master's own.
	if h.watchdog, err = sdnotify.WatchdogFromEnv(os.Getpid()); err != nil {
		return err
	}
	if h.notify, err = listenNotify(); err != nil {
		return err
	}
	h.closers = append(h.closers, h.notify.close)
	if h.ctl, err = openControl(h.socks, h.cfg.Control); err != nil {
		return err
	}
	if h.ctl != nil {
		h.closers = append(h.closers, func() { h.ctl.Close() })
	}
	if h.cfg.PIDFile != "" {
		if err := pidfile.Write(h.cfg.PIDFile, os.Getpid()); err != nil {
			return err
		}
		h.closers = append(h.closers, func() { pidfile.Remove(h.cfg.PIDFile, os.Getpid()) })
	}
	h.env = childEnv(os.Environ(), h.notify.path, h.watchdog)
	return nil
}

func (h *host) close() {
	for i := len(h.closers) - 1; i >= 0; i-- {
		h.closers[i]()
	}
	if h.devnull != nil {
		h.devnull.Close()
	}
}

// post hands ev to the loop; false once the loop has ended.
func (h *host) post(ev event) bool {
	select {
	case h.events <- ev:
		return true
	case <-h.done:
		return false
	}
}

// machine returns a new machine whose seams act on the real world.
func (h *host) machine() *machine {
	m := newMachine(h.cfg, h.log)
	m.systemd = h.notifier != nil
	m.watchdog = h.watchdog != nil
	for _, k := range h.socks.list {
		m.sockets = append(m.sockets, wire.Socket{Name: k.name, Network: k.network, Addr: k.addr, Source: k.source})
	}
	m.spawn = h.spawn
	m.signal = signalChild
	m.after = func(d time.Duration, ev event) func() bool {
		return time.AfterFunc(d, func() { h.post(ev) }).Stop
	}
	m.settle = h.settle
	m.resolve = resolveProg
	m.open = func(path string) (*build, error) { return openBuild(path, m.lastGood) }
	m.pipe = commitPipe
	m.launch = func(b *build) launch { return resolveLaunch(h.cfg.Args, h.cfg.Dir, b) }
	m.ran = ranBuild
	socks := map[uint64]bool{}
	for _, k := range h.socks.list {
		var st unix.Stat_t
		if unix.Fstat(k.fd, &st) == nil {
			socks[st.Ino] = true
		}
	}
	m.leftovers = func(c *child) []int { return killLeftovers(c, m.children, socks) }
	m.orphans = func() []int { return orphans(m.children) }
	m.ancestors = func(pid int) []int { return lineage(pid, os.Getpid()) }
	m.sd = func(state string) {
		if err := h.notifier.Send(state); err != nil {
			h.log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
		}
	}
	return m
}

// settle posts goneEvent for c once its stderr is at EOF, or after outputGrace.
func (h *host) settle(c *child) {
	go func() {
		t := time.NewTimer(outputGrace)
		defer t.Stop()
		select {
		case <-c.out.Done():
		case <-t.C:
		}
		h.post(goneEvent{c})
	}()
}

// serve starts what feeds the loop: signals, the reaper, the children's
// notifications and the control socket.
func (h *host) serve(sigs, sigchld <-chan os.Signal) {
	go func() {
		for s := range sigs {
			if s == syscall.SIGPIPE {
				continue // a closed stdout or stderr must not kill the master
			}
			if !h.post(sigEvent{s.(syscall.Signal)}) {
				return
			}
		}
	}()
	go reap(sigchld, h.post, h.done)
	go h.notify.serve(func(pid int, fields []Field, fds []int) {
		if !h.post(notifyEvent{pids: []int{pid}, fields: fields, fds: fds}) {
			closeFDs(fds)
		}
	})
	if h.ctl != nil {
		go control.Accept(h.ctl, h.log, controlServer{post: h.post, done: h.done, wait: h.cfg.UpgradeTimeout + h.cfg.Settle + controlSlack})
	}
}

// resolveProg finds the program on disk now (proc.Find, proc.Check): a name
// without a slash in $PATH, a path as it is (following symlinks, so that
// retargeting /opt/app/current upgrades).
func resolveProg(prog string) (string, error) {
	abs, err := proc.Find(prog)
	if err == nil {
		err = proc.Check("program", abs)
	}
	if err != nil {
		return "", err
	}
	return abs, nil
}
