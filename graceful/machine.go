package graceful

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// This file holds the process's life. One goroutine (Upgrader.run) owns the machine
// below and hands it every event: calls of the API, signals, what an upgrade attempt,
// the successor or the previous generation says, ends of drains, timers. Nothing it
// does waits: the other machines run beside it and report back as events.
//
//	attempt.go    one upgrade attempt: spawn, "ready", handover, or one failure
//	successor.go  the generation this one handed over to: resume, or a replacement
//	lineage.go    the older generations still draining: upstream, above, finish, farewell
//	target.go     the drains of the process's Servers and Drainers
//	carry.go      what travels beside the sockets (TLS keys, the application's state)
//
// The states of the process:
//
//	                 Ready                 upgrade¹
//	  starting ─────────────► serving ────────────► upgrading ──── the new generation took
//	     │                    ▲  ▲ │                  │            over (MAINPID=, BARRIER=1,
//	     │   attempt failed²  │  │ │   ◄──────────────┘            "main")
//	     │   ─────────────────┘  │ │                                   │
//	     │                       │ │                                   ▼
//	     │      successor died,  │ │                 stop³          draining ──┐
//	     │      resumable⁴ ──────┘ └──────────────────────► stopping   │      │ successor died, not
//	     │                                                     │       │      │ resumable⁴: start the
//	     └─────────── stop³ ────────────────────────────────►  │       │      │ last good build (a
//	                                                           │       │      │ replacement, at most 3)
//	                                                           ▼       ▼
//	                                                         exited ◄── every drain ended, and the
//	                                                                    successor's probation⁵ is over
//
//	¹ SIGUSR2, Upgrade, or `handover reload` on the control socket. Refused (logged,
//	  returned) unless serving; refused as PID 1 of a PID namespace without a service
//	  manager, under a `handover run` master, and on systems other than Linux. A
//	  two-phase upgrade (Prepare, `handover prepare`; prepare.go) waits in prepared
//	  between "ready" and the go-ahead: the new generation does not accept, this
//	  process serves alone; Commit goes on as an upgrade does (upgrading, then
//	  draining), Abort and PrepareTimeout end it as a failed attempt (serving).
//	² The new generation exited, reported an error, closed the channel, sent
//	  something unexpected, was not ready within UpgradeTimeout, could not be
//	  started, or the handover could not be confirmed: it is killed (and reaped when
//	  it is our child), then systemd hears READY=1 again, and whoever asked hears why.
//	³ SIGTERM, SIGINT or Stop. An upgrade in progress is abandoned. In draining, a
//	  stop makes the drain final (listeners closed; no resuming). A second stop
//	  signal exits at once. A new generation stopped while starting but after its
//	  parent could hand over to it still tells the parent "done" (readyStopped).
//	⁴ No service manager, and the successor exited without saying "done" (it had
//	  not handed over in turn or stopped). Resumable: every listener is served by a
//	  Server or a Drainer of this Upgrader, none was closed, no datagram socket is
//	  held, and the application never took Exit; then the drains are taken back and
//	  this process is the current generation again. Otherwise the last good build
//	  (this process's own executable) is started on the sockets kept open.
//	⁵ Config.Probation from the handover (successor.go): until then a process that
//	  drained stands by in draining, its listeners stopped but open, so that a death
//	  is met as one during the drain. It ends early when the successor hands over in
//	  turn or stops ("done"), or on a stop; there is none under a service manager, or
//	  when the process can neither resume nor start a replacement.
//
// Without a service manager the drain stops accepting but keeps the sockets, and the
// successor is watched until the end of its probation; one that dies later (the
// process lived on after Wait) is not met.

// state is where a process is in its life; see the diagram above.
type state int

const (
	starting state = iota
	serving
	upgrading
	prepared // a two-phase upgrade's new generation is ready and waits for its commit
	draining
	stopping
	exited
)

// String returns the state's name as Status shows it.
func (s state) String() string {
	return [...]string{"starting", "serving", "upgrading", "prepared", "draining", "stopping", "exited"}[s]
}

// ErrUpgradeInProgress is returned by Upgrade when an upgrade is already under way.
var ErrUpgradeInProgress = errors.New("graceful: an upgrade is already in progress")

var (
	errFinishNow = errors.New("graceful: drain ended early: too many generations drain")
	errNotReady  = errors.New("graceful: not ready yet: call Ready (Serve does) before upgrading")
	errStopping  = errors.New("graceful: the process is stopping")
	errAbandoned = errors.New("upgrade abandoned: the process is stopping")
)

// event is what the machine handles: each kind of event knows which of the
// machine's handlers it goes to.
type event interface{ handle(m *machine) }

// notifier is the service manager's notification socket (sdnotify.Notifier).
type notifier interface {
	Send(state string, fds ...int) error
	Barrier(timeout time.Duration) error
}

// world is how the machine reaches outside itself. newUpgrader sets the real
// ways; the unit tests set fakes (machine_test.go).
type world struct {
	spawn    func(spawnSpec) (*generation, error)               // start a new generation
	after    func(d time.Duration, ev event) (stop func() bool) // post ev after d
	post     func(ev event)                                     // hand ev to the machine
	clock    clock
	notifier notifier // nil: no service manager listens
	exitNow  func(sig os.Signal)
	killWait time.Duration  // how long a killed new process may take to die
	control  func() *target // serves the control socket once ready; nil if none
}

// machine is the process's life. Only the goroutine that runs handle touches it,
// but for holds.
type machine struct {
	world
	cfg Config
	log *slog.Logger
	set *fds.Set
	exe string // the executable an upgrade starts
	gen int

	st        state
	hasParent bool  // a handover parent started this process (it is a new generation)
	main      bool  // the service manager supervises this process (its notifications are accepted)
	deferred  bool  // a SIGUSR2 came before this new generation was ready
	terms     int   // stop signals received
	lastErr   error // why the last upgrade failed, until one succeeds
	nextPID   int   // the generation this one handed over to
	final     bool  // the drain is final: listeners closed, no resuming
	history   history
	historyIn *string // the history as the parent sent it, until needed (hist)
	// startLines writes the start-up lines held back until the process serves
	// (startLog.flush; nil: none are).
	startLines func()

	// takingOver is set by Ready (beside the machine) from when the parent may
	// hand over to this process (upgrader.go).
	takingOver   atomic.Bool
	stoppedEarly bool // stopped while starting, before the parent could hand over to it

	exit  *exitSignal  // closed when draining starts (Exit)
	done  *doneSignal  // closed when the process may exit (Wait)
	holds atomic.Int64 // work beside the machine the process waits for (see hold)

	att      *attempt // the upgrade attempt in progress, if any
	next     successors
	line     lineage
	drains   drains
	svc      service
	carriers []carry.Carrier
	taken    takenBack   // the datagram sockets carriers take back (carry.Host.TakesBack)
	link     *masterNext // under a master, the new child a stop hands over to (masterlink.go)
}

func newMachine(cfg Config, set *fds.Set, log *slog.Logger) *machine {
	m := &machine{cfg: cfg, set: set, log: log, gen: 1, exit: newExitSignal(), done: newDoneSignal()}
	m.history.Outcomes = map[string]int{}
	m.clock = systemClock{}
	m.killWait = killWait
	m.exitNow = exitBySignal
	return m
}

// handle processes one event, then finishes the process if it is done.
func (m *machine) handle(ev event) {
	ev.handle(m)
	m.settle()
}

// hold counts work beside the machine that the process waits for (a message on
// its way, a carrier's work); release ends it.
func (m *machine) hold() (release func()) {
	m.holds.Add(1)
	return func() {
		m.holds.Add(-1)
		m.post(wakeEvent{})
	}
}

// Events of the process's life.
type (
	signalEvent struct{ sig os.Signal }
	// readyEvent: Ready has done its part (confirmed with the parent, if any).
	readyEvent struct {
		upstream channel           // to the parent, which drains now; nil if none
		said     []handoff.Message // what the parent said before "main"
		child    bool              // a generation started by a parent
		done     chan<- struct{}
	}
	upgradeRequest struct {
		trigger string
		step    step // an upgrade, or a step of a two-phase one (prepare.go)
		reply   func(upgradeResult)
	}
	stopRequest struct {
		why  string
		done chan<- struct{}
	}
	statusRequest  struct{ reply chan<- Status }
	metricsRequest struct{ reply chan<- metricsSnapshot }
	adoptEvent     struct{ t *target }
	tickEvent      struct{}
	wakeEvent      struct{} // some work beside the machine ended (hold)
)

func (e signalEvent) handle(m *machine)    { m.onSignal(e.sig) }
func (e readyEvent) handle(m *machine)     { m.onReady(e) }
func (e upgradeRequest) handle(m *machine) { m.onUpgradeRequest(e) }
func (e stopRequest) handle(m *machine)    { m.stop(e.why); close(e.done) }
func (e statusRequest) handle(m *machine)  { e.reply <- m.status() }
func (e metricsRequest) handle(m *machine) { e.reply <- m.metrics() }
func (e adoptEvent) handle(m *machine)     { m.adopt(e.t) }
func (tickEvent) handle(m *machine)        { m.onTick() }
func (wakeEvent) handle(*machine)          {}

// begin arms what runs for as long as the process: systemd's STATUS= refresh.
func (m *machine) begin() {
	if m.notifier != nil {
		m.after(statusEvery, tickEvent{})
	}
}

func (m *machine) onTick() {
	if m.st == exited {
		return
	}
	m.notifyStatus()
	m.after(statusEvery, tickEvent{})
}

// onReady: the process serves on its listeners.
func (m *machine) onReady(ev readyEvent) {
	defer close(ev.done)
	if m.startLines != nil {
		m.startLines() // before "ready": the process accepts already
	}
	if m.st != starting {
		m.readyStopped(ev)
		return
	}
	m.st = serving
	m.main = true
	if ev.upstream != nil {
		m.listenUpstream(ev.upstream)
	}
	for _, msg := range ev.said {
		m.onUpstreamMessage(msg)
	}
	m.writePIDFile()
	if !ev.child {
		m.notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()) + m.canPrepare())
	}
	m.startWatchdog()
	m.storeFDs()
	m.notifyStatus()
	if m.control != nil {
		// Answered from now on: until this process is ready, the previous generation
		// answers (both accept on the one socket).
		m.drains.targets = append(m.drains.targets, m.control())
	}
	m.turn(carry.Serving)
	m.log.Info("ready", "event", "ready", "listeners", describeHeld(m.set.Held()))
	if m.deferred {
		m.deferred = false
		m.beginUpgrade("SIGUSR2", nil)
	}
}

// readyStopped handles Ready's event in a process that was stopped before it. The
// parent of one stopped once it could hand over (after "ready"; in a prepared
// generation, after "main") has handed over to it: it hears that this process is no
// longer the current generation ("done"), as after a stop of a ready process, or it
// would take this exit for a crash and serve again. The parent of one stopped
// before hears nothing: it takes this exit for a death (a failed upgrade, or a
// successor that died), and serves on.
func (m *machine) readyStopped(ev readyEvent) {
	closeMessages(ev.said)
	switch {
	case ev.upstream == nil:
	case m.stoppedEarly:
		ev.upstream.Close()
	default:
		m.listenUpstream(ev.upstream)
		m.retire()
	}
}

func (m *machine) onSignal(sig os.Signal) {
	switch signalAction(sig) {
	case actUpgrade:
		if m.st == starting && m.hasParent {
			// A new generation that is not confirmed yet: the PID file names it
			// already (the old one writes it as it hands over), so an operator's
			// SIGUSR2 can come now. It runs once this process is ready.
			if !m.deferred {
				m.deferred = true
				m.log.Info("upgrade requested before this generation is ready: it runs once it is", "event", "upgrade_deferred", "trigger", signalName(sig))
			}
			return
		}
		m.beginUpgrade(signalName(sig), nil)
	case actIgnore:
		m.log.Warn("signal ignored; send SIGUSR2 to upgrade, SIGTERM to stop", "event", "signal_ignored", "signal", signalName(sig))
	case actStop:
		m.terms++
		if m.terms > 1 {
			m.log.Warn("second stop signal: exiting now, without finishing the drain", "event", "exit_now", "signal", signalName(sig))
			m.exitNow(sig)
			return
		}
		m.stop(signalName(sig))
	}
}

// refusal says why an upgrade cannot start now (reason names it in the log), or
// returns a nil error. moved is the PID this process handed over to, if it did.
func (m *machine) refusal() (reason string, moved int, err error) {
	switch {
	case m.st == starting:
		return "not_ready", 0, errNotReady
	case m.st == upgrading:
		return "in_progress", 0, ErrUpgradeInProgress
	case m.st == prepared:
		return "prepared", 0, fmt.Errorf("graceful: a prepared generation (PID %d) waits for its commit: commit it (Commit, handover commit) or abort it (Abort, handover abort) first", m.att.ready)
	case m.nextPID != 0 && (m.st == draining || m.st == exited):
		return "handed_over", m.nextPID, fmt.Errorf("graceful: this process has handed over to PID %d; ask that one", m.nextPID)
	case m.st == draining || m.st == stopping || m.st == exited:
		return "stopping", 0, errStopping
	}
	reason, err = m.cannotUpgrade()
	return reason, 0, err
}

// cannotUpgrade says why this process can never upgrade itself, or returns a nil
// error.
func (m *machine) cannotUpgrade() (reason string, err error) {
	switch {
	case runtime.GOOS != "linux":
		return "unsupported", fmt.Errorf("graceful: upgrading a process is not supported on %s (it serves, and drains on SIGINT/SIGTERM): %w", runtime.GOOS, errors.ErrUnsupported)
	case m.set.Master() != 0:
		return "master", fmt.Errorf("graceful: this process runs under a `handover run` master (PID %d), which runs the upgrades: send it SIGHUP or SIGUSR2, or run `handover reload`", m.set.Master())
	case os.Getpid() == 1 && m.notifier == nil:
		return "pid1", errors.New("graceful: this process is PID 1 of its PID namespace (a container started without an init): when it hands over and exits, the kernel ends the namespace and the new generation with it; run the server under `handover run`, which keeps one PID while generations change (an init such as tini does not help: it exits with its first child)")
	}
	return "", nil
}

// stop drains for good.
func (m *machine) stop(why string) {
	switch m.st {
	case stopping, exited:
		return
	case draining:
		// This process drains already; the stop only makes the drain final.
		m.log.Info("stop requested while draining after a handover: the drain goes on, and is final", "event", "stop_ignored", "why", why)
		m.makeFinal()
		m.endProbation("stop")
		return
	case upgrading, prepared:
		m.abandonAttempt()
	case starting:
		m.stoppedEarly = !m.takingOver.Load()
	}
	m.st = stopping
	m.retire()
	if l := m.link; l != nil {
		// Under a master, which stops this process because l took over.
		m.log.Info("stopping: handing over to the master's new child", "event", "stop", "why", why, "to", l.pid)
		m.turn(carry.HandedOver)
	} else {
		m.log.Info("stopping", "event", "stop", "why", why)
		m.turn(carry.Stopping)
	}
	if m.main && !m.svc.handing {
		m.notify("STOPPING=1\nSTATUS=stopping: draining connections")
	}
	m.stopWatchdog()
	if m.cfg.PIDFile != "" {
		pidfile.Remove(m.cfg.PIDFile, os.Getpid())
	}
	m.exit.close()
	m.startDrains(true)
}

// settle finishes the process once it is done: it drains (after a handover or a
// stop), every drain has ended, no upgrade attempt runs, nothing it waits for is
// on its way, and it does not stand by for its successor's probation. As the
// drains end, the successor hears how they went (and the carriers send the
// application's last state); as the process finishes, its farewell goes first.
func (m *machine) settle() {
	if m.st == exited || !m.drained() {
		return
	}
	if !m.line.drained {
		m.sayDrained()
	}
	if m.holds.Load() > 0 || m.standingBy() {
		return
	}
	if !m.sayFarewell() {
		return // the upstream channel is not passed on yet
	}
	if m.holds.Load() == 0 {
		m.finish()
	}
}

func (m *machine) drained() bool {
	if m.st != draining && m.st != stopping {
		return false
	}
	if m.att != nil || m.holds.Load() > 0 {
		return false
	}
	return m.drainsEnded()
}

// finish ends the drains: every listener is closed for good, the copies of the
// sockets kept for a replacement too, and Wait returns. The machine goes on
// (signals, the successor's messages) for as long as the process lives (one that
// drains servers of its own after Exit may outlive Wait), but a successor that dies
// from now on is past its probation: nothing is done.
func (m *machine) finish() {
	m.st = exited
	m.endProbation("")
	m.closeListeners()
	if m.next.reserve != nil {
		m.next.reserve.Close()
		m.next.reserve = nil
	}
	m.stopWatchdog()
	m.log.Info("drained; the process may exit", "event", "done")
	m.done.close(m.drains.err)
}

// turn tells the carriers that the process's role changed.
func (m *machine) turn(role carry.Role) {
	t := carry.Turn{Role: role, Main: m.main}
	if (role == carry.HandedOver || role == carry.Drained) && m.nextPID != 0 && m.next.cur != nil {
		t.Successor = m.next.cur.out
	} else if role == carry.HandedOver || role == carry.Drained && m.st == stopping {
		t.Successor = m.linkSuccessor()
	}
	if role == carry.HandedOver || role == carry.Stopping {
		t.Deadline = m.clock.Now().Add(m.cfg.DrainTimeout)
	}
	for _, c := range m.carriers {
		c.Turn(t)
	}
}

// hist returns the history of upgrades, decoded first if it came as text and was
// not yet (see historyIn).
func (m *machine) hist() *history {
	m.takeHistoryIn()
	return &m.history
}

// takeHistoryIn decodes the history that came from the parent, if it was not yet.
func (m *machine) takeHistoryIn() {
	text := m.historyIn
	if text == nil {
		return
	}
	m.historyIn = nil
	h, err := decodeHistory(*text)
	if err != nil {
		m.log.Warn("the history of upgrades is lost", "event", "history_lost", "err", err)
		return
	}
	m.history = h
}

func (m *machine) status() Status {
	if m.st != starting {
		// While it starts, the history of the initial batch is left as it came:
		// decoding it takes about half a millisecond, on the way to the first
		// accept of an application that asks for its Status (its Generation)
		// after New; the parent hands the history on again as it takes over.
		m.takeHistoryIn()
	}
	s := Status{PID: os.Getpid(), Generation: m.gen, State: m.st.String(),
		Executable: m.exe, Systemd: m.notifier != nil, Listeners: m.set.Sockets()}
	if m.lastErr != nil {
		s.LastError = m.lastErr.Error()
	}
	s.Connections = m.connections()
	if a := m.att; a != nil && !a.abandoned && m.st == prepared {
		s.Prepared = a.ready
	} else if a != nil && !a.abandoned {
		s.Upgrading = a.pid
	}
	s.OlderDraining = m.line.above
	s.Upgrades = m.history.shown()
	s.ProbationUntil = m.probationUntil()
	return s
}

// metricsSnapshot is what Metrics prints.
type metricsSnapshot struct {
	history history
	status  Status
	above   int
}

func (m *machine) metrics() metricsSnapshot {
	return metricsSnapshot{history: m.hist().clone(), status: m.status(), above: m.line.above}
}

// readWatchdog reads systemd's watchdog settings (ours are the PIDs that may ping
// it), and unsets them: a process the application starts must not ping it.
func readWatchdog(ours ...int) (*sdnotify.Watchdog, error) {
	return sdnotify.WatchdogFromEnv(ours...)
}
