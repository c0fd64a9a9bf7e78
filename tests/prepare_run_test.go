package tests

// Two-phase upgrades under systemd and under `handover run` (see prepare_test.go).

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// TestSystemdPrepare: the demo under systemd (socket unit), `handover prepare` then
// `handover commit` under load: while prepared, MainPID is the old process and only
// it answers; the commit moves MainPID (the unit stays active, running) with no
// failed request. `systemctl reload` still upgrades in one step; an abort leaves the
// main process alone, and nothing else in the unit; systemd complains of nothing.
func TestSystemdPrepare(t *testing.T) {
	d := startSystemd(t, sdns.RequireInstalled(t), "", "")
	old := d.answer()
	h := cli(func(args ...string) (string, int) {
		t.Helper()
		out, code, err := d.sd.Exec(append([]string{filepath.Join(d.bin, "handover")}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out, code
	})
	status := func() (int, string, int) {
		if got := d.mainPID(); got != old {
			t.Errorf("MainPID=%d while prepared, want the old process %d", got, old)
		}
		st, err := d.status()
		if err != nil {
			t.Fatal(err)
		}
		return st.PID, st.State, st.Prepared
	}
	r := startLoad(t, d.addr, 0.5)
	next, at := prepareCommit(t, h, d.ctl, d.addr, old, status)
	d.checkState(next)
	after := openWindow(r, "the committed generation", next)
	after.close(t, r)
	out, code := d.reload()
	if code != 0 || d.mainPID() == next {
		t.Errorf("systemctl reload after the commit: exit %d, MainPID %d\n%s", code, d.mainPID(), out)
	}
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, []*window{after})
	noAnswerBefore(t, res, next, at)
	d.waitSingle(35 * time.Second)
	main := d.mainPID()
	h.step(t, "prepare", d.ctl)
	h.step(t, "abort", d.ctl)
	d.checkState(main)
	if ps := d.demoProcesses(); len(ps) != 1 {
		t.Errorf("after the abort: demo processes %s, want only the main one", describe(ps))
	}
	d.checkConsole()
}

// TestRunPrepare: the demo under `handover run`: prepare then commit under load
// (only the old child answers while the new one is prepared; no failed request);
// abort (the prepared child is killed and reaped: only the serving child is left).
// A child in another language (the Python server) is not prepared: prepare is
// refused with the reason, and nothing is started.
func TestRunPrepare(t *testing.T) {
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg)}})
	h := localCLI(t)
	old := m.status().Child
	status := func() (int, string, int) {
		st := m.status()
		if alive, _ := m.processes(); len(alive) != 2 || st.Child != old {
			t.Errorf("while prepared: the master's children %v, serving %d; want the old one serving beside the prepared one", alive, st.Child)
		}
		return st.Child, st.State, st.Prepared
	}
	r := startLoad(t, m.addr, 0.5)
	next, at := prepareCommit(t, h, m.ctl, m.addr, old, status)
	after := openWindow(r, "the committed child", next)
	after.close(t, r)
	res := r.Stop()
	checkLoad(t, res)
	checkWindows(t, res, []*window{after})
	noAnswerBefore(t, res, next, at)
	m.waitSettled(15 * time.Second)
	prepared := h.step(t, "prepare", m.ctl)
	if pid := h.step(t, "abort", m.ctl); pid != prepared {
		t.Errorf("handover abort: PID %d, prepared %d", pid, prepared)
	}
	if alive, zombies := m.processes(); len(alive) != 1 || len(zombies) != 0 || proc.State(prepared) != "" {
		t.Errorf("after the abort: alive %v, zombies %v, prepared pid %d %q", alive, zombies, prepared, proc.State(prepared))
	}
	if st := m.status(); st.Child != next || st.State != "serving" || st.Upgrades[len(st.Upgrades)-1].Outcome != "aborted" {
		t.Errorf("status after the abort: %+v", st)
	}
	checkStoppedClean(t, m)

	python := needTool(t, "python3", "/usr/bin/python3")
	py := startMaster(t, masterSpec{prog: []string{python, abs(t, pythonServer)}})
	out, code := h("prepare", "-control", py.ctl)
	if code != 1 || !strings.Contains(out, "cannot be prepared") || !strings.Contains(out, "handover reload") {
		t.Errorf("prepare of a Python child: exit %d: %s", code, out)
	}
	if alive, _ := py.processes(); len(alive) != 1 {
		t.Errorf("after the refused prepare: children %v", alive)
	}
	checkStoppedClean(t, py)
}

// TestRunPreparePID1: `handover run` as PID 1 of a PID namespace (a container's
// init): prepare, commit, then prepare and abort; no zombie is left, and the master
// stops cleanly.
func TestRunPreparePID1(t *testing.T) {
	m := startMaster(t, masterSpec{ns: true, prog: []string{proc.Binary(t, demoPkg)}})
	h := localCLI(t)
	old := m.status().Child
	next, _ := prepareCommit(t, h, m.ctl, m.addr, old, func() (int, string, int) {
		st := m.status()
		return st.Child, st.State, st.Prepared
	})
	if st := m.status(); st.PID != 1 || st.Child != next || st.Generation != 2 {
		t.Errorf("status after the commit: %+v", st)
	}
	m.waitSettled(15 * time.Second)
	h.step(t, "prepare", m.ctl)
	h.step(t, "abort", m.ctl)
	m.waitSettled(5 * time.Second)
	onlyOld(t, m.addr, next, 5)
	checkStoppedClean(t, m)
}
