//go:build linux

package master

import (
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

// This file holds the state machine of the master: its state, its events and the
// loop's dispatch (handle); what it does for each is in upgrade.go (an upgrade, a new
// child taking over, a failure, a replacement), children.go (signals, exits,
// stopping, restarts), notify.go (what children notify) and status.go. One goroutine
// (Run's loop) owns the state; signals, exits (from the one reaper loop), sd_notify
// datagrams, control requests and timers reach it as typed events on one channel.
// Nothing it does waits: exits, a dead child's last output and timers are awaited
// beside it and come back as events.
//
//	starting ──child ready──► serving ──SIGHUP/SIGUSR2/reload──► upgrading
//	  │  ▲                     ▲  │                                  │
//	  │  └─ backoff ◄─ crash ──┘  │          new child ready: the old one gets
//	  │     (a restart fails:     │          the stop signal, SIGKILL at the drain
//	  │      backoff again)       │          deadline ──────────────► serving
//	  │                           └◄── new child exits or is not ready in time:
//	  │                                killed, reaped, reported; the old serves on
//	  └─ the first child fails: exit 1
//	any ──SIGTERM──► stopping ──every child reaped──► exit with the serving child's status
//
// Generations: the first child is 1; a child started to replace generation n (an
// upgrade, or a restart after n crashed) is n+1, whether or not it makes it.
//
// Builds: an upgrade starts PROG as it is on disk now; the master opens the file
// first and keeps it open (see build). The first child's build is the last good
// build at once; a new build becomes the last good one when its child has served
// its probation (10 s, or -settle if longer) without dying. A restart after a crash
// and the replacement of a new child that died during its probation (the upgrade
// "died") are started from the last good build's descriptor, whatever is on disk:
// the bad build is never started again by the master, only by the operator's next
// upgrade. Old children drain side by side, each until its own deadline; past
// MaxDraining the oldest is killed at once.

// States of the master, as handover status shows them.
const (
	stateStarting  = "starting"  // no child is serving: the first one, or a restart, is starting
	stateServing   = "serving"   // a child serves
	stateUpgrading = "upgrading" // a new child is starting to replace the serving one
	statePrepared  = "prepared"  // a prepared new child waits for its commit (prepare.go)
	stateStopping  = "stopping"  // stopping the children, then exiting
)

// Timeouts and bounds that are not configurable.
const (
	// stableAfter: a child that served this long before it crashed resets the restart
	// backoff to its minimum.
	stableAfter = 10 * time.Second
	// outputGrace bounds how long an exited child's stderr is awaited (to EOF) before
	// its exit is handled, so that a failure report has its last lines. A grandchild
	// that keeps the pipe open only delays it this long.
	outputGrace = 250 * time.Millisecond
	// probation is how long a new build's child must serve before its build is the
	// last good one (Config.Settle if longer). Until then, its exit is the death of
	// its upgrade: the last good build is started in its place.
	probation = stableAfter
	// recordsKept is how many upgrade records the master keeps (status shows them).
	recordsKept = 10
)

// Triggers that are not upgrades asked for by the operator.
const (
	triggerStart       = "start"       // the first child
	triggerRestart     = "restart"     // after a crash, from the last good build
	triggerReplacement = "replacement" // for a new child that died, from the last good build
)

// Why the master killed an old child before it exited by itself (Upgrade.DrainKilled).
const (
	killedDeadline    = "deadline"     // its drain timeout ran out
	killedMaxDraining = "max_draining" // more than MaxDraining old children drained
	killedStop        = "stop"         // a second stop signal to the master
)

// role is what a child is to the master.
type role int

const (
	roleCandidate role = iota // started, not ready yet (first start, restart or upgrade)
	roleServing               // the serving child
	roleOld                   // sent the stop signal: drains and exits
	roleFailed                // a candidate that failed, being killed
)

func (r role) String() string {
	return [...]string{"starting", "serving", "draining", "failed"}[r]
}

// child is one process the master started.
type child struct {
	pid     int
	gen     int
	role    role
	trigger string // why it was started: start, restart, or the upgrade's trigger
	started time.Time
	readyAt time.Time
	exe     string // the resolved program
	build   *build // the file it runs, kept open (a reference held until it is gone)
	launch  launch // its arguments and working directory, symlinks resolved
	kept    bool   // started from the last good build's descriptor, not from disk
	// upgrade is set for a child started by an upgrade the operator asked for; it is
	// on probation from its readiness until it has served probation: its exit then
	// is the death of its upgrade.
	upgrade     bool
	onProbation bool
	// rec is the record of the upgrade (or replacement) that started it; drainRec
	// the record of the upgrade that replaced it, whose drain statistics it gives.
	rec, drainRec *wire.Upgrade
	// waiters wait for the outcome of its upgrade past its readiness (Config.Settle).
	waiters   []chan<- control.Outcome
	stoppedAt time.Time // when the stop signal was sent
	reapedAt  time.Time
	killWhy   string // why the master killed it while it drained (killedDeadline...)

	out      *proc.Tail    // its last stderr lines (Done at EOF of its stderr)
	timers   []func() bool // stop functions of its pending timers
	stopSent bool          // the stop signal (or a forwarded signal that ends it) was sent
	killed   bool          // SIGKILL was sent to its process group
	reaped   bool
	status   syscall.WaitStatus
	// Why a candidate is being killed: the cause (timeout, abandoned) and the reason.
	failCause, failReason string

	text      string // its last STATUS=
	reloading bool   // it sent RELOADING=1 and no READY=1 since
	lastPing  time.Time

	stored []storedFD // the fd store when it was started: passed after the sockets
	// A two-phase upgrade's (prepare.go): canPrepare is set once the child said it
	// can be prepared; commit is the pipe to a child started to be prepared, and
	// prepared when it said it is ready and waits.
	canPrepare bool
	commit     *os.File
	prepared   time.Time
	held       []storeOp // its changes of the fd store while it starts, applied when it takes over
	pidfd      *os.File  // the pidfd it was started with (nil in the state machine's tests)
}

// event is what the state goroutine consumes.
type event interface{ isEvent() }

type (
	// sigEvent: the master received a signal.
	sigEvent struct{ sig syscall.Signal }
	// reapedEvent: the reaper collected a process's exit status.
	reapedEvent struct {
		pid    int
		status syscall.WaitStatus
	}
	// goneEvent: a reaped child's output has settled; its exit can be handled.
	goneEvent struct{ c *child }
	// notifyEvent: an sd_notify datagram from pids[0] (pids[1:] are its ancestors
	// below the master; the machine looks them up (ancestors) when there is none and
	// pids[0] is not a child: a child's helper notifies).
	notifyEvent struct {
		pids   []int
		fields []Field
		fds    []int // passed with it: stored, or closed once handled
	}
	// upgradeRequest: the control socket asks for an upgrade (req: control.Upgrade,
	// or a two-phase upgrade's Prepare, Commit, Abort); the outcome goes to reply.
	upgradeRequest struct {
		trigger string
		req     string
		reply   chan<- control.Outcome
	}
	// statusRequest: the control socket asks for the status.
	statusRequest struct{ reply chan<- wire.Status }
	// timerEvent: a timer of kind fired (for child c, if any).
	timerEvent struct {
		kind timerKind
		c    *child
	}
)

func (sigEvent) isEvent() {}

func (reapedEvent) isEvent() {}

func (goneEvent) isEvent() {}

func (notifyEvent) isEvent() {}

func (upgradeRequest) isEvent() {}

func (statusRequest) isEvent() {}

func (timerEvent) isEvent() {}

type timerKind int

const (
	timerReadyTimeout timerKind = iota // a candidate was not ready within UpgradeTimeout
	timerReadyAfter                    // a candidate that never notified counts as ready
	timerDrain                         // a stopped child's drain deadline: SIGKILL
	timerRestart                       // the restart backoff is over
	timerFinish                        // leftovers were killed: exit even if some are not reaped
	timerSettle                        // a new child served Config.Settle: its upgrade is done
	timerProbation                     // a new child served its probation: its build is good
	timerPrepare                       // a prepared child waited Config.PrepareTimeout: abort it
)

// upgrade is the upgrade in progress.
type upgrade struct {
	trigger string
	started time.Time
	waiters []chan<- control.Outcome
	rec     *wire.Upgrade // its record, listed once it has an outcome
	// A two-phase upgrade's (prepare.go): prepare is set for one; aborts wait for
	// the end of the prepared child; committed is when it was committed.
	prepare   bool
	aborts    []chan<- control.Outcome
	committed time.Time
}

// machine is the master's state. Only the run goroutine touches it.
type machine struct {
	cfg Config
	log *slog.Logger
	pid int // the master's PID

	// Seams: the real implementations are in run.go; tests replace them.
	spawn   func(c *child) error                                 // start c (sets pid, pidfd and out)
	signal  func(c *child, sig syscall.Signal, group bool) error // c, or its process group (signalChild)
	after   func(d time.Duration, ev event) (stop func() bool)   // post ev after d
	settle  func(c *child)                                       // post goneEvent once c's output settled
	resolve func(prog string) (string, error)                    // find PROG on disk now (resolveProg)
	open    func(path string) (*build, error)                    // open the build at path (openBuild)
	pipe    func() (r int, w *os.File, err error)                // a commit pipe, close-on-exec (commitPipe)
	launch  func(b *build) launch                                // how to start b from disk now (resolveLaunch)
	ran     func(b *build, pid int) *build                       // what child pid runs, if not b (ranBuild)
	sd      func(state string)                                   // tell systemd, if it listens
	// leftovers kills (SIGKILL) the processes reparented to the master that no live
	// managed child owns and that a child left behind (killLeftovers: in c's process
	// group, or out of it), at an event of child c (nil: the master's end: every
	// orphan), and returns their PIDs; orphans lists the master's children that are
	// not managed children.
	leftovers func(c *child) []int
	orphans   func() []int
	// ancestors returns pid and its ancestors below the master, nearest first
	// (lineage): asked only of a notifying process that is not a child.
	ancestors func(pid int) []int

	systemd  bool // NOTIFY_SOCKET was set for the master
	watchdog bool // systemd's watchdog is on for the master: forward the child's pings
	sockets  []wire.Socket

	state     string
	children  map[int]*child // every child not yet reaped, by PID
	serving   *child
	cand      *child
	up        *upgrade
	gen       int // generation of the serving child (of the last one that served)
	everReady bool
	restarts  int
	lastErr   error // why the last upgrade or restart failed, or the serving child exited
	backoff   time.Duration
	restartT  func() bool
	forwarded syscall.Signal // SIGINT or SIGQUIT forwarded: the child's exit ends the master
	stopping  bool
	terms     int    // stop signals received
	exitFrom  *child // the child whose exit status the master exits with
	exitCode  int
	done      bool
	// cleared is set once the processes left over when every child has exited (a
	// child's helpers, reparented to the master) were killed, when the master stops.
	cleared bool
	// lastGood is the last good build, and goodLaunch the launch of the child that
	// made it good: restarts and replacements start from them.
	lastGood   *build
	goodLaunch launch
	// records are the last upgrades with an outcome, oldest first.
	records []*wire.Upgrade
	store   []storedFD // the fd store (fdstore.go)
}

func newMachine(cfg Config, log *slog.Logger) *machine {
	if cfg.MaxDraining <= 0 {
		cfg.MaxDraining = DefaultMaxDraining
	}
	return &machine{
		cfg:      cfg,
		log:      log,
		pid:      os.Getpid(),
		state:    stateStarting,
		children: map[int]*child{},
		backoff:  cfg.RestartDelay,
	}
}

// begin starts the first child. It returns false when that failed at once (the
// master then exits 1).
func (m *machine) begin() bool {
	if err := m.startCandidate(triggerStart, nil); err != nil {
		m.log.Error("could not start the program", "event", "start_failed", "err", err)
		m.exitCode = 1
		m.stopping, m.state, m.done = true, stateStopping, true
		return false
	}
	return true
}

// handle processes one event.
func (m *machine) handle(ev event) {
	switch ev := ev.(type) {
	case sigEvent:
		m.onSignal(ev.sig)
	case reapedEvent:
		m.onReaped(ev.pid, ev.status)
	case goneEvent:
		m.onGone(ev.c)
	case notifyEvent:
		m.onNotify(ev)
	case upgradeRequest:
		m.onUpgradeRequest(ev)
	case statusRequest:
		ev.reply <- m.status()
	case timerEvent:
		m.onTimer(ev.kind, ev.c)
	}
	if m.stopping && len(m.children) == 0 {
		m.finish()
	}
}

// finish ends the master once every child has exited: processes they left behind
// (reparented to the master) are killed first and reaped, so that nothing outlives it
// holding the sockets.
func (m *machine) finish() {
	left := m.orphans()
	switch {
	case len(left) == 0:
		m.done = true
	case !m.cleared:
		m.cleared = true
		m.log.Warn("killing processes the children left behind", "event", "leftovers_killed", "pids", fmt.Sprint(m.leftovers(nil)))
		// Their exits come back from the reaper; should one not (a process stuck in
		// the kernel), the master exits anyway.
		m.after(time.Second, timerEvent{kind: timerFinish})
	}
}

// probation is how long a new build's child serves before its build is good.
func (m *machine) probation() time.Duration {
	return max(probation, m.cfg.Settle)
}

func (c *child) stopTimers() {
	for _, stop := range c.timers {
		stop()
	}
	c.timers = nil
}

func (m *machine) onTimer(kind timerKind, c *child) {
	switch kind {
	case timerReadyTimeout:
		if c != m.cand || c.reaped {
			return
		}
		c.stopTimers()
		c.role, c.failCause = roleFailed, "timeout"
		c.failReason = fmt.Sprintf("was not ready within %s (no READY=1", m.cfg.UpgradeTimeout)
		if m.cfg.ReadyAfter > 0 {
			c.failReason += ")"
		} else {
			c.failReason += "; for a program that does not notify, give -ready-after)"
		}
		m.log.Warn("new child not ready in time; killing it", "event", "ready_timeout", "child", c.pid, "timeout", m.cfg.UpgradeTimeout.String())
		m.kill(c)
	case timerReadyAfter:
		if c != m.cand || c.reaped || c.killed || m.stopping {
			return
		}
		m.takeOver(c, "delay")
	case timerDrain:
		if c.reaped {
			// The child exited; processes it started and left behind (still serving
			// on the sockets, perhaps), in its process group or out of it, get what
			// it would have got.
			m.clearLeftovers(c, "drain_deadline")
			return
		}
		if c.killed {
			return
		}
		m.log.Warn("drain deadline: killing the child", "event", "drain_deadline", "child", c.pid, "gen", c.gen)
		c.killWhy = killedDeadline
		m.kill(c)
	case timerFinish:
		m.done = true
	case timerSettle:
		if c == m.serving && !c.reaped {
			m.settled(c)
		}
	case timerPrepare:
		m.prepareTimedOut(c)
	case timerProbation:
		if c != m.serving || c.reaped || !c.onProbation {
			return
		}
		c.onProbation = false
		if !m.isLastGood(c) {
			m.setLastGood(c)
			m.log.Info("the new build served its probation: it is the last good build", "event", "last_good", "child", c.pid, "gen", c.gen, "exe", m.lastGoodString())
		}
	case timerRestart:
		m.restartT = nil
		if m.stopping || m.cand != nil {
			return
		}
		m.restarts++
		if err := m.startCandidate(triggerRestart, nil); err != nil {
			m.lastErr = err
			m.log.Warn("restart failed", "event", "restart_failed", "cause", "start", "err", err)
			m.scheduleRestart()
		}
	}
}
