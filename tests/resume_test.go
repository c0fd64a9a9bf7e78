package tests

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// TestSuccessorDiesAfterServing is the case RELIABILITY.md once listed as a limit: a
// new build takes over, serves for a second and dies, while its predecessor drains
// a long request. The predecessor takes its drain back and serves again on the
// sockets it kept; it does not start the bad build (still on disk) again. A steady
// client (one request every 100 ms for 12 s, a new connection each, never retrying)
// sees no failure, the long request completes, and the bad build ran once.
func TestSuccessorDiesAfterServing(t *testing.T) {
	starts := filepath.Join(t.TempDir(), "starts")
	t.Setenv("BROKENDEMO_STARTS", starts)
	d := startDemo(t, demoOpts{drain: 30 * time.Second})
	old := d.current()
	long := slowOn(t, d.addr, old, "/slow?ms=9000", 30*time.Second)
	copyFile(t, buildVariant(t, "testdata/brokendemo", "serve-die"), d.bin, 0o755)

	answers := probeEvery(d.addr, 100*time.Millisecond, 12*time.Second)

	d.signal(syscall.SIGUSR2)
	if err := proc.WaitFor(func() bool { p := d.pidFromFile(); return p != 0 && p != old }, 10*time.Second, "the bad build to take over"); err != nil {
		t.Fatal(err)
	}
	bad := d.pidFromFile()
	// Draining, the old generation keeps the socket without its runtime watching
	// it (its listener parked): the connections for the new one do not wake it.
	// Serving again, it watches it.
	ino, err := proc.ListeningInode(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	watches := func(pid int) bool { return proc.Watches(pid, ino) }
	if err := proc.WaitFor(func() bool { return !watches(old) }, 5*time.Second, "the draining generation to stop watching the socket"); err != nil {
		t.Error(err)
	}
	d.waitEvent(0, 10*time.Second, "resumed", logs.KV("pid", old))
	if !watches(old) {
		t.Errorf("the generation that serves again (PID %d) does not watch the listening socket", old)
	}
	if got := d.pidFromFile(); got != old {
		t.Errorf("PID file names %d after the bad build died, want %d", got, old)
	}

	as := <-answers
	failed, seen := tally(as)
	t.Logf("%d requests: %v answered by pid; bad build %d, old %d", len(as), seen, bad, old)
	if len(as) < 60 {
		t.Errorf("only %d requests in 12 s; the client loop did not run", len(as))
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed:\n%s", len(failed), len(as), strings.Join(failed, "\n"))
	}
	if seen[bad] == 0 || seen[old] == 0 {
		t.Errorf("answers by pid %v: want both the bad build %d (before it died) and the old generation %d", seen, bad, old)
	}
	if s := <-long; s.err != nil || s.resp.Status != 200 || s.resp.PID() != old {
		t.Errorf("the long request: %v, status %d from %d; want 200 from %d", s.err, statusOf(s.resp), respPID(s.resp), old)
	}
	b, err := os.ReadFile(starts)
	if n := strings.Count(string(b), "\n"); err != nil || n != 1 {
		t.Errorf("the bad build started %d times (%v), want once:\n%s", n, err, b)
	}
	if proc.State(bad) != "" {
		t.Errorf("the bad build %d was not reaped (state %s)", bad, proc.State(bad))
	}
	// The next upgrade, asked for by the operator, is a normal one.
	copyFile(t, d.good, d.bin, 0o755)
	if prev, _ := d.upgradeAndDrain(); prev != old {
		t.Errorf("upgraded from %d, want %d", prev, old)
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}

// probeAnswer is what one request of probeEvery got: the answering PID and body, or
// the error (a status other than 200 included), and when.
type probeAnswer struct {
	pid  int
	body string
	err  error
	at   time.Time
}

// probeEvery sends GET / to addr every interval for dur, each request on a new
// connection and never retried, and delivers every answer at the end.
func probeEvery(addr string, interval, dur time.Duration) <-chan []probeAnswer {
	answers := make(chan []probeAnswer, 1)
	go func() {
		var as []probeAnswer
		for end := time.Now().Add(dur); time.Now().Before(end); pace(interval) {
			resp, err := rawhttp.Get(addr, "/", 2*time.Second)
			if err == nil && resp.Status != 200 {
				err = &rawhttp.StatusError{Code: resp.Status}
			}
			a := probeAnswer{pid: respPID(resp), err: err, at: time.Now()}
			if resp != nil {
				a.body = string(resp.Body)
			}
			as = append(as, a)
		}
		answers <- as
	}()
	return answers
}

// tally lists the failed answers, each with its time, and counts the others by PID.
func tally(as []probeAnswer) (failed []string, byPID map[int]int) {
	byPID = map[int]int{}
	for _, a := range as {
		if a.err != nil {
			failed = append(failed, a.at.Format("15:04:05.000")+" "+a.err.Error())
			continue
		}
		byPID[a.pid]++
	}
	return failed, byPID
}
