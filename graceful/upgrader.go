package graceful

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// The Upgrader is the public face of the process's machines: each call of its API
// posts one event to the machine (machine.go) and, if it answers, waits for the
// answer. One goroutine (run) hands the machine its events and the process's
// signals, one at a time.

// Upgrader runs one process's part in a line of generations: it hands out listeners
// (inherited or bound), tells its parent or the service manager when the process is
// ready, upgrades on SIGUSR2, Upgrade or `handover reload` (or in two phases:
// Prepare, then Commit), drains every Server and Drainer of the process when a new
// generation has taken over or the process is asked to stop (SIGTERM, SIGINT, Stop),
// and says through Wait when the process may exit.
//
// A new generation that dies after it took over, while this process drains or, once
// drained, stands by for the new generation's probation (Config.Probation; without a
// service manager: under systemd the new process is the unit's main process, which
// systemd watches and restarts), is met by this process. If it can take its drains
// back (every listener it holds is served by a Server or a Drainer of the Upgrader on
// the Upgrader's own listener, not one the application wrapped, which the drain
// closes; no datagram socket; the application never took Exit), it serves again:
// its listeners accept (connections that waited in their queues meanwhile first),
// keep-alive is on again, Exit and Draining return new channels, the PID file names
// it, and the upgrade's record says "died". Otherwise it starts its own build (the
// last good build: the executable this process runs, whatever is on disk now) on the
// copies of the sockets it kept, as a new generation, at most three times. After the
// probation a death is not this process's business (it may have exited).
//
// A process has one Upgrader: New makes it, and a Server or ListenAndServe uses it
// (or makes one with the zero Config if New was not called).
type Upgrader struct {
	cfg   Config // with its defaults
	log   *slog.Logger
	logs  startLog // holds a new generation's start-up lines back until Ready
	set   *fds.Set
	gen   int
	start startFunc
	m     *machine
	ext   carried

	events  chan event // everything the machine handles (unbuffered: see post)
	sigs    chan os.Signal
	exit    *exitSignal
	done    *doneSignal
	ready   readiness
	parent  parentLink     // until Ready
	pipeSig chan os.Signal // SIGPIPE, while fd 2 is the parent's pipe
	caught  chan struct{}  // closed once the signals are caught (and pipeSig set)
	ctl     net.Listener   // the control socket, served once ready
	// A prepared generation's (prepare.go): held is closed once it is committed
	// (nil: not prepared); commitPipe is the master's pipe, under handover run.
	held       chan struct{}
	commitPipe *os.File
	viaLink    bool // the parent channel is a serving child's, under a master (masterlink.go)
}

var (
	singletonMu sync.Mutex
	singleton   *Upgrader
)

// New makes the process's Upgrader, reading what was inherited (systemd's
// LISTEN_FDS, a `handover run` master's, or the previous generation's sockets) and
// installing handlers for SIGUSR2 (upgrade), SIGTERM and SIGINT (stop; a second one
// exits at once) and SIGHUP (logged and ignored, so that a stray HUP does not kill
// the server). A new generation, started by an upgrade, installs them beside its
// start, so that its first accept does not wait for them: they are in place once
// its Ready starts (before it tells its parent it is ready), if not before.
// Servers, ListenAndServe and Drainers of the process use it. It fails if the
// inherited environment is invalid, if the PID file cannot be written, or if the
// process already has an Upgrader.
//
// A program calls New before anything else of this package when it wants a
// Config: a PID file, a control socket, other timeouts. Then it takes its
// listeners (Listen), serves them, calls Ready (Serve does) and returns from main
// after Wait.
func New(cfg Config) (*Upgrader, error) {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		return nil, errors.New("graceful: this process already has an Upgrader (New was called, or a Server made one): call New once, first")
	}
	return newSingleton(cfg)
}

// processUpgrader returns the process's Upgrader, or nil.
func processUpgrader() *Upgrader {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	return singleton
}

// defaultUpgrader returns the process's Upgrader, making it with a zero Config on
// first use.
func defaultUpgrader() (*Upgrader, error) {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		return singleton, nil
	}
	return newSingleton(Config{})
}

// newSingleton makes the process's Upgrader; singletonMu is held.
func newSingleton(cfg Config) (*Upgrader, error) {
	u, err := newUpgrader(cfg, seams{})
	if err != nil {
		u.logs.flush()
		if p := u.parent.take(); p != nil {
			p.Send(handoff.Message{Verb: handoff.Error, Text: err.Error()}, time.Second)
			p.Close()
		}
		return nil, err
	}
	singleton = u
	return u, nil
}

// newUpgrader makes an Upgrader that reaches the world through s (the real one for
// a zero s). On an error it returns the Upgrader too, for its parent channel.
func newUpgrader(cfg Config, s seams) (u *Upgrader, err error) {
	cfg = cfg.withDefaults()
	set, inheritErr := fds.Inherit()
	u = &Upgrader{cfg: cfg, set: set, gen: set.Generation(), start: s.start,
		events: make(chan event), sigs: make(chan os.Signal, 32)}
	// The signals are set up beside the rest of New: a process's first
	// signal.Notify starts threads of the runtime's own (about a millisecond on a
	// busy machine), which is not on the way to the first accept this way. They
	// are caught from New's return on in a first generation, and from Ready's
	// start on at the latest in a new one (it says it is ready only then): its
	// first accept does not wait for those threads either.
	u.caught = make(chan struct{})
	go func() {
		defer close(u.caught)
		u.holdStderr()
		notifySignals(u.sigs)
	}()
	defer func() {
		if err != nil || u.parent.get() == nil {
			<-u.caught
		}
		if err != nil {
			signal.Stop(u.sigs)
		}
	}()
	if u.start == nil {
		u.start = startProcess
	}
	base := cfg.Logger
	if base == nil {
		base = slog.Default()
	}
	u.log = base.With("gen", u.gen, "pid", os.Getpid())
	u.openParent()
	u.m = u.newMachine(s)
	u.exit, u.done = u.m.exit, u.m.done
	u.ext = u.newCarried()
	u.openPrepare()
	u.openLink()
	u.logs.holdIf(u.parent.get() != nil)
	if p := u.parent.get(); p != nil {
		err := u.readInit(p)
		if err != nil && !u.viaLink {
			return u, err
		}
		if err != nil {
			u.parent.take().Close()
			u.viaLink = false
			u.log.Warn("the serving child's first messages cannot be read: starting without them", "event", "link_lost", "reason", "protocol", "err", err)
		}
	}
	if inheritErr != nil {
		return u, fmt.Errorf("inherited sockets: %w", inheritErr)
	}
	if why := set.Ignored(); why != "" {
		u.log.Warn("not adopting inherited descriptors", "event", "inherit_ignored", "reason", why)
	}
	if err := u.setUp(); err != nil {
		return u, err
	}
	from := "nothing inherited"
	if set.Source() != fds.Bound {
		from = fmt.Sprintf("%d descriptors from %s", len(set.Files()), set.Source())
	}
	exe, notify := u.m.exe, u.m.notifier != nil
	u.logs.line(func() {
		u.log.Info("starting", "event", "start", "executable", exe, "inherited", from, "notify", notify, "master", set.Master())
	})
	go u.run()
	u.m.begin()
	return u, nil
}

// newMachine makes the Upgrader's machine, reaching the world through s.
func (u *Upgrader) newMachine(s seams) *machine {
	m := newMachine(u.cfg, u.set, u.log)
	m.gen = u.gen
	m.hasParent = u.set.Marker() != nil
	m.main = u.parent.get() == nil
	if s.clock != nil {
		m.clock = s.clock
	}
	if s.killWait > 0 {
		m.killWait = s.killWait
	}
	m.post = u.post
	m.startLines = u.logs.flush
	m.spawn = u.spawnGeneration
	clk := m.clock
	m.after = func(d time.Duration, ev event) func() bool {
		t, stop := clk.NewTimer(d), make(chan struct{})
		var once sync.Once
		go func() {
			select {
			case <-t.C():
				u.post(ev)
			case <-stop:
			}
		}()
		return func() bool {
			once.Do(func() { close(stop) })
			return t.Stop()
		}
	}
	return m
}

// newCarried makes the carriers: the TLS session-ticket keys, the application's
// state, then those registered in internal/carry.
func (u *Upgrader) newCarried() carried {
	keys := newKeyCarrier(u.cfg, u.log)
	keys.logs = &u.logs
	state := &stateCarrier{save: u.cfg.SaveState, load: u.cfg.LoadState, version: u.cfg.StateVersion,
		timeout: u.cfg.UpgradeTimeout, clock: u.m.clock, log: u.log, logs: &u.logs}
	conns := newConnCarrier(u.log, u.set)
	c := carried{keys: keys.ring, state: state, conns: conns,
		carriers: append([]carry.Carrier{keys, state, conns}, carry.Registered()...)}
	u.m.carriers = c.carriers
	return c
}

// setUp reads the rest of the process's environment (its executable, the service
// manager), checks the Config, starts the carriers and opens the control socket.
func (u *Upgrader) setUp() (err error) {
	m := u.m
	if m.exe = u.cfg.Executable; m.exe == "" {
		if m.exe, err = proc.Find(os.Args[0]); err != nil {
			return err
		}
	}
	if u.cfg.PIDFile != "" {
		if err := pidfile.Check(u.cfg.PIDFile); err != nil {
			return err
		}
	}
	if err := u.readManager(); err != nil {
		return err
	}
	if err := u.cfg.check(); err != nil {
		return err
	}
	if err := u.startCarriers(); err != nil {
		return err
	}
	if u.ctl, err = u.openControl(); err != nil {
		return err
	}
	if u.ctl != nil {
		m.control = func() *target { return u.serveControl(u.ctl) }
	}
	return nil
}

// readManager reads what the service manager says of itself: its notification
// socket and its watchdog.
func (u *Upgrader) readManager() error {
	n, err := sdnotify.FromEnv()
	if err != nil {
		return err
	}
	if n != nil {
		u.m.notifier = n
	}
	ours := []int{os.Getpid()}
	if mk := u.set.Marker(); mk != nil {
		ours = append(ours, mk.PID)
	}
	u.m.svc.watchdog, err = readWatchdog(ours...)
	return err
}

// startCarriers starts the carriers, once the initial batch is read and the service
// manager is known.
func (u *Upgrader) startCarriers() error {
	n, master := u.m.notifier, u.set.Master() != 0
	h := &carryHost{log: u.log, set: u.set, hold: u.m.hold, taken: &u.m.taken}
	if n != nil && (master || u.cfg.FDStore) {
		h.store = managerStore{n}
	}
	u.ext.state.keep = n != nil && (u.cfg.FDStore || master)
	if n != nil && u.cfg.FDStore && !master {
		u.ext.conns.useStore(n, u.cfg.FDStoreConns)
	}
	if u.set.Source() == fds.Systemd || master && n != nil {
		u.ext.state.stored = managerStore{n}
	}
	for _, c := range u.ext.carriers {
		if err := c.Start(h); err != nil {
			return err
		}
	}
	return nil
}

// spawnGeneration starts a new generation (the machine's spawn).
func (u *Upgrader) spawnGeneration(s spawnSpec) (*generation, error) {
	c, ch, out, err := spawnChild(u.set, s.reserve, s.child, u.start, s.batch)
	if err != nil {
		return nil, err
	}
	return newGeneration(c, ch, out), nil
}

// run hands the machine its events and the process's signals. It runs as long as
// the process: after Wait has returned the machine still handles signals and
// watches the successor, for a process that goes on draining servers of its own
// (see Exit).
func (u *Upgrader) run() {
	for {
		select {
		case ev := <-u.events:
			u.m.handle(ev)
		case sig := <-u.sigs:
			u.m.handle(signalEvent{sig})
		}
	}
}

// post hands an event to the machine.
func (u *Upgrader) post(ev event) { u.events <- ev }

// Listen returns a listener by name: inherited from systemd, a `handover run` master
// or the previous generation if one matches (by name, else by network and address),
// else bound to network and address (see package activation). The listener is
// passed on to the next generation. Take every listener before serving any of them:
// once the process is ready (Ready, which Serve calls), inherited sockets nobody
// claimed are closed.
func (u *Upgrader) Listen(name, network, address string) (net.Listener, error) {
	ln, err := u.set.Listen(name, network, address)
	if err != nil {
		u.reportStartError(err)
	}
	return ln, err
}

// ListenPacket is Listen for datagram sockets ("udp", "udp4", "udp6", "unixgram").
// A process that holds one cannot take back a drain (see Upgrader): it must stop
// reading from it itself when Exit is closed.
//
// Serve calls Ready; a process whose only sockets are packet sockets (no Server, no
// Serve, no listener of Listen) must call Ready itself, once it has taken every
// socket it uses (its ListenPacket calls: Ready closes inherited descriptors nobody
// claimed) and reads from them. Until then it is not ready: an upgrade into it fails
// at Config.UpgradeTimeout (the new process is killed, the old one serves on), a
// `handover run` master does not count it ready (unless -ready-after), and systemd
// (Type=notify) times its start out.
func (u *Upgrader) ListenPacket(name, network, address string) (net.PacketConn, error) {
	pc, err := u.set.ListenPacket(name, network, address)
	if err != nil {
		u.reportStartError(err)
	}
	return pc, err
}

// readiness is the outcome of the first Ready.
type readiness struct {
	mu   sync.Mutex
	done bool
	err  error
}

// Ready says the process is serving on its listeners; Serve calls it. Inherited
// descriptors nobody claimed are closed. A first generation writes the PID file and
// tells the service manager READY=1. A later generation tells its parent, which
// tells the service manager that this process is now the main one and stops
// accepting; then it writes the PID file. In a prepared generation (see Prepare)
// Ready returns only once it is committed, and the listeners of its Servers and
// Drainers accept from then on. Ready returns an error if the parent abandoned the
// upgrade, or aborted the prepared generation (it is about to kill this process).
// Later calls return what the first returned.
func (u *Upgrader) Ready() error {
	u.ready.mu.Lock()
	defer u.ready.mu.Unlock()
	if u.ready.done {
		return u.ready.err
	}
	u.ready.done = true
	<-u.caught
	if n := u.m.notifier; n != nil && u.set.Master() != 0 {
		u.serveLinks(managerStore{n}) // a library child of a master
	}
	for _, f := range u.set.CloseUnclaimed() {
		u.log.Warn("closing an inherited descriptor nothing claimed", "event", "fd_unclaimed", "fd", f.Fd, "name", f.Name, "from", f.Source.String(), "kind", f.Kind.String())
	}
	ev := readyEvent{}
	if u.held != nil {
		// A prepared generation: what its first requests run is mapped in while
		// it waits for its commit, not a page fault at a time after it.
		proc.MapCode()
	}
	if p := u.parent.take(); p != nil {
		// The parent hands over to this process once it hears "ready" (a prepared
		// generation's once it is committed: it says "main"). A stop from then on
		// is the current generation's, which the parent hears of before this
		// process finishes (machine.readyStopped).
		release := func() {}
		defer func() { release() }()
		takingOver := func() {
			release = u.m.hold()
			u.m.takingOver.Store(true)
		}
		prepared := u.held != nil
		if !prepared {
			takingOver()
		}
		upstream, said, err := u.confirmWithParent(p)
		if prepared && upstream != nil {
			takingOver()
		}
		if err == nil && u.commitPipe == nil {
			u.release() // committed: accept at once, before anything else
		}
		u.restoreStderr()
		if err != nil {
			u.logs.flush()
			closeMessages(said)
			u.ready.err = err
			return err
		}
		ev.said, ev.child = said, !u.viaLink
		if upstream != nil {
			ev.upstream = upstream
		}
	}
	if u.commitPipe != nil {
		if err := u.awaitCommit(); err != nil {
			u.ready.err = err
			return err
		}
	}
	u.release() // a prepared generation was committed: it accepts
	done := make(chan struct{})
	ev.done = done
	u.post(ev)
	<-done
	return nil
}

// exitSignal is the channel Exit returns.
type exitSignal struct {
	mu   sync.Mutex
	ch   chan struct{}
	used bool // the application took it
}

func newExitSignal() *exitSignal { return &exitSignal{ch: make(chan struct{})} }

func (e *exitSignal) take() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.used = true
	return e.ch
}

func (e *exitSignal) taken() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.used
}

func (e *exitSignal) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.ch:
	default:
		close(e.ch)
	}
}

// reopen: the process serves again (it resumed).
func (e *exitSignal) reopen() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ch = make(chan struct{})
}

// Exit returns a channel that is closed when the process stops accepting and
// drains: a new generation has taken over, or the process was asked to stop. A
// process whose listeners are all served by Servers and Drainers of the Upgrader
// does not need it (they drain by themselves; Wait says when they are done). A
// process that takes Exit, to stop a server of its own kind (a grpc.Server, a
// datagram loop), cannot take back a drain: if the new generation dies while this
// one drains or stands by for its probation (see Wait), this process starts its own
// build again instead (see Upgrader).
func (u *Upgrader) Exit() <-chan struct{} {
	return u.exit.take()
}

// doneSignal is what Wait waits for.
type doneSignal struct {
	ch  chan struct{} // closed when every drain has ended
	err error         // what Wait returns; set before ch is closed
}

func newDoneSignal() *doneSignal { return &doneSignal{ch: make(chan struct{})} }

func (d *doneSignal) close(err error) {
	d.err = err
	close(d.ch)
}

// Wait blocks until the process may exit: it has handed over to a new generation or
// was asked to stop, every Server and Drainer of the process has drained (each
// within its deadline), and, after a handover without a service manager, the new
// generation's probation is over (Config.Probation, 10 s from the handover by
// default; it ends early if the new generation hands over in turn or stops, or this
// process is asked to stop). Until then the process stands by: if the new generation
// dies, it serves again (Wait goes on waiting), or starts its own build in its place
// when it cannot (see Upgrader). A process that can do neither does not wait for the
// probation. Wait returns ErrDrainDeadline if some connections had to be
// force-closed. main returns after Wait, so that no connection is cut by the
// process's end, and no new build that dies moments after taking over leaves
// nothing serving.
func (u *Upgrader) Wait() error {
	<-u.done.ch
	return u.done.err
}

// Upgrade starts a new generation and waits until it has taken over (this process
// then drains) or failed (this process goes on serving; a failed new process has
// been killed and is dead by the time the failure is reported). It returns the new
// process's PID. ctx bounds only the wait: an upgrade that is under way continues.
// Upgrades are not supported on systems other than Linux: the error wraps
// errors.ErrUnsupported.
func (u *Upgrader) Upgrade(ctx context.Context) (int, error) {
	return u.wait(ctx, u.ask(stepUpgrade, "API"))
}

// Stop makes the process stop as on SIGTERM: it stops accepting and drains, and
// Wait returns once the drain is over. Under systemd it sends STOPPING=1. An upgrade
// in progress is abandoned.
func (u *Upgrader) Stop() {
	done := make(chan struct{})
	u.post(stopRequest{"Stop called", done})
	<-done
}

// Status returns the process's status.
func (u *Upgrader) Status() Status {
	reply := make(chan Status, 1)
	u.post(statusRequest{reply})
	return <-reply
}

// Metrics returns an http.Handler that serves the Upgrader's counters in the
// Prometheus text format (version 0.0.4), for the application to mount where its
// monitoring scrapes it:
//
//	handover_generation                     the serving generation's number
//	handover_upgrades_total{outcome}        upgrades by outcome (ok, failed, abandoned, died)
//	handover_handover_seconds               summary: request to takeover, of ok upgrades
//	handover_drain_seconds                  summary: how long old generations drained
//	handover_connections{state}             open connections by state
//	handover_connections_accepted_total     connections accepted
//	handover_connections_received_total     idle connections taken over from the
//	                                        previous generation (or the fd store)
//	handover_connections_handed_over_total  idle connections handed to the next one
//	handover_draining_generations           older generations still draining
//
// The counters are the line's: each generation hands them to the next. It does not
// need the Prometheus client library.
func (u *Upgrader) Metrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply := make(chan metricsSnapshot, 1)
		u.post(metricsRequest{reply})
		s := <-reply
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, s.history, s.status, s.above)
	})
}

// adopt makes t one of the process's drain targets (a Server or a Drainer whose
// listener came from the Upgrader).
func (u *Upgrader) adopt(t *target) {
	u.post(adoptEvent{t})
}
