//go:build linux

package master

import (
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Two-phase upgrades driven by hand (see master_test.go). The commit pipe is a real
// pipe: the fake spawn keeps the child's end, as a child inherits it, and the test
// reads what the master wrote.

// newPrepareFake is newFake whose spawn keeps the read end of a prepared child's
// commit pipe (its name among the passed descriptors says which).
func newPrepareFake(t *testing.T) (*fakeMaster, map[int]*os.File) {
	f := newFake(t, func(c *Config) { c.PrepareTimeout = time.Minute })
	ends := map[int]*os.File{}
	spawn := f.m.spawn
	f.m.pipe = commitPipe
	f.m.spawn = func(c *child) error {
		if err := spawn(c); err != nil {
			return err
		}
		for _, s := range c.stored {
			if s.name == handoff.PrepareName {
				fd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
				if err != nil {
					return err
				}
				ends[c.pid] = os.NewFile(uintptr(fd), "commit-end")
				t.Cleanup(func() { ends[c.pid].Close() })
			}
		}
		return nil
	}
	return f, ends
}

func (f *fakeMaster) ask(req string) chan control.Outcome {
	ch := make(chan control.Outcome, 4)
	f.m.handle(upgradeRequest{trigger: "test", req: req, reply: ch})
	return ch
}

// notify sends a notification from c.
func (f *fakeMaster) notify(c *child, fields ...Field) {
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: fields})
}

// preparable starts the machine with a first child that says it can be prepared.
func (f *fakeMaster) preparable() *child {
	f.t.Helper()
	f.m.begin()
	c := f.m.cand
	f.notify(c, Field{"READY", "1"}, Field{handoff.NotifyField, handoff.CanPrepare})
	if f.m.serving != c || !c.canPrepare {
		f.t.Fatal("the first child does not serve, or cannot be prepared")
	}
	return c
}

// prepared runs a prepare up to the new child's READY=1: it is prepared.
func (f *fakeMaster) prepared(ends map[int]*os.File) *child {
	f.t.Helper()
	reply := f.ask(control.Prepare)
	cand := f.m.cand
	if ends[cand.pid] == nil || strings.HasPrefix(f.lastSD(), "RELOADING=1") {
		f.t.Fatalf("the prepared child got no commit pipe, or systemd heard RELOADING=1: %q", f.lastSD())
	}
	f.notify(cand, Field{"READY", "1"}, Field{handoff.NotifyField, handoff.Prepared})
	if r := <-reply; r.Err != nil || r.PID != cand.pid {
		f.t.Fatalf("prepare answered %+v", r)
	}
	return cand
}

// TestMachinePrepareCommit: a prepared child waits (the old one serves, gets no
// stop signal, and a plain upgrade is refused); the commit writes the commit line
// into its pipe and makes it the serving child, the old one drains.
func TestMachinePrepareCommit(t *testing.T) {
	f, ends := newPrepareFake(t)
	old := f.preparable()
	cand := f.prepared(ends)
	st := f.st()
	if st.State != statePrepared || st.Prepared != cand.pid || st.Upgrading != 0 || st.Child != old.pid || f.signaled(old.pid, syscall.SIGTERM) {
		t.Fatalf("status while prepared: %+v, signals %v", st, f.signals)
	}
	if f.pending(timerReadyTimeout, cand) != nil || f.pending(timerPrepare, cand) == nil {
		t.Fatal("while prepared: the ready timeout runs on, or no prepare timeout")
	}
	timers := len(f.timers)
	f.notify(cand, Field{"READY", "1"}, Field{handoff.NotifyField, handoff.Prepared}) // said again
	if len(f.timers) != timers || f.m.state != statePrepared {
		t.Fatal("a second READY=1 of the prepared child changed something")
	}
	if r := <-f.upgrade(); !strings.Contains(errText(r.Err), "prepared child") {
		t.Fatalf("upgrade while prepared: %+v", r)
	}
	reply := f.ask(control.Commit)
	b := make([]byte, len(handoff.CommitLine))
	if _, err := io.ReadFull(ends[cand.pid], b); err != nil || string(b) != handoff.CommitLine {
		t.Fatalf("the pipe says %q, %v", b, err)
	}
	if r := <-reply; r.Err != nil || r.PID != cand.pid || r.Generation != 2 {
		t.Fatalf("commit answered %+v", r)
	}
	if f.m.serving != cand || !f.signaled(old.pid, syscall.SIGTERM) || f.pending(timerPrepare, cand) != nil {
		t.Fatalf("after the commit: serving %v, signals %v", f.m.serving, f.signals)
	}
	if n := len(f.sd); n < 2 || !strings.HasPrefix(f.sd[n-2], "RELOADING=1") || !strings.HasPrefix(f.sd[n-1], "READY=1") {
		t.Fatalf("systemd heard %q", f.sd)
	}
	rec := f.record(0)
	if rec.Outcome != "ok" || rec.Prepared.IsZero() || rec.Committed.IsZero() || rec.Committed.Before(rec.Prepared) || rec.HandoverSeconds > rec.End.Sub(rec.Start).Seconds() {
		t.Fatalf("record %+v", rec)
	}
	if r := <-f.ask(control.Commit); !strings.Contains(errText(r.Err), "no prepared child") {
		t.Fatalf("a second commit: %+v", r)
	}
}

// TestMachinePrepareRefused: a serving child that never said it can be prepared (a
// program in another language) is not prepared; commit and abort need a prepared
// child.
func TestMachinePrepareRefused(t *testing.T) {
	f, _ := newPrepareFake(t)
	f.serving()
	if r := <-f.ask(control.Prepare); !strings.Contains(errText(r.Err), "cannot be prepared") || f.m.up != nil || f.m.cand != nil {
		t.Fatalf("prepare of a child that cannot be: %+v", r)
	}
	for _, req := range []string{control.Commit, control.Abort} {
		if r := <-f.ask(req); !strings.Contains(errText(r.Err), "no prepared child") {
			t.Fatalf("%s with nothing prepared: %+v", req, r)
		}
	}
}

// TestMachinePrepareAbort: an abort kills the prepared child's process group and is
// answered once it is reaped; the old child serves on, no error left.
func TestMachinePrepareAbort(t *testing.T) {
	f, ends := newPrepareFake(t)
	old := f.preparable()
	cand := f.prepared(ends)
	reply := f.ask(control.Abort)
	if !f.signaled(-cand.pid, syscall.SIGKILL) {
		t.Fatalf("not killed: %v", f.signals)
	}
	select {
	case r := <-reply:
		t.Fatalf("answered before the child was reaped: %+v", r)
	default:
	}
	f.killedBy(cand, syscall.SIGKILL)
	if r := <-reply; r.Err != nil || r.PID != cand.pid {
		t.Fatalf("abort answered %+v", r)
	}
	st := f.st()
	if st.State != stateServing || st.Child != old.pid || st.LastError != "" || st.Prepared != 0 {
		t.Fatalf("after the abort: %+v", st)
	}
	if rec := f.record(0); rec.Outcome != "aborted" || rec.Reason != causeAborted || rec.Prepared.IsZero() {
		t.Fatalf("record %+v", rec)
	}
	// The pipe's end is closed: the child, were it alive, would read EOF.
	if _, err := ends[cand.pid].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the pipe after the abort: %v", err)
	}
}

// TestMachinePrepareTimeout: a child prepared for longer than PrepareTimeout is
// aborted.
func TestMachinePrepareTimeout(t *testing.T) {
	f, ends := newPrepareFake(t)
	f.preparable()
	cand := f.prepared(ends)
	f.fire(timerPrepare, cand)
	f.killedBy(cand, syscall.SIGKILL)
	if rec := f.record(0); rec.Outcome != "aborted" || rec.Reason != causePrepareTimeout || !strings.Contains(f.st().LastError, "prepare timeout") {
		t.Fatalf("record %+v, status %+v", rec, f.st())
	}
}

// TestMachinePrepareNotWaiting: a new child that says READY=1 without waiting (the
// new build is not one of the library's) accepts already: it gets the stop signal,
// not the serving child, and its exit fails the prepare.
func TestMachinePrepareNotWaiting(t *testing.T) {
	f, _ := newPrepareFake(t)
	old := f.preparable()
	reply := f.ask(control.Prepare)
	cand := f.m.cand
	f.notify(cand, Field{"READY", "1"})
	if !f.signaled(cand.pid, syscall.SIGTERM) || f.signaled(old.pid, syscall.SIGTERM) || f.pending(timerDrain, cand) == nil || f.m.serving != old {
		t.Fatalf("signals %v, serving %v", f.signals, f.m.serving)
	}
	f.exit(cand, 0)
	if r := <-reply; !strings.Contains(errText(r.Err), "cannot be prepared") {
		t.Fatalf("prepare answered %+v", r)
	}
	if rec := f.record(0); rec.Outcome != "failed" || rec.Reason != causeCannotPrepare {
		t.Fatalf("record %+v", rec)
	}
}

// TestMachinePreparedReplacesDeadChild: the serving child exits while another is
// prepared: the prepared one is committed at once.
func TestMachinePreparedReplacesDeadChild(t *testing.T) {
	f, ends := newPrepareFake(t)
	old := f.preparable()
	cand := f.prepared(ends)
	f.exit(old, 1)
	if f.m.serving != cand || f.m.state != stateServing {
		t.Fatalf("serving %v, state %s", f.m.serving, f.m.state)
	}
	b := make([]byte, len(handoff.CommitLine))
	if _, err := io.ReadFull(ends[cand.pid], b); err != nil || string(b) != handoff.CommitLine {
		t.Fatalf("the pipe says %q, %v", b, err)
	}
}
