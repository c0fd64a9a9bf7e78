package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// TestUpgradeHistory: each generation hands the line's history to the next. After
// a failed upgrade and five good ones (each with a request in flight on the old
// generation: an event stream, which ends at its drain), `handover status -json`
// of the sixth generation lists the six upgrades in order: the failed one with its
// reason and the broken build's stderr, then five whose from/to PIDs are the
// generations seen, with sane times, and each old generation's drain (the stream
// answered after the handover), carried across the generations.
func TestUpgradeHistory(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	handover := proc.Binary(t, handoverPkg)
	start := time.Now()

	copyFile(t, buildVariant(t, "testdata/brokendemo", "crash"), d.bin, 0o755)
	if err := exec.Command(handover, "reload", "-control", ctl).Run(); err == nil {
		t.Fatal("the broken build's reload succeeded")
	}
	copyFile(t, d.good, d.bin, 0o755)
	for i := 0; i < 5; i++ {
		old := d.current()
		// An event stream: in flight until the old generation drains, however
		// long the reload takes.
		slow := slowOn(t, d.addr, old, "/events?n=600&interval=100", 70*time.Second)
		out, err := exec.Command(handover, "reload", "-control", ctl).CombinedOutput()
		if err != nil {
			t.Fatalf("reload %d: %v\n%s", i+1, err, out)
		}
		d.pids = append(d.pids, d.pidFromFile())
		if s := <-slow; s.err != nil || s.resp.PID() != old {
			t.Fatalf("slow request on %d: %v, from %d", old, s.err, respPID(s.resp))
		}
		if err := waitGone(old, 15*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	end := time.Now()
	// The last generation hears how its predecessor's drain went just before that
	// one exits; ask until it has.
	var st graceful.Status
	if err := proc.WaitFor(func() bool {
		var err error
		st, err = ctlStatus(t, ctl)
		return err == nil && len(st.Upgrades) == 6 && st.Upgrades[5].Drained
	}, 10*time.Second, "the last drain to be recorded"); err != nil {
		t.Fatalf("%v: %+v", err, st.Upgrades)
	}
	if st.PID != d.current() || st.Generation != 6 {
		t.Fatalf("status from %d gen %d; want %d gen 6", st.PID, st.Generation, d.current())
	}
	f := st.Upgrades[0]
	if f.Outcome != "failed" || f.Reason != "exited" || f.From != d.pids[0] || f.Generation != 2 || !strings.Contains(f.Stderr, "panic: brokendemo") || f.Error == "" {
		t.Errorf("record of the failed upgrade: %+v", f)
	}
	for i, r := range st.Upgrades[1:] {
		from, to := d.pids[i], d.pids[i+1]
		where := fmt.Sprintf("upgrade %d (%d→%d)", i+1, from, to)
		switch {
		case r.Outcome != "ok" || r.From != from || r.To != to || r.Generation != i+2 || r.Trigger != "control socket":
			t.Errorf("%s: record %+v", where, r)
		case r.Start.Before(start) || r.End.Before(r.Start) || r.End.After(end):
			t.Errorf("%s: times %s..%s outside the test's %s..%s", where, r.Start, r.End, start, end)
		case r.HandoverSeconds <= 0 || r.HandoverSeconds > 30:
			t.Errorf("%s: handover took %gs", where, r.HandoverSeconds)
		case !r.Drained || r.DrainSeconds <= 0 || r.DrainSeconds > 15:
			t.Errorf("%s: drain %v %gs", where, r.Drained, r.DrainSeconds)
		case r.RequestsAfter < 1 || r.ConnsForced != 0:
			t.Errorf("%s: %d requests answered after the handover, %d connections force-closed; want the slow one, none", where, r.RequestsAfter, r.ConnsForced)
		}
		if i > 0 && r.Start.Before(st.Upgrades[i].End) {
			t.Errorf("%s started before the previous one ended", where)
		}
	}
	d.signal(syscall.SIGTERM)
	if err := waitGone(d.current(), 15*time.Second); err != nil {
		t.Error(err)
	}
}
