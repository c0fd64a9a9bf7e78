//go:build linux

package master

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// This file holds the whole state machine of the master. One goroutine (run) owns the
// state; signals, exits (from the one reaper loop), sd_notify datagrams, control
// requests and timers reach it as typed events on one channel. Nothing it does waits:
// exits, a dead child's last output and timers are awaited beside it and come back as
// events.
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
	// reportLines is how many of a failed child's last stderr lines a report quotes.
	reportLines = 10
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
	kept    bool   // started from the last good build's descriptor, not from disk
	// upgrade is set for a child started by an upgrade the operator asked for; it is
	// on probation from its readiness until it has served probation: its exit then
	// is the death of its upgrade.
	upgrade     bool
	onProbation bool
	// rec is the record of the upgrade (or replacement) that started it; drainRec
	// the record of the upgrade that replaced it, whose drain statistics it gives.
	rec, drainRec *graceful.Upgrade
	// waiters wait for the outcome of its upgrade past its readiness (Config.Settle).
	waiters   []chan<- result
	stoppedAt time.Time // when the stop signal was sent
	reapedAt  time.Time
	killWhy   string // why the master killed it while it drained (killedDeadline...)

	out      *ring         // its last stderr lines
	outDone  chan struct{} // closed at EOF of its stderr
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
	// below the master).
	notifyEvent struct {
		pids   []int
		fields []Field
		fds    int
	}
	// upgradeRequest: the control socket asks for an upgrade; the outcome goes to reply.
	upgradeRequest struct {
		trigger string
		reply   chan<- result
	}
	// statusRequest: the control socket asks for the status.
	statusRequest struct{ reply chan<- graceful.Status }
	// timerEvent: a timer of kind fired (for child c, if any).
	timerEvent struct {
		kind timerKind
		c    *child
	}
)

func (sigEvent) isEvent()       {}
func (reapedEvent) isEvent()    {}
func (goneEvent) isEvent()      {}
func (notifyEvent) isEvent()    {}
func (upgradeRequest) isEvent() {}
func (statusRequest) isEvent()  {}
func (timerEvent) isEvent()     {}

type timerKind int

const (
	timerReadyTimeout timerKind = iota // a candidate was not ready within UpgradeTimeout
	timerReadyAfter                    // a candidate that never notified counts as ready
	timerDrain                         // a stopped child's drain deadline: SIGKILL
	timerRestart                       // the restart backoff is over
	timerFinish                        // leftovers were killed: exit even if some are not reaped
	timerSettle                        // a new child served Config.Settle: its upgrade is done
	timerProbation                     // a new child served its probation: its build is good
)

// result is the outcome of an upgrade, as the control socket reports it.
type result struct {
	pid, gen int
	err      string
	stopping bool
}

// upgrade is the upgrade in progress.
type upgrade struct {
	trigger string
	started time.Time
	waiters []chan<- result
	rec     *graceful.Upgrade // its record, listed once it has an outcome
}

// machine is the master's state. Only the run goroutine touches it.
type machine struct {
	cfg Config
	log *slog.Logger
	pid int // the master's PID

	// Seams: the real implementations are in run.go; tests replace them.
	spawn   func(c *child) error                               // start c (sets pid, out, outDone)
	signal  func(pid int, sig syscall.Signal) error            // pid < 0: a process group
	after   func(d time.Duration, ev event) (stop func() bool) // post ev after d
	settle  func(c *child)                                     // post goneEvent once c's output settled
	resolve func(prog string) (string, error)                  // find PROG on disk now
	open    func(path string) (*build, error)                  // open the build at path (openBuild)
	ran     func(b *build, pid int) *build                     // what child pid runs, if not b (ranBuild)
	sd      func(state string)                                 // tell systemd, if it listens
	// leftovers kills (SIGKILL) the processes of process group pgid that were
	// reparented to the master (a dead child's helpers) and returns how many;
	// orphans lists the master's children that are not managed children.
	leftovers func(pgid int) int
	orphans   func() []int

	systemd  bool // NOTIFY_SOCKET was set for the master
	watchdog bool // systemd's watchdog is on for the master: forward the child's pings
	sockets  []graceful.Socket

	state     string
	children  map[int]*child // every child not yet reaped, by PID
	serving   *child
	cand      *child
	up        *upgrade
	gen       int // generation of the serving child (of the last one that served)
	everReady bool
	restarts  int
	lastErr   string
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
	// lastGood is the last good build: restarts and replacements start from it.
	lastGood *build
	// records are the last upgrades with an outcome, oldest first.
	records []*graceful.Upgrade
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
		m.beginUpgrade(ev.trigger, ev.reply)
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
		m.log.Warn("killing processes the children left behind", "event", "leftovers_killed", "pids", fmt.Sprint(left))
		for _, pid := range left {
			m.signal(pid, syscall.SIGKILL)
		}
		// Their exits come back from the reaper; should one not (a process stuck in
		// the kernel), the master exits anyway.
		m.after(time.Second, timerEvent{kind: timerFinish})
	}
}

// startCandidate starts the next generation: the first child and an upgrade's from
// PROG as it is on disk now; a restart or a replacement from the last good build,
// kept open. rec, if not nil, is the record of the upgrade or replacement.
func (m *machine) startCandidate(trigger string, rec *graceful.Upgrade) error {
	kept := (trigger == triggerRestart || trigger == triggerReplacement) && m.lastGood != nil
	var b *build
	if kept {
		b = m.lastGood
	} else {
		exe, err := m.resolve(m.cfg.Prog)
		if err != nil {
			return err
		}
		if b, err = m.open(exe); err != nil {
			return err
		}
		b = m.dedupe(b)
	}
	m.hold(b)
	c := &child{gen: m.gen + 1, role: roleCandidate, trigger: trigger, started: time.Now(), exe: b.path, build: b, kept: kept, rec: rec,
		upgrade: trigger != triggerStart && trigger != triggerRestart && trigger != triggerReplacement}
	if err := m.spawn(c); err != nil {
		m.drop(b)
		return err
	}
	m.children[c.pid] = c
	m.cand = c
	c.timers = append(c.timers, m.after(m.cfg.UpgradeTimeout, timerEvent{timerReadyTimeout, c}))
	if m.cfg.ReadyAfter > 0 {
		c.timers = append(c.timers, m.after(m.cfg.ReadyAfter, timerEvent{timerReadyAfter, c}))
	}
	from := "disk"
	if kept {
		from = "last_good"
	}
	m.log.Info("child started", "event", "child_started", "child", c.pid, "gen", c.gen, "trigger", trigger, "exe", b.String(), "build", from)
	return nil
}

// dedupe returns the last good build instead of b when b is the same file (an
// upgrade to the build already running keeps one descriptor).
func (m *machine) dedupe(b *build) *build {
	if g := m.lastGood; g != nil && b != g && b.ino != 0 && b.dev == g.dev && b.ino == g.ino && slices.Equal(b.prefix, g.prefix) {
		b.close()
		return g
	}
	return b
}

// hold and drop count the references to a build; the last drop closes it.
func (m *machine) hold(b *build) {
	b.refs++
}

func (m *machine) drop(b *build) {
	if b == nil {
		return
	}
	if b.refs--; b.refs <= 0 {
		b.close()
	}
}

// setLastGood makes b the last good build.
func (m *machine) setLastGood(b *build) {
	if b == m.lastGood {
		return
	}
	m.hold(b)
	m.drop(m.lastGood)
	m.lastGood = b
}

// record lists rec, now that it has an outcome.
func (m *machine) record(rec *graceful.Upgrade) {
	m.records = append(m.records, rec)
	if len(m.records) > recordsKept {
		m.records = m.records[len(m.records)-recordsKept:]
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

// becomeReady makes candidate c the serving child; the one it replaces drains.
func (m *machine) becomeReady(c *child, via string) {
	c.stopTimers()
	m.cand = nil
	old := m.serving
	c.role, c.readyAt = roleServing, time.Now()
	if b := m.ran(c.build, c.pid); b != nil {
		// The file at PROG's path was replaced between its opening and the exec.
		m.log.Info("the child runs the file now at its path, not the one opened for it", "event", "build_reopened", "child", c.pid, "exe", b.String())
		b = m.dedupe(b)
		m.hold(b)
		m.drop(c.build)
		c.build = b
	}
	m.serving, m.gen = c, c.gen
	m.state = stateServing
	took := c.readyAt.Sub(c.started).Round(time.Microsecond).String()
	m.log.Info("child ready", "event", "child_ready", "child", c.pid, "gen", c.gen, "via", via, "took", took)
	switch {
	case c.upgrade:
		// A new build: on probation (a restart or replacement runs the last good build).
		c.onProbation = true
		c.timers = append(c.timers, m.after(m.probation(), timerEvent{timerProbation, c}))
	case m.lastGood == nil:
		m.setLastGood(c.build) // the first child: nothing else to fall back on
	}
	if old != nil {
		m.stopChild(old, m.cfg.StopSignal)
		m.limitDraining()
	}
	if rec := c.rec; rec != nil {
		rec.To, rec.Generation, rec.End, rec.Outcome = c.pid, c.gen, c.readyAt, "ok"
		rec.HandoverSeconds = c.readyAt.Sub(rec.Start).Seconds()
		m.record(rec)
		if old != nil {
			old.drainRec = rec
		}
	}
	up := m.up
	if up != nil {
		m.up = nil
		m.lastErr = ""
		from := 0
		if old != nil {
			from = old.pid
		}
		m.log.Info("handed over", "event", "handed_over", "from", from, "to", c.pid, "gen", c.gen, "took", time.Since(up.started).Round(time.Microsecond).String())
	}
	// systemd first, then whoever asked: when `handover reload` (ExecReload=) returns,
	// systemd has the new status (it reads notifications before SIGCHLD).
	if !m.everReady {
		m.everReady = true
		m.sd("READY=1\nMAINPID=" + strconv.Itoa(m.pid) + "\nSTATUS=" + m.statusLine())
	} else {
		m.sd("READY=1\nSTATUS=" + m.statusLine())
	}
	if up != nil {
		if m.cfg.Settle > 0 {
			// Answered once it has served Settle, or with the reason if it dies first.
			c.waiters = up.waiters
			c.timers = append(c.timers, m.after(m.cfg.Settle, timerEvent{timerSettle, c}))
		} else {
			for _, w := range up.waiters {
				w <- result{pid: c.pid, gen: c.gen}
			}
		}
	}
}

// settled answers those waiting for c's upgrade: it took over and did not die.
func (m *machine) settled(c *child) {
	for _, w := range c.waiters {
		w <- result{pid: c.pid, gen: c.gen}
	}
	c.waiters = nil
}

// limitDraining kills the oldest old children, at once, while more than
// MaxDraining drain. A deploy is not refused for a long-lived connection; those
// connections would be cut at their deadline anyway, the oldest first.
func (m *machine) limitDraining() {
	var old []*child
	for _, c := range m.children {
		if c.role == roleOld && !c.reaped && !c.killed {
			old = append(old, c)
		}
	}
	if len(old) <= m.cfg.MaxDraining {
		return
	}
	slices.SortFunc(old, func(a, b *child) int { return a.gen - b.gen })
	for _, c := range old[:len(old)-m.cfg.MaxDraining] {
		m.log.Warn("more old children drain than -max-draining: killing the oldest", "event", "too_many_draining",
			"child", c.pid, "gen", c.gen, "draining", len(old), "max", m.cfg.MaxDraining, "drained_for", time.Since(c.stoppedAt).Round(time.Millisecond).String())
		c.killWhy = killedMaxDraining
		m.kill(c)
	}
}

// stopChild sends c sig (the stop signal) and gives it the drain timeout before
// SIGKILL.
func (m *machine) stopChild(c *child, sig syscall.Signal) {
	if c.stopSent || c.reaped {
		return
	}
	c.stopSent = true
	c.role = roleOld
	c.onProbation = false // replaced before the end of its probation: its build is not promoted
	c.stoppedAt = time.Now()
	c.stopTimers()
	m.settled(c)
	if err := m.signal(c.pid, sig); err != nil {
		m.log.Warn("could not signal a child", "event", "signal_failed", "child", c.pid, "signal", signalName(sig), "err", err)
	}
	c.timers = append(c.timers, m.after(m.cfg.DrainTimeout, timerEvent{timerDrain, c}))
	m.log.Info("child stopping", "event", "child_stop", "child", c.pid, "gen", c.gen, "signal", signalName(sig), "deadline", m.cfg.DrainTimeout.String())
}

// kill sends SIGKILL to c's process group (c and whatever it started).
func (m *machine) kill(c *child) {
	if c.reaped || c.killed {
		return
	}
	c.killed = true
	if err := m.signal(-c.pid, syscall.SIGKILL); err != nil {
		m.signal(c.pid, syscall.SIGKILL)
	}
}

func (m *machine) onSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGHUP, syscall.SIGUSR2:
		m.beginUpgrade(signalName(sig), nil)
	case syscall.SIGTERM:
		m.terms++
		if m.terms > 1 || m.stopping {
			m.exitNow(sig)
			return
		}
		m.stop(signalName(sig))
	case syscall.SIGINT, syscall.SIGQUIT:
		if m.stopping {
			m.exitNow(sig)
			return
		}
		targets := []*child{m.serving, m.cand}
		sent := false
		for _, c := range targets {
			if c != nil && !c.reaped {
				m.signal(c.pid, sig)
				m.log.Info("signal forwarded", "event", "forward", "signal", signalName(sig), "child", c.pid)
				sent = true
			}
		}
		if !sent {
			m.stop(signalName(sig))
			return
		}
		m.forwarded = sig
	}
}

// exitNow ends every child at once (a second stop signal).
func (m *machine) exitNow(sig syscall.Signal) {
	m.log.Warn("second stop signal: killing the children without waiting for their drain", "event", "exit_now", "signal", signalName(sig))
	m.stopping, m.state = true, stateStopping
	for _, c := range m.children {
		if c.role == roleOld && !c.killed {
			c.killWhy = killedStop
		}
		m.kill(c)
	}
}

// stop begins the master's stop: the children get the stop signal and their drain
// timeout; an upgrade in progress is abandoned.
func (m *machine) stop(why string) {
	if m.stopping {
		return
	}
	m.stopping, m.state = true, stateStopping
	m.log.Info("stopping", "event", "stop", "why", why)
	if m.restartT != nil {
		m.restartT()
		m.restartT = nil
	}
	if m.exitFrom = m.serving; m.exitFrom == nil {
		m.exitFrom = m.cand
	}
	if up := m.up; up != nil {
		// The new child of an upgrade is killed: the serving one drains the sockets.
		m.up = nil
		c := m.cand
		m.cand = nil
		c.role, c.failCause, c.failReason = roleFailed, "abandoned", "abandoned: handover run is stopping"
		if r := c.rec; r != nil {
			r.To, r.Generation, r.End, r.Outcome, r.Reason, r.Error = c.pid, c.gen, time.Now(), "abandoned", "abandoned", "handover run is stopping"
			m.record(r)
			c.rec = nil
		}
		c.stopTimers()
		m.kill(c)
		m.log.Warn("upgrade abandoned: stopping", "event", "upgrade_failed", "cause", "abandoned", "child", c.pid)
		for _, w := range up.waiters {
			w <- result{err: "upgrade abandoned: handover run is stopping", stopping: true}
		}
	}
	for _, c := range []*child{m.serving, m.cand} {
		if c != nil {
			m.stopChild(c, m.cfg.StopSignal)
		}
	}
	m.sd("STOPPING=1\nSTATUS=" + m.statusLine())
}

// beginUpgrade starts an upgrade, or says why it cannot. reply, if not nil, gets the
// outcome.
func (m *machine) beginUpgrade(trigger string, reply chan<- result) {
	refuse := func(reason, msg string) {
		m.log.Warn("upgrade refused", "event", "upgrade_refused", "reason", reason, "trigger", trigger)
		if reply != nil {
			reply <- result{err: msg, stopping: reason == "stopping"}
		}
	}
	switch {
	case m.stopping:
		refuse("stopping", "upgrade refused: handover run is stopping")
		return
	case m.up != nil:
		refuse("in_progress", fmt.Sprintf("upgrade refused: one is already in progress (new child PID %d)", m.cand.pid))
		return
	case m.serving == nil:
		refuse("not_ready", "upgrade refused: no child is serving yet (the program is starting or restarting; see handover status)")
		return
	}
	m.log.Info("upgrade starting", "event", "upgrade_start", "trigger", trigger)
	now := time.Now()
	m.up = &upgrade{trigger: trigger, started: now, rec: &graceful.Upgrade{Trigger: trigger, Start: now, From: m.serving.pid, Generation: m.gen + 1}}
	if reply != nil {
		m.up.waiters = append(m.up.waiters, reply)
	}
	m.state = stateUpgrading
	m.sd("RELOADING=1\n" + sdnotify.MonotonicUsec() + "\nSTATUS=" + m.statusLine())
	if err := m.startCandidate(trigger, m.up.rec); err != nil {
		r := m.up.rec
		r.End, r.Outcome, r.Reason, r.Error = time.Now(), "failed", "start", err.Error()
		m.record(r)
		m.upgradeFailed("start", nil, err.Error())
	}
}

// upgradeFailed ends the upgrade in progress with an error; the serving child serves on.
func (m *machine) upgradeFailed(cause string, c *child, reason string) {
	up := m.up
	m.up = nil
	m.lastErr = reason
	short, _, _ := strings.Cut(reason, "; its last lines on stderr:")
	args := []any{"event", "upgrade_failed", "cause", cause, "err", firstLine(short)}
	if c != nil {
		args = append(args, "child", c.pid)
	}
	m.log.Warn("upgrade failed; the serving child serves on", args...)
	if m.serving != nil {
		m.state = stateServing
		m.sd("READY=1\nSTATUS=" + m.statusLine())
	} else {
		// The serving child died meanwhile: restart.
		m.scheduleRestart()
	}
	for _, w := range up.waiters {
		w <- result{err: "upgrade failed: " + reason}
	}
}

// candidateFailed handles a candidate that exited (or was killed and reaped) before it
// was ready.
func (m *machine) candidateFailed(c *child) {
	if n := m.leftovers(c.pid); n > 0 {
		m.log.Warn("killed what the failed child left behind", "event", "leftovers_killed", "child", c.pid, "leftovers", n)
	}
	cause, reason := c.failCause, c.failReason
	if cause == "" {
		cause, reason = "exited", fmt.Sprintf("exited before it was ready (%s)", describeStatus(c.status))
	}
	what := fmt.Sprintf("new child PID %d (%s, generation %d) %s", c.pid, c.exe, c.gen, reason)
	full := what + lastLines(c)
	if r := c.rec; r != nil {
		r.To, r.Generation, r.End, r.Outcome, r.Reason, r.Error, r.Stderr = c.pid, c.gen, time.Now(), "failed", cause, what, strings.Join(c.out.last(reportLines), "\n")
		if cause == "abandoned" {
			r.Outcome = "abandoned"
		}
		m.record(r)
		c.rec = nil
	}
	switch {
	case m.up != nil:
		m.upgradeFailed(cause, c, full)
	case m.stopping:
		// Abandoned, or stopped before it was ready: nothing to report.
	case !m.everReady:
		m.lastErr = full
		m.log.Error("the first child failed; exiting", "event", "start_failed", "cause", cause, "child", c.pid, "err", what)
		m.exitCode = 1
		m.stopping, m.state = true, stateStopping
	default:
		m.lastErr = full
		m.log.Warn("restart failed", "event", "restart_failed", "cause", cause, "child", c.pid, "err", what)
		m.scheduleRestart()
	}
}

// scheduleRestart starts a new child after the backoff delay.
func (m *machine) scheduleRestart() {
	if m.stopping || m.restartT != nil || m.cand != nil {
		return
	}
	m.state = stateStarting
	delay := m.backoff
	m.backoff = min(2*m.backoff, m.cfg.RestartDelayMax)
	m.restartT = m.after(delay, timerEvent{kind: timerRestart})
	m.log.Info("restart scheduled", "event", "restart_scheduled", "in", delay.String(), "restarts", m.restarts)
	m.sd("STATUS=" + m.statusLine())
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
		m.becomeReady(c, "delay")
	case timerDrain:
		if c.reaped {
			// The child exited; processes it started and left in its process group
			// (still serving on the sockets) get what it would have got.
			if n := m.leftovers(c.pid); n > 0 {
				m.log.Warn("drain deadline: killing what the child left behind", "event", "drain_deadline", "child", c.pid, "gen", c.gen, "leftovers", n)
			}
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
	case timerProbation:
		if c != m.serving || c.reaped || !c.onProbation {
			return
		}
		c.onProbation = false
		if c.build != m.lastGood {
			m.setLastGood(c.build)
			m.log.Info("the new build served its probation: it is the last good build", "event", "last_good", "child", c.pid, "gen", c.gen, "exe", c.build.String())
		}
	case timerRestart:
		m.restartT = nil
		if m.stopping || m.cand != nil {
			return
		}
		m.restarts++
		if err := m.startCandidate(triggerRestart, nil); err != nil {
			m.lastErr = err.Error()
			m.log.Warn("restart failed", "event", "restart_failed", "cause", "start", "err", err)
			m.scheduleRestart()
		}
	}
}

// onReaped records a child's exit; it is handled once its output has settled. Other
// processes (orphans reparented to the master) are only logged.
func (m *machine) onReaped(pid int, ws syscall.WaitStatus) {
	c := m.children[pid]
	if c == nil {
		m.log.Info("reaped an orphan", "event", "orphan_reaped", "child", pid, "status", describeStatus(ws))
		return
	}
	c.reaped, c.status, c.reapedAt = true, ws, time.Now()
	if c.role != roleOld {
		// (A stopped child's drain deadline stays: it also ends what the child left.)
		c.stopTimers()
	}
	m.settle(c)
}

// onGone handles the exit of child c.
func (m *machine) onGone(c *child) {
	delete(m.children, c.pid)
	defer m.drop(c.build)
	if r := c.drainRec; r != nil && c.role == roleOld {
		r.Drained, r.DrainSeconds, r.DrainKilled = true, c.reapedAt.Sub(c.stoppedAt).Seconds(), c.killWhy
	}
	level := slog.LevelInfo
	if c.role == roleServing || c.role == roleCandidate && !m.stopping {
		level = slog.LevelWarn
	}
	m.log.Log(context.Background(), level, "child exited", "event", "child_exited", "child", c.pid, "gen", c.gen, "role", c.role.String(), "status", describeStatus(c.status), "code", exitCode(c.status))
	if m.stopping && c == m.exitFrom {
		m.exitFrom = nil
		m.exitCode = exitCode(c.status)
	}
	switch {
	case c == m.cand:
		m.cand = nil
		m.candidateFailed(c)
	case c.role == roleFailed:
		m.candidateFailed(c)
	case c == m.serving:
		m.serving = nil
		switch {
		case m.stopping:
		case m.forwarded != 0:
			// The child ended after a forwarded SIGINT/SIGQUIT: so does the master.
			m.stop("child exited after " + signalName(m.forwarded))
			m.exitFrom, m.exitCode = nil, exitCode(c.status)
		case c.onProbation:
			m.upgradeDied(c)
		default:
			m.lastErr = fmt.Sprintf("child PID %d (generation %d) exited while serving (%s)", c.pid, c.gen, describeStatus(c.status)) + lastLines(c)
			if time.Since(c.readyAt) >= stableAfter {
				m.backoff = m.cfg.RestartDelay
			}
			if m.up == nil {
				m.scheduleRestart()
			}
			// During an upgrade, the new child takes over when ready (or a restart
			// follows its failure).
		}
	}
}

// upgradeDied handles the exit of c, a new build's child, during its probation: its
// upgrade died. The last good build is started in its place, at once; the bad build
// is not started again (the next upgrade the operator asks for is a normal one).
func (m *machine) upgradeDied(c *child) {
	c.onProbation = false
	after := c.reapedAt.Sub(c.readyAt).Round(time.Millisecond)
	what := fmt.Sprintf("new child PID %d (%s, generation %d) died %s after taking over (%s)", c.pid, c.build, c.gen, after, describeStatus(c.status))
	good := "no last good build is kept"
	if m.lastGood != nil {
		good = "the last good build (" + m.lastGood.String() + ") is started again"
	}
	m.lastErr = what + "; " + good + lastLines(c)
	if r := c.rec; r != nil {
		r.Outcome, r.Reason, r.Error, r.Stderr = "died", "died", what, strings.Join(c.out.last(reportLines), "\n")
	}
	m.log.Error("the new child died after taking over; starting the last good build", "event", "upgrade_died",
		"child", c.pid, "gen", c.gen, "after", after.String(), "status", describeStatus(c.status), "last_good", fmt.Sprint(m.lastGood))
	for _, w := range c.waiters {
		w <- result{err: m.lastErr}
	}
	c.waiters = nil
	if m.up != nil {
		// Another upgrade is under way: its new child takes over when ready (or a
		// restart, from the last good build, follows its failure).
		m.sd("STATUS=" + m.statusLine())
		return
	}
	m.startReplacement(c)
}

// startReplacement starts the last good build for dead, a child that died after
// taking over; should that fail, restarts follow with backoff.
func (m *machine) startReplacement(dead *child) {
	if m.stopping || m.restartT != nil || m.cand != nil {
		return
	}
	m.state = stateStarting
	now := time.Now()
	rec := &graceful.Upgrade{Trigger: triggerReplacement, Start: now, From: dead.pid, Generation: m.gen + 1}
	if err := m.startCandidate(triggerReplacement, rec); err != nil {
		rec.End, rec.Outcome, rec.Reason, rec.Error = time.Now(), "failed", "start", err.Error()
		m.record(rec)
		m.lastErr = err.Error()
		m.log.Warn("restart failed", "event", "restart_failed", "cause", "start", "err", err)
		m.scheduleRestart()
		return
	}
	m.sd("STATUS=" + m.statusLine())
}

// onNotify handles an sd_notify datagram from a child (or a process it started).
func (m *machine) onNotify(ev notifyEvent) {
	var c *child
	for _, pid := range ev.pids {
		if c = m.children[pid]; c != nil {
			break
		}
	}
	if c == nil {
		m.log.Debug("notification from a process that is not a child", "event", "notify_ignored", "sender", ev.pids[0])
		return
	}
	if ev.fds > 0 {
		m.log.Warn("a child sent descriptors (FDSTORE=1); handover run has no fd store: closed", "event", "fdstore_ignored", "child", c.pid, "count", ev.fds)
	}
	ready := false
	for _, f := range ev.fields {
		switch f.Key {
		case "READY":
			ready = ready || f.Value == "1"
		case "STATUS":
			c.text = f.Value
			if c == m.serving {
				m.sd("STATUS=" + m.statusLine())
			}
		case "RELOADING":
			if f.Value == "1" && c == m.serving && m.up == nil {
				c.reloading = true
				m.log.Info("the child is reloading", "event", "child_reloading", "child", c.pid)
				m.sd("RELOADING=1\n" + sdnotify.MonotonicUsec())
			}
		case "STOPPING":
			if f.Value == "1" && !c.stopSent && !m.stopping {
				m.log.Warn("the child says it is stopping, unasked", "event", "child_stopping", "child", c.pid, "gen", c.gen)
			}
		case "WATCHDOG":
			if f.Value == "1" {
				c.lastPing = time.Now()
				if c == m.serving && m.watchdog {
					m.sd("WATCHDOG=1")
				}
			}
		case "MAINPID":
			if f.Value != strconv.Itoa(c.pid) {
				m.log.Debug("MAINPID from a child ignored: the master is the main process", "event", "mainpid_ignored", "child", c.pid, "mainpid", f.Value)
			}
		case "ERRNO":
			m.log.Warn("the child reports an error", "event", "child_errno", "child", c.pid, "errno", f.Value)
		}
	}
	if !ready {
		return
	}
	switch {
	case c == m.cand && !c.killed && !c.reaped && !m.stopping:
		// (A child that said READY=1 and died before this was read is not ready: its
		// exit is being handled.)
		m.becomeReady(c, "notify")
	case c == m.serving && c.reloading:
		c.reloading = false
		if m.up == nil {
			m.sd("READY=1\nSTATUS=" + m.statusLine())
		}
	}
}

// status is what handover status shows.
func (m *machine) status() graceful.Status {
	st := graceful.Status{
		PID:        m.pid,
		Generation: m.gen,
		State:      m.state,
		Executable: m.cfg.Prog,
		Systemd:    m.systemd,
		Listeners:  m.sockets,
		LastError:  m.lastErr,
		Restarts:   m.restarts,
	}
	if exe, err := m.resolve(m.cfg.Prog); err == nil {
		st.Executable = exe
	}
	if m.serving != nil {
		st.Child = m.serving.pid
		st.ChildExecutable = m.childExecutable()
	}
	if m.up != nil && m.cand != nil {
		st.Upgrading = m.cand.pid
	}
	for _, c := range m.children {
		if c.role == roleOld && c != m.serving {
			st.OlderDraining++
		}
	}
	for _, r := range m.records {
		st.Upgrades = append(st.Upgrades, *r)
	}
	return st
}

// childExecutable says what the serving child runs, and whether it is the last good
// build, for status.
func (m *machine) childExecutable() string {
	c := m.serving
	if c.build == nil {
		return ""
	}
	s := c.build.String()
	switch {
	case c.build == m.lastGood && c.build.replaced():
		s += " (the last good build, run from the descriptor the master keeps: the file now at " + c.build.exe + " is another)"
	case c.build == m.lastGood:
		s += " (the last good build)"
	case c.onProbation:
		s += fmt.Sprintf(" (a new build, on probation for %s; the last good build is %s)", m.probation(), m.lastGood)
	}
	return s
}

// statusLine is the one-line status for systemd (systemctl status).
func (m *machine) statusLine() string {
	var b strings.Builder
	switch m.state {
	case stateStarting:
		if m.cand != nil {
			fmt.Fprintf(&b, "starting: child PID %d, generation %d", m.cand.pid, m.cand.gen)
		} else {
			fmt.Fprintf(&b, "restarting (restart %d)", m.restarts+1)
		}
	case stateServing:
		fmt.Fprintf(&b, "serving: child PID %d, generation %d", m.serving.pid, m.serving.gen)
	case stateUpgrading:
		if m.cand != nil {
			fmt.Fprintf(&b, "upgrading: starting generation %d", m.gen+1)
		} else {
			b.WriteString("upgrading")
		}
		if m.serving != nil {
			fmt.Fprintf(&b, "; child PID %d, generation %d serving", m.serving.pid, m.serving.gen)
		}
	case stateStopping:
		fmt.Fprintf(&b, "stopping: %d children left", len(m.children))
	}
	if m.serving != nil && m.serving.text != "" && m.state == stateServing {
		fmt.Fprintf(&b, " (%s)", m.serving.text)
	}
	if m.restarts > 0 {
		fmt.Fprintf(&b, "; %d restarts", m.restarts)
	}
	if m.lastErr != "" {
		fmt.Fprintf(&b, "; last error: %s", firstLine(m.lastErr))
	}
	return strings.ReplaceAll(b.String(), "\n", " ")
}

// describeStatus says how a process exited: "exit status 1", "signal: killed".
func describeStatus(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// exitCode is the exit code a shell reports for ws: the status, or 128+signal.
func exitCode(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return 1
}

// lastLines quotes c's last stderr lines for a report ("" if it wrote none).
func lastLines(c *child) string {
	lines := c.out.last(reportLines)
	if len(lines) == 0 {
		return ""
	}
	return "; its last lines on stderr:\n  " + strings.Join(lines, "\n  ")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
