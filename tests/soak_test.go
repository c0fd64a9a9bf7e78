package tests

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// procSample is what the soak test records of a serving process.
type procSample struct {
	pid              int
	fds, conns       int // open descriptors; TCP connections among them
	rssKB, threads   int
	environ, cmdline int    // sizes in bytes
	envKeys          string // the environment's variable names
}

func (s procSample) String() string {
	return fmt.Sprintf("pid %d: %d fds (%d connections), VmRSS %d kB, %d threads, environ %d bytes, cmdline %d bytes",
		s.pid, s.fds, s.conns, s.rssKB, s.threads, s.environ, s.cmdline)
}

func sampleProc(pid int) procSample {
	s := procSample{pid: pid, fds: proc.FDCount(pid), conns: tcpConns(pid)}
	if f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			switch k {
			case "VmRSS":
				s.rssKB = n
			case "Threads":
				s.threads = n
			}
		}
		f.Close()
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	s.environ = len(b)
	var keys []string
	for _, kv := range strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00") {
		k, _, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s.envKeys = strings.Join(keys, " ")
	b, _ = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	s.cmdline = len(b)
	return s
}

// TestSoak: 20 upgrades half a second apart (200 in CI, or with HANDOVER_SOAK=full)
// under continuous load
// (16 clients, half keep-alive, one request in ten slow): no request fails, every
// generation answers, every old one exits within its drain deadline, and nothing
// accumulates across generations: the serving process's descriptors (once quiet),
// memory (VmRSS after the same half second of load), environment and command line
// stay as they were in the first generation, and no process is left behind.
func TestSoak(t *testing.T) {
	upgrades := 20
	if os.Getenv("CI") != "" || os.Getenv("HANDOVER_SOAK") == "full" {
		upgrades = 200
	}
	const every = 500 * time.Millisecond
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	quiet := proc.FDCount(d.current())
	r, err := load.Start(load.Config{Addr: d.addr, Duration: 10 * time.Minute, MaxRequests: load.MaxRequestsLimit})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	start := time.Now()
	time.Sleep(every) // pacing
	samples := []procSample{sampleProc(d.current())}
	exited := make(chan error, upgrades)
	maxProcs := 0
	for i := 0; i < upgrades; i++ {
		old, cur := d.upgrade()
		maxProcs = max(maxProcs, len(proc.Descendants(os.Getpid())))
		go func() {
			// Gone before its drain deadline (from the handover): the test's bound.
			exited <- waitGone(old, d.drain)
		}()
		time.Sleep(every) // pacing
		samples = append(samples, sampleProc(cur))
		maxProcs = max(maxProcs, len(proc.Descendants(os.Getpid())))
		if _, failed, _ := r.Progress(); failed > 0 {
			t.Errorf("requests failing after %d upgrades; stopping", i+1)
			break
		}
	}
	res := r.Stop()
	elapsed := time.Since(start)
	checkLoad(t, res)
	first, last := samples[0], samples[len(samples)-1]
	t.Logf("%d upgrades in %v; at most %d processes at once", len(samples)-1, elapsed.Round(time.Second), maxProcs)
	t.Logf("first generation: %v", first)
	t.Logf("last generation:  %v", last)
	minRSS, maxRSS, maxFDs := first.rssKB, first.rssKB, first.fds
	for _, s := range samples {
		minRSS, maxRSS, maxFDs = min(minRSS, s.rssKB), max(maxRSS, s.rssKB), max(maxFDs, s.fds)
	}
	t.Logf("under load: VmRSS %d..%d kB, at most %d descriptors", minRSS, maxRSS, maxFDs)

	for range len(samples) - 1 {
		if err := <-exited; err != nil {
			t.Error(err)
		}
	}
	cur := d.current()
	if err := proc.WaitFor(func() bool { return proc.FDCount(cur) == quiet }, 10*time.Second, "the descriptors to settle"); err != nil {
		t.Errorf("the last generation holds %d descriptors once quiet, the first held %d: %v", proc.FDCount(cur), quiet, fdTargets(cur))
	} else {
		t.Logf("descriptors once quiet: first generation %d, last %d", quiet, proc.FDCount(cur))
	}
	if last.rssKB > first.rssKB*3/2+2048 {
		t.Errorf("VmRSS grew from %d kB in the first generation to %d kB in the last", first.rssKB, last.rssKB)
	}
	// The second generation is the first started with the sockets' variables (which
	// /proc/PID/environ shows as they were at exec); their values hold PIDs, whose
	// length varies.
	if second := samples[min(1, len(samples)-1)]; last.envKeys != second.envKeys || last.environ > second.environ+16 || last.cmdline != first.cmdline {
		t.Errorf("the environment or command line changed across generations: %v [%s], then %v [%s], then %v [%s]",
			first, first.envKeys, second, second.envKeys, last, last.envKeys)
	}
	if maxProcs > 8 {
		t.Errorf("%d processes at once: old generations pile up", maxProcs)
	}
	seen := res.PIDs()
	for _, s := range samples {
		if !slices.ContainsFunc(seen, func(p load.PIDSeen) bool { return p.PID == s.pid }) {
			t.Errorf("generation pid %d never answered the load", s.pid)
		}
	}
	ev := d.events()
	if to := logs.Ints(ev.Where("handed_over"), "to"); !slices.Equal(to, d.pids[1:]) {
		t.Errorf("%d handovers logged to %d generations, want one to each of the %d new generations", len(ev.Where("handed_over")), len(to), len(d.pids)-1)
	}
	// Nothing went wrong on the way: no failed or refused upgrade, no dead successor,
	// no forced close, and no line at level ERROR (whatever its event).
	for _, e := range []string{"upgrade_failed", "upgrade_refused", "successor_died", "drain_deadline", "child_error", "pidfile_failed", "parent_lost"} {
		if ls := ev.Where(e); len(ls) > 0 {
			t.Errorf("%d event=%s logged, the last: %s", len(ls), e, ls[len(ls)-1])
		}
	}
	for _, l := range ev.Lines {
		if l.Get("level") == "ERROR" {
			t.Errorf("an error was logged: %s", l)
		}
	}
	st, err := ctlStatus(t, ctl)
	if err != nil || st.PID != cur || st.Generation != len(samples) || st.State != "serving" {
		t.Errorf("status %+v (%v), want pid %d, generation %d, serving", st, err, cur, len(samples))
	}
	if err := proc.LeakCheck(cur); err != nil {
		t.Error(err)
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}
