package graceful

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/activation"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// This file holds the whole upgrade state machine of one process. One goroutine
// (run) owns the state; everything else asks it through u.do.
//
//	starting ──Ready──► serving ──Upgrade──► upgrading ──child ready──► handed-over ─► (drain, exit)
//	                       ▲                     │
//	                       └──── child failed ◄──┘
//	serving/upgrading ──SIGTERM, SIGINT, Stop──► stopping ─► (drain, exit)
//
// An upgrade: resolve the executable; start it with the process's sockets at fd 3...,
// LISTEN_FDS/LISTEN_FDNAMES, the marker and one end of a handover channel (as a
// sibling under a service manager, so that the service manager is its parent); wait
// for "ready"; tell the service manager MAINPID=child READY=1 and wait for BARRIER=1;
// tell the child "main"; only then close Exit, so that the application stops
// accepting and drains. If the child exits, reports an error or is not ready within
// UpgradeTimeout, it is killed (and reaped when it is our child), the service manager
// is told READY=1 again, and this process goes on serving.

// State is where a process is in its life.
type State int

const (
	// Starting: listeners are being set up; Ready has not been called.
	Starting State = iota
	// Serving: ready, and the current generation.
	Serving
	// Upgrading: a new generation is starting.
	Upgrading
	// HandedOver: a new generation took over; this process drains and exits.
	HandedOver
	// Stopping: asked to stop (SIGTERM, SIGINT, Stop); it drains and exits.
	Stopping
)

// String returns the state's name as logs and status show it.
func (s State) String() string {
	return [...]string{"starting", "serving", "upgrading", "draining", "stopping"}[s]
}

// Defaults for Config's zero values.
const (
	DefaultUpgradeTimeout = 30 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
)

// Errors returned by Upgrade.
var (
	ErrUpgradeInProgress = errors.New("graceful: an upgrade is already in progress")
	ErrNotReady          = errors.New("graceful: not ready yet (Ready has not been called)")
	ErrStopping          = errors.New("graceful: the process is stopping")
	// errAbandoned is why an upgrade in progress fails when the process is stopped.
	errAbandoned = errors.New("upgrade abandoned: the process is stopping")
)

// Config configures an Upgrader. The zero Config is usable.
type Config struct {
	// Logger receives the Upgrader's logs; every line carries "gen" and "pid".
	// nil means slog.Default().
	Logger *slog.Logger
	// PIDFile, if set, is written (atomically, mode 0644, never through a symlink)
	// with the PID of the current generation once it is ready, and removed when the
	// current generation stops.
	PIDFile string
	// UpgradeTimeout bounds how long a new generation may take to become ready.
	// Zero means DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// DrainTimeout is the drain deadline used by Servers that do not set their own.
	// Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Executable is the program an upgrade starts. It is resolved at upgrade time,
	// so replacing the file, or retargeting a symlink to it, upgrades to the new
	// build. Empty means the path this process was started as (argv[0], made
	// absolute but with symlinks left unresolved).
	Executable string
	// Args are the new generation's arguments (without argv[0]); nil means this
	// process's own.
	Args []string
	// ControlSocket is the path of a unix socket on which `handover reload` and
	// `handover status` reach the service. It is used only when no socket named
	// ControlName was passed (from a socket unit or the previous generation); then
	// the first generation binds it with mode 0600, removing a stale socket file left
	// by a killed generation. Only peers running as the service's user or root are
	// answered. Empty means no control socket unless one is passed.
	ControlSocket string
	// FDStore, under systemd, hands the process's sockets to systemd's file
	// descriptor store once it is ready (needs FileDescriptorStoreMax= in the unit),
	// so that sockets the service bound itself survive `systemctl restart` and
	// crashes: systemd passes them back through LISTEN_FDS.
	FDStore bool

	start startFunc // seam for tests; nil means startProcess
}

// Upgrader runs one process's part in a line of generations: it hands out listeners
// (inherited or bound), tells its parent or the service manager when the process is
// ready, upgrades on SIGUSR2 or Upgrade, and says through Exit when the process should
// stop accepting and drain (a new generation took over, or SIGTERM/SIGINT/Stop).
//
// A process has at most one Upgrader.
type Upgrader struct {
	cfg      Config
	log      *slog.Logger
	set      *activation.Set
	exe      string
	gen      int
	parent   *channel // to the parent that started us, until Ready
	notifier *sdnotify.Notifier
	watchdog *sdnotify.Watchdog
	start    startFunc

	ops     chan func()
	sigs    chan os.Signal
	events  chan childEvent
	exit    chan struct{}
	ready   chan struct{}
	readyMu sync.Mutex

	// Owned by the run goroutine.
	state    State
	up       *upgrade
	exitWhy  string
	terms    int
	lastErr  string
	nextPID  int
	drainers []*Drainer
	lastStat string
	// successor is the generation this process handed over to, watched while this
	// process drains (without a service manager to restart it); reserve holds
	// duplicates of the sockets meanwhile, so that they stay open if it dies.
	successor    child
	reserve      *activation.Child
	replacements int
	// upstream is the channel to the generation that handed over to this one, kept
	// while this process is the current generation: it says "done" on it when it no
	// longer is (see retire), so that the parent, if it is still draining, does not
	// take this process's exit for a crash and start a replacement.
	upstream *channel
	// main is true while this process is the one the service manager supervises
	// (and its notifications are accepted): a first generation from the start, a
	// later one once its parent has handed over, neither after handing over.
	main bool

	wdStop chan struct{}
}

// upgrade is one attempt in progress.
type upgrade struct {
	child   child
	ch      *channel
	trigger string
	started time.Time
	timer   *time.Timer
	detail  string // what the child said in an "error" message
	waiters []func(upgradeResult)
	done    chan struct{} // closed when the attempt ends
	// Kept by the channel reader: what the child said in an "error" line, whether it
	// is still reading, and a channel closed when it returns.
	said    atomic.Pointer[string]
	reading atomic.Bool
	read    chan struct{}
}

type upgradeResult struct {
	pid   int
	err   error
	moved int // set when this process has handed over to that PID
}

var (
	singletonMu sync.Mutex
	singleton   *Upgrader
)

// New returns the process's Upgrader, reading what was inherited (see package
// activation) and installing handlers for SIGUSR2 (upgrade), SIGTERM and SIGINT (stop;
// a second one exits at once) and SIGHUP (logged and ignored, so that a stray HUP
// does not kill the server). It fails if the inherited environment is invalid, if
// the PID file cannot be written, or if the process already has an Upgrader.
func New(cfg Config) (*Upgrader, error) {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		return nil, errors.New("graceful: this process already has an Upgrader; share it")
	}
	return newSingleton(cfg)
}

// Default returns the process's Upgrader, creating it with a zero Config on first use.
// It is what Server and ListenAndServe use when no Upgrader is given.
func Default() (*Upgrader, error) {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		return singleton, nil
	}
	return newSingleton(Config{})
}

// newSingleton creates the process's Upgrader; singletonMu is held.
func newSingleton(cfg Config) (*Upgrader, error) {
	u, err := newUpgrader(cfg)
	if err != nil {
		if u != nil && u.parent != nil {
			u.parent.send(message{verb: "error", text: err.Error()}, time.Second)
			u.parent.close()
		}
		return nil, err
	}
	singleton = u
	return u, nil
}

func newUpgrader(cfg Config) (*Upgrader, error) {
	u := &Upgrader{
		cfg:    cfg,
		start:  cfg.start,
		ops:    make(chan func()),
		sigs:   make(chan os.Signal, 32),
		events: make(chan childEvent, 8),
		exit:   make(chan struct{}),
		ready:  make(chan struct{}),
		gen:    1,
	}
	if u.start == nil {
		u.start = startProcess
	}
	if u.cfg.UpgradeTimeout <= 0 {
		u.cfg.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if u.cfg.DrainTimeout <= 0 {
		u.cfg.DrainTimeout = DefaultDrainTimeout
	}
	base := cfg.Logger
	if base == nil {
		base = slog.Default()
	}
	set, err := activation.Inherit()
	if set != nil && set.Marker() != nil {
		u.gen = set.Marker().Generation
		if ch := set.Channel(); ch != nil {
			u.parent, _ = newChannel(ch)
		}
	}
	u.log = base.With("gen", u.gen, "pid", os.Getpid())
	u.main = u.parent == nil
	if err != nil {
		return u, fmt.Errorf("inherited sockets: %w", err)
	}
	u.set = set
	if why := set.Ignored(); why != "" {
		u.log.Warn("not adopting inherited descriptors", "event", "inherit_ignored", "reason", why)
	}
	if u.exe = cfg.Executable; u.exe == "" {
		if u.exe, err = executablePath(os.Args[0]); err != nil {
			return u, err
		}
	}
	if u.cfg.Args == nil {
		u.cfg.Args = os.Args[1:]
	}
	if cfg.PIDFile != "" {
		if err := checkPIDFile(cfg.PIDFile); err != nil {
			return u, err
		}
	}
	if u.notifier, err = sdnotify.FromEnv(); err != nil {
		return u, err
	}
	ours := []int{os.Getpid()}
	if m := set.Marker(); m != nil {
		ours = append(ours, m.PID)
	}
	u.watchdog, err = sdnotify.ParseWatchdog(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), ours...)
	os.Unsetenv("WATCHDOG_USEC")
	os.Unsetenv("WATCHDOG_PID")
	if err != nil {
		return u, err
	}
	ctl, err := u.openControl()
	if err != nil {
		return u, err
	}
	signal.Notify(u.sigs, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	from := "nothing inherited"
	if set.Source() != activation.Bound {
		from = fmt.Sprintf("%d descriptors from %s", len(set.Files()), set.Source())
	}
	u.log.Info("starting", "event", "start", "executable", u.exe, "inherited", from, "notify", u.notifier != nil)
	go u.run()
	if ctl != nil {
		go u.serveControl(ctl)
	}
	return u, nil
}

// Generation returns the process's generation: 1 for the first, n+1 for a process
// started by generation n.
func (u *Upgrader) Generation() int { return u.gen }

// Logger returns the Upgrader's logger (with gen and pid attributes).
func (u *Upgrader) Logger() *slog.Logger { return u.log }

// DrainTimeout returns the configured drain deadline.
func (u *Upgrader) DrainTimeout() time.Duration { return u.cfg.DrainTimeout }

// Listen returns a listener by name: inherited from systemd or the parent generation
// if one matches (see activation.Set.Listen), else bound to network and address. The
// listener is passed on to the next generation.
func (u *Upgrader) Listen(name, network, address string) (net.Listener, error) {
	ln, err := u.set.Listen(name, network, address)
	if err != nil {
		u.reportStartError(err)
	}
	return ln, err
}

// ListenPacket is Listen for datagram sockets.
func (u *Upgrader) ListenPacket(name, network, address string) (net.PacketConn, error) {
	pc, err := u.set.ListenPacket(name, network, address)
	if err != nil {
		u.reportStartError(err)
	}
	return pc, err
}

// reportStartError tells the parent generation, if any, why this one cannot start.
func (u *Upgrader) reportStartError(err error) {
	if u.parent != nil {
		u.parent.send(message{verb: "error", text: err.Error()}, time.Second)
	}
}

// Ready says the process is serving on its listeners. Inherited descriptors nobody
// claimed are closed. A first generation writes the PID file and tells the service
// manager READY=1. A later generation tells its parent, which tells the service
// manager that this process is now the main one and stops accepting; then it writes
// the PID file. Ready returns an error if the parent abandoned the upgrade (it is
// about to kill this process). Calling Ready again does nothing.
func (u *Upgrader) Ready() error {
	u.readyMu.Lock()
	defer u.readyMu.Unlock()
	select {
	case <-u.ready:
		return nil
	default:
	}
	for _, f := range u.set.CloseUnclaimed() {
		u.log.Warn("closing an inherited descriptor nothing claimed", "event", "fd_unclaimed", "fd", f.Fd, "name", f.Name, "from", f.Source.String(), "kind", f.Kind.String())
	}
	child := u.parent != nil
	if child {
		if err := u.confirmWithParent(); err != nil {
			return err
		}
	}
	var err error
	u.do(func() {
		if u.state != Starting {
			return
		}
		u.state = Serving
		u.main = true
		close(u.ready)
		if u.cfg.PIDFile != "" {
			if err = writePIDFile(u.cfg.PIDFile, os.Getpid()); err != nil {
				u.log.Error("writing the PID file", "event", "pidfile_failed", "err", err)
			}
		}
		if !child {
			u.notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
		}
		u.startWatchdog()
		u.storeFDs()
		u.notifyStatus()
		u.log.Info("ready", "event", "ready", "listeners", describeHeld(u.set.Held()))
	})
	return err
}

// confirmWithParent tells the parent this process is ready and waits for its answer.
func (u *Upgrader) confirmWithParent() error {
	p := u.parent
	keep := false
	defer func() {
		if !keep {
			p.close()
		}
	}()
	u.do(func() { u.parent = nil })
	if err := p.send(message{verb: "ready", pid: os.Getpid()}, 5*time.Second); err != nil {
		u.log.Warn("could not tell the parent generation we are ready; carrying on as the current generation", "event", "parent_lost", "err", err)
		return nil
	}
	m, err := p.receive()
	switch {
	case err == nil && m.verb == "main":
		keep = true
		u.do(func() { u.upstream = p })
		go func() {
			p.receive() // returns when the parent exits, or when retire closes p
			u.do(func() {
				if u.upstream == p {
					p.close()
					u.upstream = nil
				}
			})
		}()
		return nil
	case err == nil && m.verb == "abort":
		return fmt.Errorf("graceful: the parent generation abandoned the upgrade: %s", m.text)
	case errors.Is(err, io.EOF):
		u.log.Warn("the parent generation exited before confirming the handover; carrying on as the current generation", "event", "parent_lost")
		return nil
	case err != nil:
		u.log.Warn("reading the parent's confirmation; carrying on as the current generation", "event", "parent_lost", "err", err)
		return nil
	}
	return fmt.Errorf("graceful: unexpected message from the parent generation: %q", m.String())
}

// Exit returns a channel that is closed when the process should stop accepting and
// drain: a new generation has taken over, or the process was asked to stop.
func (u *Upgrader) Exit() <-chan struct{} { return u.exit }

// Upgrade starts a new generation and waits until it has taken over (this process's
// Exit is then closed) or failed (this process goes on serving). It returns the new
// process's PID. ctx bounds only the wait: an upgrade that is under way continues.
func (u *Upgrader) Upgrade(ctx context.Context) (int, error) {
	res := make(chan upgradeResult, 1)
	u.do(func() { u.beginUpgrade("API", func(r upgradeResult) { res <- r }) })
	select {
	case r := <-res:
		if r.err == nil {
			<-u.exit // closed right after the waiters hear of the handover
		}
		return r.pid, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Stop makes the process stop as on SIGTERM: Exit is closed and, under systemd,
// STOPPING=1 is sent. An upgrade in progress is abandoned.
func (u *Upgrader) Stop() {
	u.do(func() { u.stop("Stop called") })
}

// Status returns the process's status.
func (u *Upgrader) Status() Status {
	var s Status
	u.do(func() { s = u.status() })
	return s
}

func (u *Upgrader) status() Status {
	s := Status{PID: os.Getpid(), Generation: u.gen, State: u.state.String(), LastError: u.lastErr,
		Executable: u.exe, Systemd: u.notifier != nil, Listeners: []Socket{}}
	for _, h := range u.set.Held() {
		l := Socket{Name: h.Name, Source: h.Source.String()}
		if h.Addr != nil {
			l.Network, l.Addr = h.Addr.Network(), h.Addr.String()
		}
		s.Listeners = append(s.Listeners, l)
	}
	for _, d := range u.drainers {
		c := d.Counts()
		s.Connections.New += c.New
		s.Connections.Active += c.Active
		s.Connections.Idle += c.Idle
		s.Connections.Hijacked += c.Hijacked
		s.Connections.Accepted += c.Accepted
	}
	if u.up != nil {
		s.Upgrading = u.up.child.Pid()
	}
	return s
}

// track registers a Drainer whose connections Status counts.
func (u *Upgrader) track(d *Drainer) {
	u.do(func() { u.drainers = append(u.drainers, d) })
}

// do runs f on the state goroutine and waits for it.
func (u *Upgrader) do(f func()) {
	done := make(chan struct{})
	u.ops <- func() { f(); close(done) }
	<-done
}

// childEvent is something that happened to the child of upgrade up.
type childEvent struct {
	successor child // a successor that exited (see watchSuccessor)
	retired   bool  // the successor said "done" before it exited
	up        *upgrade
	msg       message
	err       error // from reading the channel
	exited    bool
	timer     bool
}

func (u *Upgrader) run() {
	var statusTick <-chan time.Time
	if u.notifier != nil {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		statusTick = t.C
	}
	for {
		select {
		case f := <-u.ops:
			f()
		case sig := <-u.sigs:
			u.onSignal(sig)
		case ev := <-u.events:
			switch {
			case ev.successor != nil:
				if ev.successor == u.successor {
					u.onSuccessorDied(ev.successor, ev.retired)
				}
			case u.up != nil && ev.up == u.up:
				u.onChildEvent(ev)
			}
		case <-statusTick:
			u.notifyStatus()
		}
	}
}

// watch starts the goroutines that report on the child of up; they end with it.
func (u *Upgrader) watch(up *upgrade) {
	send := func(ev childEvent) {
		select {
		case u.events <- ev:
		case <-up.done:
		}
	}
	up.timer = time.AfterFunc(u.cfg.UpgradeTimeout, func() { send(childEvent{up: up, timer: true}) })
	go func() {
		defer close(up.read)
		for {
			m, err := up.ch.receive()
			if m.verb == "error" {
				up.said.Store(&m.text)
			}
			if err != nil || m.verb == "ready" {
				// Announce the end first: an exit being handled waits for it.
				up.reading.Store(false)
			}
			send(childEvent{up: up, msg: m, err: err})
			if err != nil || m.verb == "ready" {
				return
			}
		}
	}()
	go func() {
		select {
		case <-up.child.Exited():
			send(childEvent{up: up, exited: true})
		case <-up.done:
		}
	}()
}

// end finishes the attempt up: its watchers stop.
func (up *upgrade) end() {
	up.timer.Stop()
	if up.ch != nil {
		up.ch.close()
	}
	close(up.done)
}

func (u *Upgrader) onSignal(sig os.Signal) {
	switch sig {
	case syscall.SIGUSR2:
		u.beginUpgrade("SIGUSR2", nil)
	case syscall.SIGHUP:
		u.log.Warn("SIGHUP ignored; send SIGUSR2 to upgrade, SIGTERM to stop", "event", "signal_ignored", "signal", "hangup")
	case syscall.SIGTERM, syscall.SIGINT:
		u.terms++
		if u.terms > 1 {
			u.log.Warn("second stop signal: exiting now, without finishing the drain", "event", "exit_now", "signal", sig.String())
			signal.Reset(sig)
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
			return
		}
		u.stop(sig.String())
	}
}

// beginUpgrade starts an upgrade, or reports why it cannot.
// reply, if not nil, is called on the state goroutine with the outcome.
func (u *Upgrader) beginUpgrade(trigger string, reply func(upgradeResult)) {
	fail := func(err error) {
		if reply != nil {
			reply(upgradeResult{err: err})
		}
	}
	switch u.state {
	case Starting:
		u.log.Warn("upgrade refused: not ready yet", "event", "upgrade_refused", "reason", "not_ready", "trigger", trigger)
		fail(ErrNotReady)
		return
	case Upgrading:
		u.log.Warn("upgrade refused: one is already in progress", "event", "upgrade_refused", "reason", "in_progress", "trigger", trigger, "child", u.up.child.Pid())
		fail(ErrUpgradeInProgress)
		return
	case HandedOver:
		u.log.Warn("upgrade refused: this process has handed over", "event", "upgrade_refused", "reason", "handed_over", "trigger", trigger, "current", u.nextPID)
		if reply != nil {
			reply(upgradeResult{err: fmt.Errorf("graceful: this process has handed over to PID %d; ask that one", u.nextPID), moved: u.nextPID})
		}
		return
	case Stopping:
		u.log.Warn("upgrade refused: stopping", "event", "upgrade_refused", "reason", "stopping", "trigger", trigger)
		fail(ErrStopping)
		return
	}
	u.log.Info("upgrade starting", "event", "upgrade_start", "trigger", trigger, "executable", u.exe)
	u.notify("RELOADING=1\n" + sdnotify.MonotonicUsec() + "\nSTATUS=upgrading: starting a new generation")
	up, err := u.spawn(trigger)
	if err != nil {
		u.lastErr = err.Error()
		u.log.Error("upgrade failed", "event", "upgrade_failed", "cause", "start", "err", err)
		u.notify("READY=1\nSTATUS=" + u.statusLine())
		fail(err)
		return
	}
	if reply != nil {
		up.waiters = append(up.waiters, reply)
	}
	u.up = up
	u.state = Upgrading
	u.watch(up)
	u.log.Info("new generation started", "event", "child_started", "child", up.child.Pid(), "sibling", u.notifier != nil)
}

// spawn starts the next generation.
func (u *Upgrader) spawn(trigger string) (*upgrade, error) {
	if err := resolveExecutable(u.exe); err != nil {
		return nil, err
	}
	kids, err := u.set.ForChild()
	if err != nil {
		return nil, err
	}
	defer kids.Close()
	return u.spawnWith(trigger, kids)
}

// spawnWith starts the next generation with the sockets in kids (which the caller
// keeps and closes).
func (u *Upgrader) spawnWith(trigger string, kids *activation.Child) (*upgrade, error) {
	if err := resolveExecutable(u.exe); err != nil {
		return nil, err
	}
	parentEnd, childEnd, err := socketPair()
	if err != nil {
		return nil, err
	}
	defer childEnd.Close()
	sibling := u.notifier != nil
	ppid := os.Getpid()
	if sibling {
		ppid = os.Getppid()
	}
	env := kids.Env(os.Environ(), activation.Marker{
		PID:        os.Getpid(),
		PPID:       ppid,
		Channel:    activation.ListenFDsStart + len(kids.Files),
		Generation: u.gen + 1,
	})
	if u.watchdog != nil {
		env = append(env,
			"WATCHDOG_USEC="+strconv.FormatInt(u.watchdog.Interval.Microseconds(), 10),
			"WATCHDOG_PID="+strconv.Itoa(os.Getpid()))
	}
	c, err := u.start(childSpec{
		path:    u.exe,
		args:    append([]string{u.exe}, u.cfg.Args...),
		env:     env,
		files:   append(append([]*os.File(nil), kids.Files...), childEnd),
		sibling: sibling,
	})
	if err != nil {
		parentEnd.close()
		return nil, err
	}
	up := &upgrade{child: c, ch: parentEnd, trigger: trigger, started: time.Now(), done: make(chan struct{}), read: make(chan struct{})}
	up.reading.Store(true)
	return up, nil
}

func (u *Upgrader) onChildEvent(ev childEvent) {
	up := u.up
	switch {
	case ev.timer:
		u.failUpgrade("timeout", fmt.Errorf("the new generation (PID %d) was not ready within %s", up.child.Pid(), u.cfg.UpgradeTimeout))
	case ev.exited:
		// Its last words (an "error" line) may still be on their way through the
		// channel, which its exit has closed: give the reader a moment.
		deadline := time.Now().Add(200 * time.Millisecond)
		for up.reading.Load() && time.Now().Before(deadline) {
			select {
			case <-up.read:
			case <-time.After(5 * time.Millisecond):
			}
		}
		u.failUpgrade("exited", fmt.Errorf("the new generation (PID %d) exited before it was ready", up.child.Pid()))
	case ev.err != nil:
		// A child that dies closes the channel a moment before its exit is seen (a
		// sibling's exit status is not ours to read): give the exit a moment, so that
		// the error says what happened.
		select {
		case <-up.child.Exited():
			u.failUpgrade("exited", fmt.Errorf("the new generation (PID %d) exited before it was ready", up.child.Pid()))
		case <-time.After(200 * time.Millisecond):
			u.failUpgrade("channel_closed", fmt.Errorf("the new generation (PID %d) closed the handover channel before it was ready", up.child.Pid()))
		}
	case ev.msg.verb == "error":
		up.detail = ev.msg.text
		u.log.Error("the new generation reports an error", "event", "child_error", "child", up.child.Pid(), "err", ev.msg.text)
	case ev.msg.verb == "ready":
		u.completeUpgrade(ev.msg.pid)
	default:
		u.failUpgrade("protocol", fmt.Errorf("the new generation (PID %d) sent an unexpected message %q", up.child.Pid(), ev.msg.String()))
	}
}

// completeUpgrade hands over to the ready child.
func (u *Upgrader) completeUpgrade(pid int) {
	up := u.up
	if pid != up.child.Pid() {
		u.log.Warn("the new generation reports a different PID than the one started (a wrapper?)", "event", "child_pid_differs", "started", up.child.Pid(), "ready", pid)
	}
	// The service manager must learn the new main PID before this process exits, or
	// it stops the unit and kills the new process with it.
	if u.notifier != nil {
		if err := u.notifier.Send("MAINPID=" + strconv.Itoa(pid) + "\nREADY=1\nSTATUS=handing over to PID " + strconv.Itoa(pid)); err != nil {
			u.failUpgrade("notify", fmt.Errorf("telling systemd MAINPID=%d: %w", pid, err))
			return
		}
		if err := u.notifier.Barrier(5 * time.Second); err != nil {
			u.log.Warn("systemd did not confirm MAINPID in time; handing over anyway", "event", "barrier_timeout", "err", err)
		}
	}
	if err := up.ch.send(message{verb: "main"}, 5*time.Second); err != nil {
		u.log.Error("could not confirm the handover to the new generation", "event", "confirm_failed", "child", pid, "err", err)
		if u.notifier == nil {
			u.failUpgrade("confirm", fmt.Errorf("the new generation (PID %d) went away right after it was ready: %v", pid, err))
			return
		}
	}
	ch := up.ch
	if u.notifier == nil {
		up.ch = nil // kept: the successor says "done" on it when it retires
	}
	up.end()
	if u.notifier == nil {
		u.watchSuccessor(up.child, ch)
	} else {
		// systemd supervises the new main process from now on.
		up.child.Release()
	}
	u.up = nil
	u.state = HandedOver
	u.main = false
	u.nextPID = pid
	u.lastErr = ""
	u.set.KeepFiles()
	u.stopWatchdog()
	u.log.Info("handed over", "event", "handed_over", "to", pid, "took", time.Since(up.started).Round(time.Microsecond).String())
	for _, w := range up.waiters {
		w(upgradeResult{pid: pid})
	}
	u.retire()
	u.exitWhy = "handed over to PID " + strconv.Itoa(pid)
	select {
	case <-u.exit:
	default:
		close(u.exit)
	}
}

// maxReplacements bounds how many times a draining process restarts a successor
// that died.
const maxReplacements = 3

// watchSuccessor keeps the sockets open and watches the new generation while this
// process drains. Without a service manager nobody else would notice if it died
// (killed, crashed) before this process exits: the sockets would close and clients
// would be refused. Then this process starts a replacement on the sockets it kept,
// unless the successor said "done" on the channel ch first: it had handed over in
// turn, or was stopping, and its exit is no crash.
func (u *Upgrader) watchSuccessor(c child, ch *channel) {
	u.successor = c
	if u.reserve == nil {
		r, err := u.set.ForChild()
		if err != nil {
			u.log.Warn("could not keep the sockets open while draining", "event", "reserve_failed", "err", err)
		} else {
			u.reserve = r
		}
	}
	done := make(chan bool, 1)
	go func() {
		m, err := ch.receive()
		done <- err == nil && m.verb == "done"
	}()
	go func() {
		<-c.Exited()
		retired := false
		select {
		case retired = <-done: // its end closed when it exited
		case <-time.After(time.Second):
		}
		ch.close()
		u.events <- childEvent{successor: c, retired: retired}
	}()
}

// onSuccessorDied starts a replacement for a successor that died while this process
// was draining, unless it had retired (handed over in turn, or stopped).
func (u *Upgrader) onSuccessorDied(c child, retired bool) {
	u.successor = nil
	status := c.ExitStatus()
	if retired {
		u.log.Info("the new generation exited after handing over or stopping; nothing to replace", "event", "successor_retired", "child", c.Pid(), "status", status)
		return
	}
	if u.reserve == nil || u.replacements >= maxReplacements || u.up != nil {
		u.log.Error("the new generation died while this process was draining", "event", "successor_died", "action", "none", "child", c.Pid(), "status", status)
		return
	}
	u.replacements++
	u.log.Error("the new generation died while this process was draining; starting a replacement on the sockets kept open", "event", "successor_died", "action", "replace", "child", c.Pid(), "status", status, "attempt", u.replacements)
	up, err := u.spawnWith("replacement", u.reserve)
	if err != nil {
		u.log.Error("starting a replacement failed", "event", "replace_failed", "err", err)
		return
	}
	u.up = up
	u.watch(up)
}

// failUpgrade abandons the upgrade in progress: the child is killed and reaped, and
// this process goes on serving.
func (u *Upgrader) failUpgrade(cause string, err error) {
	up := u.up
	exited := false // by itself: then even "signal: killed" says what happened
	select {
	case <-up.child.Exited():
		exited = true
	default:
	}
	up.ch.send(message{verb: "abort", text: err.Error()}, 100*time.Millisecond)
	up.end()
	up.child.Kill()
	if st := up.child.ExitStatus(); st != "" && (exited || st != "signal: killed") {
		err = fmt.Errorf("%w (%s)", err, st)
	}
	if said := up.said.Load(); said != nil && up.detail == "" {
		up.detail = *said
	}
	if up.detail != "" {
		err = fmt.Errorf("%w: %s", err, up.detail)
	}
	pid := up.child.Pid() // before Release, which forgets it
	up.child.Release()
	u.up = nil
	if u.state == Upgrading {
		u.state = Serving
	}
	u.lastErr = err.Error()
	u.log.Error("upgrade failed; still serving", "event", "upgrade_failed", "cause", cause, "child", pid, "err", err)
	u.notify("READY=1\nSTATUS=" + u.statusLine())
	for _, w := range up.waiters {
		w(upgradeResult{err: err})
	}
}

// stop moves to Stopping and closes Exit.
func (u *Upgrader) stop(why string) {
	switch u.state {
	case Stopping:
		return
	case HandedOver:
		u.log.Info("stop requested while draining after a handover", "event", "stop_ignored", "why", why)
		return
	case Upgrading:
		u.state = Stopping
		u.failUpgrade("abandoned", errAbandoned)
	}
	u.state = Stopping
	u.retire()
	u.log.Info("stopping", "event", "stop", "why", why)
	if u.main {
		u.notify("STOPPING=1\nSTATUS=stopping: draining connections")
	}
	u.stopWatchdog()
	if u.cfg.PIDFile != "" {
		removePIDFile(u.cfg.PIDFile, os.Getpid())
	}
	u.exitWhy = why
	select {
	case <-u.exit:
	default:
		close(u.exit)
	}
}

// retire tells the generation that handed over to this one, if it still listens,
// that this process is no longer the current generation.
func (u *Upgrader) retire() {
	if u.upstream != nil {
		u.upstream.send(message{verb: "done"}, 100*time.Millisecond)
		u.upstream.close()
		u.upstream = nil
	}
}

// notify sends state to the service manager, if there is one.
func (u *Upgrader) notify(state string) {
	if err := u.notifier.Send(state); err != nil {
		u.log.Warn("sd_notify failed", "event", "notify_failed", "err", err)
	}
}

func (u *Upgrader) notifyStatus() {
	// After a handover this process is no longer the main one: systemd would
	// reject (and log) its notifications.
	if u.notifier == nil || !u.main {
		return
	}
	if line := u.statusLine(); line != u.lastStat {
		u.lastStat = line
		u.notify("STATUS=" + line)
	}
}

// statusLine is the one-line status systemctl status shows.
func (u *Upgrader) statusLine() string {
	s := u.status()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: generation %d, PID %d", s.State, s.Generation, s.PID)
	switch u.state {
	case HandedOver, Stopping:
		fmt.Fprintf(&b, ", draining %d connections", s.Connections.Total())
	default:
		fmt.Fprintf(&b, ", %d connections", s.Connections.Total())
	}
	if s.LastError != "" {
		fmt.Fprintf(&b, "; last upgrade failed: %s", s.LastError)
	}
	return oneLine(b.String())
}

// startWatchdog pings the service manager's watchdog at half its interval while this
// process is the main one.
func (u *Upgrader) startWatchdog() {
	if u.watchdog == nil || u.notifier == nil || u.wdStop != nil {
		return
	}
	stop := make(chan struct{})
	u.wdStop = stop
	every := u.watchdog.Interval / 2
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		u.notify("WATCHDOG=1")
		for {
			select {
			case <-t.C:
				u.notify("WATCHDOG=1")
			case <-stop:
				return
			}
		}
	}()
}

func (u *Upgrader) stopWatchdog() {
	if u.wdStop != nil {
		close(u.wdStop)
		u.wdStop = nil
	}
}

func describeHeld(hs []activation.Handed) string {
	parts := make([]string, 0, len(hs))
	for _, h := range hs {
		name := h.Name
		if name == "" {
			name = "unnamed"
		}
		addr := "?"
		if h.Addr != nil {
			addr = h.Addr.Network() + ":" + h.Addr.String()
		}
		parts = append(parts, fmt.Sprintf("%s=%s (%s)", name, addr, h.Source))
	}
	return strings.Join(parts, ", ")
}
