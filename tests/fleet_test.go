package tests

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// fleetScript is the orchestrator's two-phase upgrade deploy/README.md shows.
const fleetScript = "../deploy/fleet/upgrade.sh"

// runFleet runs the fleet script on the control sockets and returns its output and
// exit code.
func runFleet(t *testing.T, ctls []string) (string, int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{fleetScript}, ctls...)...)
	cmd.Env = cleanEnv("HANDOVER=" + proc.Binary(t, handoverPkg))
	return combined(t, cmd)
}

// TestFleet: three independent instances (three ports, three control sockets)
// upgraded by deploy/fleet/upgrade.sh: prepare everywhere, check, commit everywhere.
// Every instance then serves from its new generation (the old ones exit), and each
// record says when it switched: the spread of those moments across the instances is
// logged. Then a build that fails on one instance: the script aborts everywhere and
// exits 1; every instance serves on from the generation it had, and no prepared
// process is left.
func TestFleet(t *testing.T) {
	var demos []*demo
	var ctls []string
	for i := 0; i < 3; i++ {
		ctl := filepath.Join(t.TempDir(), "control.sock")
		demos = append(demos, startDemoSpec(t, demoSpec{control: ctl}))
		ctls = append(ctls, ctl)
	}
	out, code := runFleet(t, ctls)
	if code != 0 || strings.Count(out, "prepared: PID") != 3 || strings.Count(out, "committed: PID") != 3 {
		t.Fatalf("upgrade.sh: exit %d\n%s", code, out)
	}
	var switched []time.Time
	for i, d := range demos {
		st := fleetStatus(t, ctls[i])
		rec := st.Upgrades[len(st.Upgrades)-1]
		old := d.current()
		if st.PID == old || rec.From != old || rec.To != st.PID || rec.Outcome != "ok" || rec.Committed.IsZero() {
			t.Errorf("instance %d: status %+v; want a new generation, committed", i+1, st)
		}
		d.pids = append(d.pids, st.PID)
		waitAnsweredBy(t, d.addr, st.PID)
		if err := waitGone(old, d.drain); err != nil {
			t.Error(err)
		}
		switched = append(switched, rec.End)
	}
	slices.SortFunc(switched, func(a, b time.Time) int { return a.Compare(b) })
	t.Logf("the three instances switched within %v of each other", switched[2].Sub(switched[0]).Round(time.Microsecond))

	// One instance's new build exits before it is ready: abort everywhere.
	writeFile(t, demos[1].bin, []byte("#!/bin/sh\necho 'fatal: bad build' >&2\nexit 1\n"), 0o755)
	out, code = runFleet(t, ctls)
	if code != 1 || !strings.Contains(out, "fatal: bad build") || strings.Count(out, "aborted: PID") != 2 || strings.Contains(out, "committed") {
		t.Errorf("upgrade.sh with a bad build: exit %d\n%s", code, out)
	}
	for i, d := range demos {
		st := fleetStatus(t, ctls[i])
		if st.PID != d.current() || st.State != "serving" || len(proc.Children(st.PID)) != 0 {
			t.Errorf("instance %d after the aborts: %+v, children %v", i+1, st, proc.Children(st.PID))
		}
		onlyOld(t, d.addr, d.current(), 3)
		d.stop()
	}
}

func fleetStatus(t *testing.T, ctl string) graceful.Status {
	t.Helper()
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
