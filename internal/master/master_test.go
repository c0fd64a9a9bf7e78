//go:build linux

package master

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

// The state machine driven by hand: fake processes, timers fired by the test,
// notifications to systemd recorded. Real processes are in tests/run_test.go.

type sent struct {
	pid int
	sig syscall.Signal
}

type timer struct {
	d       time.Duration
	ev      event
	stopped bool
}

type fakeMaster struct {
	t       *testing.T
	m       *machine
	nextPID int
	signals []sent
	timers  []*timer
	sd      []string
	missing bool // resolve fails
	// leftovers asked for (for a child's PID; 0 at the master's end), and the
	// orphans the machine sees
	leftoverCalls []int
	orphanPIDs    []int
	failRun       bool // spawn fails
	// ino is the inode of the file at PROG's path (deploy changes it); opened counts
	// the builds opened.
	ino, opened uint64
	// args are the arguments a child started from disk gets (its resolved launch).
	args []string
}

func newFake(t *testing.T, mod func(*Config)) *fakeMaster {
	cfg := Config{Prog: "app", DrainTimeout: 30 * time.Second, UpgradeTimeout: 5 * time.Second,
		StopSignal: syscall.SIGTERM, RestartDelay: 100 * time.Millisecond, RestartDelayMax: 400 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	f := &fakeMaster{t: t, nextPID: 100, ino: 1}
	m := newMachine(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.pid = 1
	m.spawn = func(c *child) error {
		if f.failRun {
			return errors.New("fork failed")
		}
		f.nextPID++
		c.pid = f.nextPID
		c.out = proc.NewTail()
		return nil
	}
	m.signal = func(c *child, sig syscall.Signal, group bool) error {
		pid := c.pid
		if group {
			pid = -pid
		}
		f.signals = append(f.signals, sent{pid, sig})
		return nil
	}
	m.after = func(d time.Duration, ev event) func() bool {
		tm := &timer{d: d, ev: ev}
		f.timers = append(f.timers, tm)
		return func() bool { was := !tm.stopped; tm.stopped = true; return was }
	}
	m.settle = func(c *child) { f.m.handle(goneEvent{c}) }
	m.resolve = func(prog string) (string, error) {
		if f.missing {
			return "", errors.New("program app does not exist")
		}
		return "/bin/" + prog, nil
	}
	m.open = func(path string) (*build, error) {
		f.opened++
		return &build{path: path, exe: path, dev: 1, ino: f.ino}, nil
	}
	m.ran = func(*build, int) *build { return nil }
	m.launch = func(*build) launch { return launch{args: f.args} }
	m.sd = func(s string) { f.sd = append(f.sd, s) }
	m.leftovers = func(c *child) []int {
		pid := 0
		if c != nil {
			pid = c.pid
		}
		f.leftoverCalls = append(f.leftoverCalls, pid)
		return f.orphanPIDs
	}
	m.orphans = func() []int { return f.orphanPIDs }
	m.systemd = true
	f.m = m
	return f
}

// fire fires the pending timer of kind (for child c, or any) and fails if none.
func (f *fakeMaster) fire(kind timerKind, c *child) {
	f.t.Helper()
	for _, tm := range f.timers {
		ev := tm.ev.(timerEvent)
		if !tm.stopped && ev.kind == kind && (c == nil || ev.c == c) {
			tm.stopped = true
			f.m.handle(ev)
			return
		}
	}
	f.t.Fatalf("no pending timer of kind %d for %v", kind, c)
}

func (f *fakeMaster) pending(kind timerKind, c *child) *timer {
	for _, tm := range f.timers {
		ev := tm.ev.(timerEvent)
		if !tm.stopped && ev.kind == kind && ev.c == c {
			return tm
		}
	}
	return nil
}

func (f *fakeMaster) ready(c *child) {
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: []Field{{"READY", "1"}, {"MAINPID", "1"}}})
}

func (f *fakeMaster) exit(c *child, code int) {
	f.m.handle(reapedEvent{pid: c.pid, status: syscall.WaitStatus(code << 8)})
}

func (f *fakeMaster) killedBy(c *child, sig syscall.Signal) {
	f.m.handle(reapedEvent{pid: c.pid, status: syscall.WaitStatus(sig)})
}

func (f *fakeMaster) signaled(pid int, sig syscall.Signal) bool {
	for _, s := range f.signals {
		if s.pid == pid && s.sig == sig {
			return true
		}
	}
	return false
}

// errText is err's text, "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (f *fakeMaster) lastSD() string {
	if len(f.sd) == 0 {
		return ""
	}
	return f.sd[len(f.sd)-1]
}

func (f *fakeMaster) upgrade() chan control.Outcome {
	ch := make(chan control.Outcome, 1)
	f.m.handle(upgradeRequest{trigger: "test", reply: ch})
	return ch
}

func (f *fakeMaster) st() wire.Status {
	ch := make(chan wire.Status, 1)
	f.m.handle(statusRequest{reply: ch})
	return <-ch
}

// serving starts the machine and makes its first child ready.
func (f *fakeMaster) serving() *child {
	f.t.Helper()
	if !f.m.begin() {
		f.t.Fatal("begin failed")
	}
	c := f.m.cand
	f.ready(c)
	if f.m.serving != c || f.m.state != stateServing {
		f.t.Fatalf("after READY=1: serving %v, state %s", f.m.serving, f.m.state)
	}
	return c
}

func TestMachineFirstStart(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	if !strings.HasPrefix(f.sd[0], "READY=1\nMAINPID=1\nSTATUS=serving: child PID 101, generation 1") {
		t.Errorf("systemd was told %q", f.sd)
	}
	st := f.st()
	if st.PID != 1 || st.Child != c.pid || st.Generation != 1 || st.State != "serving" || st.Executable != "/bin/app" || !st.Systemd {
		t.Errorf("status %+v", st)
	}
	if f.pending(timerReadyTimeout, c) != nil {
		t.Errorf("the ready timeout is still pending once ready")
	}
}

func TestMachineUpgrade(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	if f.m.state != stateUpgrading || !strings.HasPrefix(f.lastSD(), "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("state %s, systemd told %q", f.m.state, f.lastSD())
	}
	cand := f.m.cand
	if st := f.st(); st.Upgrading != cand.pid || st.Child != old.pid || st.State != "upgrading" {
		t.Errorf("status during the upgrade: %+v", st)
	}
	// A second request while one runs is refused.
	second := f.upgrade()
	if r := <-second; !strings.Contains(errText(r.Err), "in progress") {
		t.Errorf("second upgrade: %+v", r)
	}
	// A notification from a process the candidate started counts as the candidate's:
	// its ancestors are looked up, as they are not for a child's own (the
	// candidate's STATUS).
	var asked []int
	f.m.ancestors = func(pid int) []int {
		asked = append(asked, pid)
		return []int{pid, cand.pid}
	}
	f.m.handle(notifyEvent{pids: []int{cand.pid}, fields: []Field{{"STATUS", "starting"}}})
	f.m.handle(notifyEvent{pids: []int{999}, fields: []Field{{"READY", "1"}}})
	if !slices.Equal(asked, []int{999}) {
		t.Errorf("the ancestors of %v were looked up; want those of the helper 999 only", asked)
	}
	r := <-reply
	if r.Err != nil || r.PID != cand.pid || r.Generation != 2 {
		t.Errorf("upgrade result %+v", r)
	}
	if !f.signaled(old.pid, syscall.SIGTERM) || f.pending(timerDrain, old) == nil {
		t.Errorf("the old child was not stopped with a drain deadline: %v", f.signals)
	}
	if !strings.HasPrefix(f.lastSD(), "READY=1\nSTATUS=serving: child PID 102, generation 2") {
		t.Errorf("systemd told %q", f.lastSD())
	}
	// The old child does not drain in time: SIGKILL to its process group.
	f.fire(timerDrain, old)
	if !f.signaled(-old.pid, syscall.SIGKILL) {
		t.Errorf("no SIGKILL at the drain deadline: %v", f.signals)
	}
	f.killedBy(old, syscall.SIGKILL)
	if f.m.serving != cand || len(f.m.children) != 1 || f.st().LastError != "" {
		t.Errorf("after the old child's exit: serving %v, children %v", f.m.serving, f.m.children)
	}
}

func TestMachineUpgradeChildExits(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	cand := f.m.cand
	cand.out.Add("config error: no such key\n")
	f.exit(cand, 1)
	r := <-reply
	if !strings.Contains(errText(r.Err), "exited before it was ready (exit status 1)") || !strings.Contains(errText(r.Err), "config error: no such key") {
		t.Errorf("result %v: want the exit status and the last stderr line", r.Err)
	}
	// The failure stays a value until printed: its cause, its message, its lines.
	var pf *proc.Failure
	if !errors.As(r.Err, &pf) || pf.Cause != "exited" || strings.Contains(pf.Err.Error(), "config error") || !slices.Equal(pf.Stderr, []string{"config error: no such key"}) || f.m.lastErr != error(pf) {
		t.Errorf("the failure %#v (last error %v): want cause exited, the message, and the stderr line apart", pf, f.m.lastErr)
	}
	if rec := f.record(0); rec.Outcome != "failed" || rec.Reason != "exited" || rec.Error != pf.Err.Error() || rec.Stderr != "config error: no such key" {
		t.Errorf("the failed upgrade's record: %+v", rec)
	}
	st := f.st()
	if st.State != "serving" || st.Child != old.pid || st.Generation != 1 || st.LastError != pf.Error() || st.Upgrading != 0 {
		t.Errorf("status after the failure: %+v", st)
	}
	if f.signaled(old.pid, syscall.SIGTERM) {
		t.Errorf("the serving child was stopped")
	}
	if !strings.HasPrefix(f.lastSD(), "READY=1") {
		t.Errorf("systemd not told READY=1 after the failed upgrade: %q", f.lastSD())
	}
	// The next upgrade works, and clears the error.
	reply = f.upgrade()
	f.ready(f.m.cand)
	if r := <-reply; r.Err != nil || r.Generation != 2 || f.st().LastError != "" {
		t.Errorf("the next upgrade: %+v, status %+v", r, f.st())
	}
}

func TestMachineUpgradeTimeout(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	cand := f.m.cand
	f.fire(timerReadyTimeout, cand)
	if !f.signaled(-cand.pid, syscall.SIGKILL) {
		t.Fatalf("the hanging child was not killed: %v", f.signals)
	}
	select {
	case r := <-reply:
		t.Fatalf("answered before the child was reaped: %+v", r)
	default:
	}
	f.killedBy(cand, syscall.SIGKILL)
	r := <-reply
	if !strings.Contains(errText(r.Err), "was not ready within 5s") {
		t.Errorf("result %v", r.Err)
	}
	if f.m.serving != old || f.m.state != stateServing || len(f.m.children) != 1 {
		t.Errorf("after the timeout: serving %v state %s children %d", f.m.serving, f.m.state, len(f.m.children))
	}
}

func TestMachineUpgradeMissingProgram(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	f.missing = true
	r := <-f.upgrade()
	if !strings.Contains(errText(r.Err), "does not exist") || f.m.serving != old || f.m.state != stateServing || f.m.up != nil {
		t.Errorf("result %+v, state %s", r, f.m.state)
	}
	if !strings.HasPrefix(f.lastSD(), "READY=1") {
		t.Errorf("systemd left reloading: %q", f.sd)
	}
}

func TestMachineReadyAfter(t *testing.T) {
	f := newFake(t, func(c *Config) { c.ReadyAfter = time.Second })
	f.m.begin()
	c := f.m.cand
	f.fire(timerReadyAfter, c)
	if f.m.serving != c {
		t.Fatalf("not serving after the ready delay")
	}
	// A crashed child's replacement that never notifies is ready after the delay too.
	f.exit(c, 2)
	f.fire(timerRestart, nil)
	f.fire(timerReadyAfter, f.m.cand)
	if f.m.serving == nil || f.m.serving.gen != 2 {
		t.Errorf("the restarted child is not serving: %+v", f.m.serving)
	}
}

func TestMachineCrashRestart(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	f.exit(c, 2)
	if f.m.state != stateStarting || f.m.serving != nil {
		t.Fatalf("after the crash: state %s", f.m.state)
	}
	if tm := f.timers[len(f.timers)-1]; tm.ev.(timerEvent).kind != timerRestart || tm.d != 100*time.Millisecond {
		t.Fatalf("restart not scheduled after 100ms: %+v", tm)
	}
	if st := f.st(); !strings.Contains(st.LastError, "exited while serving (exit status 2)") {
		t.Errorf("last error %q", st.LastError)
	}
	// Upgrades wait for a serving child.
	if r := <-f.upgrade(); !strings.Contains(errText(r.Err), "no child is serving") {
		t.Errorf("upgrade while restarting: %+v", r)
	}
	f.fire(timerRestart, nil)
	// The restart fails (exits before ready): the backoff doubles, then is capped.
	var delays []time.Duration
	for i := 0; i < 3; i++ {
		f.exit(f.m.cand, 1)
		tm := f.timers[len(f.timers)-1]
		delays = append(delays, tm.d)
		f.fire(timerRestart, nil)
	}
	if delays[0] != 200*time.Millisecond || delays[1] != 400*time.Millisecond || delays[2] != 400*time.Millisecond {
		t.Errorf("backoff %v, want 200ms 400ms 400ms", delays)
	}
	f.ready(f.m.cand)
	st := f.st()
	if st.Restarts != 4 || st.State != "serving" || st.Generation != 2 || st.Child != f.m.serving.pid {
		t.Errorf("status after the restarts: %+v", st)
	}
	// A restart runs the last good build, kept open: a program gone from disk
	// does not matter, and nothing is opened from disk.
	f.missing = true
	opened := f.opened
	f.exit(f.m.serving, 1)
	f.fire(timerRestart, nil)
	if c := f.m.cand; c == nil || !c.kept || c.build != f.m.lastGood || f.opened != opened {
		t.Errorf("a restart with the program missing on disk: cand %+v, opened %d builds", c, f.opened-opened)
	}
}

func TestMachineStop(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	f.m.handle(sigEvent{syscall.SIGTERM})
	if !f.signaled(c.pid, syscall.SIGTERM) || !strings.HasPrefix(f.lastSD(), "STOPPING=1") || f.m.done {
		t.Fatalf("signals %v, sd %q, done %v", f.signals, f.lastSD(), f.m.done)
	}
	if r := <-f.upgrade(); !r.Stopping {
		t.Errorf("an upgrade while stopping: %+v", r)
	}
	f.exit(c, 0)
	if !f.m.done || f.m.exitCode != 0 {
		t.Errorf("done %v, exit code %d", f.m.done, f.m.exitCode)
	}
}

func TestMachineStopExitCode(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	f.m.handle(sigEvent{syscall.SIGTERM})
	f.fire(timerDrain, c)
	f.killedBy(c, syscall.SIGKILL)
	if !f.m.done || f.m.exitCode != 137 {
		t.Errorf("done %v, exit code %d; want 137 (killed at the drain deadline)", f.m.done, f.m.exitCode)
	}
}

func TestMachineStopDuringUpgrade(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	cand := f.m.cand
	f.m.handle(sigEvent{syscall.SIGTERM})
	if r := <-reply; !r.Stopping || r.Err == nil {
		t.Errorf("upgrade result %+v; want abandoned, stopping", r)
	}
	if !f.signaled(-cand.pid, syscall.SIGKILL) || !f.signaled(old.pid, syscall.SIGTERM) {
		t.Errorf("signals %v: want the new child killed, the old one stopped", f.signals)
	}
	// A late READY=1 from the abandoned child changes nothing.
	f.ready(cand)
	if f.m.serving != old {
		t.Errorf("the abandoned child became serving")
	}
	f.killedBy(cand, syscall.SIGKILL)
	if f.m.done {
		t.Fatalf("done before the serving child exited")
	}
	f.exit(old, 0)
	if !f.m.done || f.m.exitCode != 0 {
		t.Errorf("done %v, code %d", f.m.done, f.m.exitCode)
	}
}

func TestMachineSecondSIGTERM(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	f.m.handle(sigEvent{syscall.SIGTERM})
	f.m.handle(sigEvent{syscall.SIGTERM})
	if !f.signaled(-c.pid, syscall.SIGKILL) {
		t.Errorf("second SIGTERM: %v", f.signals)
	}
}

func TestMachineForwardedSIGINT(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	f.m.handle(sigEvent{syscall.SIGINT})
	if !f.signaled(c.pid, syscall.SIGINT) || f.m.stopping {
		t.Fatalf("SIGINT: signals %v, stopping %v", f.signals, f.m.stopping)
	}
	f.killedBy(c, syscall.SIGINT)
	if !f.m.done || f.m.exitCode != 130 || f.pending(timerRestart, nil) != nil {
		t.Errorf("after the child's exit: done %v, code %d", f.m.done, f.m.exitCode)
	}
}

func TestMachineSIGQUITNoChildExit(t *testing.T) {
	// A child that survives a forwarded SIGQUIT (a thread dump) goes on serving.
	f := newFake(t, nil)
	c := f.serving()
	f.m.handle(sigEvent{syscall.SIGQUIT})
	if !f.signaled(c.pid, syscall.SIGQUIT) || f.m.stopping || f.m.serving != c {
		t.Errorf("signals %v, stopping %v", f.signals, f.m.stopping)
	}
	// SIGHUP still upgrades.
	f.m.handle(sigEvent{syscall.SIGHUP})
	if f.m.state != stateUpgrading {
		t.Errorf("SIGHUP: state %s", f.m.state)
	}
}

func TestMachineFirstChildFails(t *testing.T) {
	f := newFake(t, nil)
	f.m.begin()
	f.exit(f.m.cand, 3)
	if !f.m.done || f.m.exitCode != 1 || !strings.Contains(errText(f.m.lastErr), "exit status 3") {
		t.Errorf("done %v, code %d, err %v", f.m.done, f.m.exitCode, f.m.lastErr)
	}

	f = newFake(t, nil)
	f.m.begin()
	f.fire(timerReadyTimeout, f.m.cand)
	f.killedBy(f.m.cand, syscall.SIGKILL)
	if !f.m.done || f.m.exitCode != 1 || !strings.Contains(errText(f.m.lastErr), "-ready-after") {
		t.Errorf("timeout: done %v, code %d, err %v", f.m.done, f.m.exitCode, f.m.lastErr)
	}

	f = newFake(t, nil)
	f.missing = true
	if f.m.begin() || !f.m.done || f.m.exitCode != 1 {
		t.Errorf("missing program: done %v code %d", f.m.done, f.m.exitCode)
	}
}

func TestMachineCrashDuringUpgrade(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	f.exit(old, 2)
	if f.pending(timerRestart, nil) != nil || f.m.state != stateUpgrading {
		t.Fatalf("a restart was scheduled while a new child starts (state %s)", f.m.state)
	}
	f.ready(f.m.cand)
	if r := <-reply; r.Err != nil || f.m.serving == nil {
		t.Errorf("upgrade %+v", r)
	}

	// The same, but the new child fails too: a restart follows.
	f = newFake(t, nil)
	old = f.serving()
	reply = f.upgrade()
	f.exit(old, 2)
	f.exit(f.m.cand, 1)
	if r := <-reply; r.Err == nil {
		t.Errorf("upgrade succeeded")
	}
	if f.pending(timerRestart, nil) == nil || f.m.state != stateStarting {
		t.Errorf("no restart after both failed (state %s)", f.m.state)
	}
}

func TestMachineNotifyForwarding(t *testing.T) {
	f := newFake(t, nil)
	f.m.watchdog = true
	c := f.serving()
	n := len(f.sd)
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: []Field{{"STATUS", "3 clients"}}})
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: []Field{{"WATCHDOG", "1"}}})
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: []Field{{"RELOADING", "1"}, {"MONOTONIC_USEC", "1"}}})
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: []Field{{"READY", "1"}}})
	f.m.handle(notifyEvent{pids: []int{4242}, fields: []Field{{"READY", "1"}}}) // not a child
	got := f.sd[n:]
	if len(got) != 4 || !strings.Contains(got[0], "(3 clients)") || got[1] != "WATCHDOG=1" ||
		!strings.HasPrefix(got[2], "RELOADING=1\nMONOTONIC_USEC=") || !strings.HasPrefix(got[3], "READY=1") {
		t.Errorf("forwarded %q", got)
	}
}

func TestMachineOrphans(t *testing.T) {
	f := newFake(t, nil)
	f.serving()
	f.m.handle(reapedEvent{pid: 5555, status: 0}) // reparented to the master: only logged
	if len(f.m.children) != 1 || f.m.serving == nil {
		t.Errorf("an orphan's exit changed the state")
	}
}

func TestMachineReadyThenDead(t *testing.T) {
	// READY=1 read after the child's exit was collected: not ready, a failed upgrade.
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	cand := f.m.cand
	f.m.settle = func(*child) {} // the exit's output has not settled yet
	f.exit(cand, 0)
	f.ready(cand)
	if f.m.serving != old {
		t.Fatalf("a dead child became the serving one")
	}
	f.m.handle(goneEvent{cand})
	if r := <-reply; r.Err == nil {
		t.Errorf("the upgrade succeeded")
	}
}

func TestMachineLeftovers(t *testing.T) {
	// A failed new child's process group is cleared at once; an old child's at its
	// drain deadline, even after it exited.
	f := newFake(t, nil)
	old := f.serving()
	reply := f.upgrade()
	bad := f.m.cand
	f.exit(bad, 1)
	<-reply
	if !slices.Contains(f.leftoverCalls, bad.pid) {
		t.Errorf("the failed child's group was not cleared: %v", f.leftoverCalls)
	}
	reply = f.upgrade()
	f.ready(f.m.cand)
	<-reply
	f.exit(old, 0)
	if slices.Contains(f.leftoverCalls, old.pid) {
		t.Errorf("the old child's group was cleared before its drain deadline")
	}
	f.fire(timerDrain, old)
	if !slices.Contains(f.leftoverCalls, old.pid) {
		t.Errorf("the old child's group was not cleared at its drain deadline: %v", f.leftoverCalls)
	}

	// Stopping: processes left under the master are killed before it exits.
	f.orphanPIDs = []int{777}
	f.m.handle(sigEvent{syscall.SIGTERM})
	f.exit(f.m.serving, 0)
	if f.m.done || !slices.Contains(f.leftoverCalls, 0) {
		t.Fatalf("done %v, leftovers killed for %v: want the leftover killed first", f.m.done, f.leftoverCalls)
	}
	f.orphanPIDs = nil
	f.m.handle(reapedEvent{pid: 777})
	if !f.m.done || f.m.exitCode != 0 {
		t.Errorf("done %v code %d once the leftover was reaped", f.m.done, f.m.exitCode)
	}
}

// deploy puts a new build at PROG's path (a new inode).
func (f *fakeMaster) deploy() { f.ino++ }

// upgradeTo runs an upgrade to a new build and makes its child ready; the old
// serving child is then draining.
func (f *fakeMaster) upgradeTo() (old, cur *child, reply chan control.Outcome) {
	f.t.Helper()
	old = f.m.serving
	f.deploy()
	reply = f.upgrade()
	cur = f.m.cand
	if cur == nil {
		f.t.Fatalf("no new child: %+v", <-reply)
	}
	f.ready(cur)
	return old, cur, reply
}

func (f *fakeMaster) record(i int) wire.Upgrade {
	f.t.Helper()
	ups := f.st().Upgrades
	if i < 0 {
		i += len(ups)
	}
	if i < 0 || i >= len(ups) {
		f.t.Fatalf("no upgrade record %d: %+v", i, ups)
	}
	return ups[i]
}

func TestMachineUpgradeDied(t *testing.T) {
	// A new build takes over and dies during its probation while the old child drains:
	// the last good build (the old child's, kept open) is started at once, not the
	// file on disk; the upgrade's record says died; the next upgrade is from disk.
	f := newFake(t, func(c *Config) { c.Settle = 3 * time.Second })
	first := f.serving()
	good := f.m.lastGood
	if good == nil || good != first.build || good.refs != 2 {
		t.Fatalf("last good build %+v after the first child, want its build held twice", good)
	}
	old, bad, reply := f.upgradeTo()
	if !bad.onProbation || f.m.lastGood != good || bad.build == good {
		t.Fatalf("the new build: probation %v, last good %v", bad.onProbation, f.m.lastGood)
	}
	if !f.signaled(old.pid, syscall.SIGTERM) {
		t.Fatalf("the old child was not stopped")
	}
	select {
	case r := <-reply:
		t.Fatalf("answered before the new child served -settle: %+v", r)
	default:
	}
	opened := f.opened
	bad.out.Add("panic: nil map\n")
	f.exit(bad, 2)
	r := <-reply
	if !strings.Contains(errText(r.Err), "died") || !strings.Contains(errText(r.Err), "after taking over (exit status 2)") || !strings.Contains(errText(r.Err), "panic: nil map") || !strings.Contains(errText(r.Err), "last good build") {
		t.Errorf("reload's answer %v: want the death, its status, the stderr and the last good build", r.Err)
	}
	repl := f.m.cand
	if repl == nil || !repl.kept || repl.build != good || repl.trigger != triggerReplacement || f.opened != opened {
		t.Fatalf("replacement %+v (opened %d from disk): want the last good build, kept", repl, f.opened-opened)
	}
	if f.pending(timerRestart, nil) != nil {
		t.Errorf("a replacement waits for the restart backoff")
	}
	died := f.record(-1)
	if died.Outcome != "died" || died.Reason != "died" || died.From != old.pid || died.To != bad.pid || died.Generation != 2 || died.Stderr != "panic: nil map" || died.Trigger != "test" {
		t.Errorf("the died upgrade's record %+v", died)
	}
	f.ready(repl)
	if f.m.serving != repl || repl.onProbation || f.m.lastGood != good {
		t.Errorf("the replacement is serving %v, on probation %v", f.m.serving == repl, repl.onProbation)
	}
	rr := f.record(-1)
	if rr.Trigger != "replacement" || rr.Outcome != "ok" || rr.From != bad.pid || rr.To != repl.pid || rr.Generation != 3 {
		t.Errorf("the replacement's record %+v", rr)
	}
	st := f.st()
	if st.Child != repl.pid || !strings.Contains(st.LastError, "died") || !strings.Contains(st.ChildExecutable, "the last good build") || st.OlderDraining != 1 {
		t.Errorf("status %+v", st)
	}
	// The old child finishes its drain: the died upgrade's record gets it.
	f.exit(old, 0)
	if d := f.record(0); !d.Drained || d.DrainKilled != "" || d.To != bad.pid {
		t.Errorf("drain not recorded on the died upgrade: %+v", d)
	}
	if bad.build.refs != 0 {
		t.Errorf("the bad build is still held (%d references)", bad.build.refs)
	}
	// The next upgrade resolves PROG on disk again.
	reply = f.upgrade()
	if c := f.m.cand; c == nil || c.kept || f.opened != opened+1 {
		t.Errorf("the next upgrade: %+v, %d opened", c, f.opened-opened)
	}
	f.ready(f.m.cand)
	f.fire(timerSettle, f.m.serving)
	if r := <-reply; r.Err != nil || r.PID != f.m.serving.pid {
		t.Errorf("the next upgrade's answer %+v", r)
	}
}

func TestMachineProbation(t *testing.T) {
	f := newFake(t, nil)
	first := f.serving()
	_, cur, reply := f.upgradeTo()
	if r := <-reply; r.Err != nil {
		t.Fatalf("without -settle the answer comes at takeover: %+v", r)
	}
	tm := f.pending(timerProbation, cur)
	if tm == nil || tm.d != probation {
		t.Fatalf("probation timer %+v", tm)
	}
	if !strings.Contains(f.st().ChildExecutable, "on probation") {
		t.Errorf("status during probation: %q", f.st().ChildExecutable)
	}
	f.fire(timerProbation, cur)
	if f.m.lastGood != cur.build || first.build.refs != 1 {
		t.Fatalf("after the probation: last good %v, the first build held %d times (by its draining child)", f.m.lastGood, first.build.refs)
	}
	f.exit(first, 0)
	if first.build.refs != 0 {
		t.Errorf("the first build is still held")
	}
	// A crash now: the restart runs the new build, the last good one, with backoff.
	f.exit(cur, 1)
	if f.m.cand != nil {
		t.Fatalf("a crash after the probation started something at once")
	}
	f.fire(timerRestart, nil)
	if c := f.m.cand; c == nil || !c.kept || c.build != cur.build || c.trigger != triggerRestart {
		t.Errorf("the restart: %+v", c)
	}
	for _, r := range f.st().Upgrades {
		if r.Outcome != "ok" {
			t.Errorf("a crash after the probation is recorded as %+v", r)
		}
	}
}

func TestMachineReplacedDuringProbation(t *testing.T) {
	// Back-to-back upgrades: a build replaced before the end of its probation is not
	// promoted; when the newest dies, the last good build is the first one.
	f := newFake(t, nil)
	first := f.serving()
	_, b1, _ := f.upgradeTo()
	_, b2, _ := f.upgradeTo()
	if b1.onProbation || f.pending(timerProbation, b1) != nil {
		t.Errorf("a replaced child is still on probation")
	}
	f.exit(b2, 1)
	if c := f.m.cand; c == nil || c.build != first.build {
		t.Errorf("replacement %+v, want the first build", c)
	}
}

func TestMachineSettle(t *testing.T) {
	f := newFake(t, func(c *Config) { c.Settle = 2 * time.Second })
	f.serving()
	_, cur, reply := f.upgradeTo()
	if tm := f.pending(timerProbation, cur); tm == nil || tm.d != probation {
		t.Errorf("probation %+v, want %s", tm, probation)
	}
	// Replaced by another upgrade before -settle: the first upgrade did not die.
	_, next, reply2 := f.upgradeTo()
	if r := <-reply; r.Err != nil || r.PID != cur.pid {
		t.Errorf("the replaced upgrade's answer %+v", r)
	}
	f.fire(timerSettle, next)
	if r := <-reply2; r.Err != nil || r.PID != next.pid {
		t.Errorf("answer %+v", r)
	}
	// A -settle longer than the probation extends it.
	f = newFake(t, func(c *Config) { c.Settle = time.Minute })
	f.serving()
	_, cur, _ = f.upgradeTo()
	if tm := f.pending(timerProbation, cur); tm == nil || tm.d != time.Minute {
		t.Errorf("probation %+v, want 1m", tm)
	}
}

func TestMachineMaxDraining(t *testing.T) {
	f := newFake(t, func(c *Config) { c.MaxDraining = 2 })
	first := f.serving()
	old1, _, _ := f.upgradeTo()
	old2, _, _ := f.upgradeTo()
	if f.signaled(-first.pid, syscall.SIGKILL) || f.st().OlderDraining != 2 {
		t.Fatalf("killed at 2 draining (max 2): %v; status %+v", f.signals, f.st())
	}
	old3, _, _ := f.upgradeTo()
	if old1 != first || !f.signaled(-old1.pid, syscall.SIGKILL) || f.signaled(-old2.pid, syscall.SIGKILL) || f.signaled(-old3.pid, syscall.SIGKILL) {
		t.Fatalf("3 draining, max 2: signals %v; want only the oldest (%d) killed", f.signals, old1.pid)
	}
	f.killedBy(old1, syscall.SIGKILL)
	if r := f.record(0); r.From != old1.pid || !r.Drained || r.DrainKilled != "max_draining" {
		t.Errorf("the killed child's drain: %+v", r)
	}
	if st := f.st(); st.OlderDraining != 2 {
		t.Errorf("older draining %d", st.OlderDraining)
	}
	// The drain deadline of another.
	f.fire(timerDrain, old2)
	f.killedBy(old2, syscall.SIGKILL)
	if r := f.record(1); r.From != old2.pid || r.DrainKilled != "deadline" {
		t.Errorf("killed at the deadline: %+v", r)
	}
	f.exit(old3, 0)
	if r := f.record(2); r.From != old3.pid || !r.Drained || r.DrainKilled != "" {
		t.Errorf("drained by itself: %+v", r)
	}
}

func TestMachineRecords(t *testing.T) {
	f := newFake(t, nil)
	old := f.serving()
	// failed (exited), failed (start), ok, abandoned; at most recordsKept kept.
	reply := f.upgrade()
	f.exit(f.m.cand, 1)
	<-reply
	f.missing = true
	<-f.upgrade()
	f.missing = false
	_, cur, _ := f.upgradeTo()
	f.exit(old, 0)
	reply = f.upgrade()
	f.m.handle(sigEvent{syscall.SIGTERM})
	<-reply
	ups := f.st().Upgrades
	var got []string
	for _, r := range ups {
		got = append(got, r.Outcome+"/"+r.Reason)
	}
	if want := []string{"failed/exited", "failed/start", "ok/", "abandoned/abandoned"}; !slices.Equal(got, want) {
		t.Fatalf("records %q, want %q", got, want)
	}
	if r := ups[2]; r.To != cur.pid || r.From != old.pid || r.HandoverSeconds < 0 || r.End.Before(r.Start) || !r.Drained || r.Generation != 2 {
		t.Errorf("the ok record %+v", r)
	}
	if r := ups[1]; r.To != 0 || !strings.Contains(r.Error, "does not exist") {
		t.Errorf("the start failure %+v", r)
	}

	f = newFake(t, nil)
	f.serving()
	for i := 0; i < recordsKept+3; i++ {
		_, _, reply := f.upgradeTo()
		<-reply
	}
	if ups := f.st().Upgrades; len(ups) != recordsKept || ups[len(ups)-1].Generation != recordsKept+4 {
		t.Errorf("%d records, last %+v", len(ups), ups[len(ups)-1])
	}
}

func TestMachineDiedDuringUpgrade(t *testing.T) {
	// A new build dies during its probation while the next upgrade is starting: that
	// upgrade's child takes over; if it fails, a restart runs the last good build.
	f := newFake(t, nil)
	first := f.serving()
	_, bad, _ := f.upgradeTo()
	f.deploy()
	reply := f.upgrade()
	f.exit(bad, 1)
	if f.m.cand == nil || f.m.cand.trigger != "test" || f.record(-1).Outcome != "died" {
		t.Fatalf("cand %+v, records %+v", f.m.cand, f.st().Upgrades)
	}
	f.exit(f.m.cand, 1)
	<-reply
	f.fire(timerRestart, nil)
	if c := f.m.cand; c == nil || c.build != first.build || !c.kept {
		t.Errorf("restart %+v, want the first build", c)
	}
}

func TestMachineSameBuildShared(t *testing.T) {
	// Upgrades to the file already running keep one descriptor.
	f := newFake(t, nil)
	first := f.serving()
	reply := f.upgrade()
	c := f.m.cand
	f.ready(c)
	<-reply
	if c.build != first.build || first.build.refs != 3 {
		t.Errorf("the same file opened twice is two builds (refs %d)", first.build.refs)
	}
}
