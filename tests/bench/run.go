package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// run builds the servers and runs every approach asked for, one after the other.
func run(ctx context.Context, o options) (*Report, error) {
	began := time.Now()
	e, cleanup, err := setUp(o, "handover-bench-", "")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	names := splitList(o.approaches)
	sdErr := checkSystemd(e, slices.ContainsFunc(names, func(n string) bool { a, _ := approachByName(n); return a.Systemd }))
	rep := &Report{
		RunHeader:   newHeader("tests/bench", began, machineInfo(e.systemd, e.bin)),
		Config:      configOf(o),
		Definitions: definitions(o),
	}
	// Rounds: every approach in turn, a share of the restarts each, so that
	// whatever else the machine does falls on all of them alike.
	segs := map[string][]segment{}
	for round := 0; round < o.rounds && ctx.Err() == nil; round++ {
		n := o.restarts / o.rounds
		if round < o.restarts%o.rounds {
			n++
		}
		for _, name := range names {
			if ctx.Err() != nil {
				break
			}
			a, _ := approachByName(name)
			if a.Systemd && sdErr != nil {
				continue
			}
			logf("=== round %d/%d: %s (%s), %d restarts", round+1, o.rounds, a.Name, a.Label, n)
			seg := runSegment(ctx, e, a, n)
			if seg.lr != nil {
				logf("%s: %d requests, %d failed %v, %d PIDs, load average %s", a.Name, seg.lr.Total(), seg.lr.FailureCount(), seg.lr.Failures(), len(seg.lr.PIDs()), seg.loadavg)
			}
			segs[name] = append(segs[name], seg)
		}
	}
	for _, name := range names {
		a, _ := approachByName(name)
		var res ApproachResult
		if a.Systemd && sdErr != nil {
			res = ApproachResult{Name: a.Name, Label: a.Label, Server: a.Server, Restart: a.Restart,
				RestartsAsked: o.restarts, Error: fmt.Sprintf("not run: %v", sdErr)}
		} else {
			res = result(a, segs[name], o)
		}
		logf("%s: %s", a.Name, oneLine(res))
		rep.Approaches = append(rep.Approaches, res)
	}
	rep.Finished = time.Now().UTC().Format(time.RFC3339)
	return rep, finished(ctx, began)
}

// finished logs how long the run took and says whether it was interrupted.
func finished(ctx context.Context, began time.Time) error {
	logf("done in %v", time.Since(began).Round(time.Second))
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	return nil
}

// setUp finds the repository, makes a work directory (removed by cleanup unless
// -keep) and builds the servers into it, or takes those already built in bin.
func setUp(o options, prefix, bin string) (e *env, cleanup func(), err error) {
	repo, err := findRepo(o.repo)
	if err != nil {
		return nil, nil, err
	}
	work, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, nil, err
	}
	cleanup = func() { os.RemoveAll(work) }
	if o.keep {
		logf("keeping the work directory %s", work)
		cleanup = func() {}
	}
	e = &env{opts: o, repo: repo, bin: filepath.Join(work, "bin"), work: work}
	if bin != "" {
		if e.bin, err = filepath.Abs(bin); err != nil {
			cleanup()
			return nil, nil, err
		}
		logf("using the servers in %s", e.bin)
		return e, cleanup, nil
	}
	logf("building the servers into %s", e.bin)
	if err := build(repo, e.bin); err != nil {
		cleanup()
		return nil, nil, err
	}
	return e, cleanup, nil
}

// checkSystemd, when needed (an approach runs under systemd), finds the systemd
// to run, into e; its error says why those approaches cannot run.
func checkSystemd(e *env, needed bool) error {
	if !needed {
		return nil
	}
	err := sdns.Available()
	if err == nil {
		e.systemd, err = sdns.Installed()
	}
	return err
}

// build compiles handover-demo and handover (in the library's module) and the
// peers (in this module) into dir.
func build(repo, dir string) error {
	for _, b := range []struct {
		dir  string
		pkgs []string
	}{
		{repo, []string{"./cmd/handover-demo", "./cmd/handover"}},
		{filepath.Join(repo, "tests", "bench"), []string{"./servers/handover-lean", "./servers/tableflip", "./servers/gracehttp", "./servers/endless", "./servers/plain", "./servers/naive"}},
	} {
		cmd := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, b.pkgs...)...)
		cmd.Dir = b.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build in %s: %v\n%s", b.dir, err, out)
		}
	}
	return nil
}

func configOf(o options) Config {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return Config{
		Restarts: o.restarts, Rounds: o.rounds, IntervalMS: ms(o.interval), BaselineMS: ms(o.baseline), TailMS: ms(o.tail),
		WindowAfterMS: ms(o.window), GapMS: ms(o.gap), Concurrency: o.concurrency, KeepAlive: o.keepAlive,
		SlowEvery: o.slowEvery, SlowMS: o.slowMS, MaxRequests: o.maxRequests, RequestTimeoutMS: ms(o.requestTimeout),
		Address: "127.0.0.1 (a free port per approach)",
	}
}

func definitions(o options) []string {
	return []string{
		fmt.Sprintf("load: %d clients (%.0f%% keep one connection, redialling only after Connection: close or an error; the others dial per request), every %dth request of a client to /slow?ms=%d, the others to /; a raw HTTP/1.1 client that never retries; a request fails on any error or a non-2xx status, within %v",
			o.concurrency, 100*o.keepAlive, o.slowEvery, o.slowMS, o.requestTimeout),
		"failure kinds: Refused (ECONNREFUSED), Reset (ECONNRESET, EPIPE), EOF (closed before or while answering), Timeout, Status (non-2xx), Other",
		"latency: of successful GET / requests, from the dial (new-connection clients) or the write of the request (keep-alive clients) to the last byte of the response; /slow requests are summarized apart (slow)",
		fmt.Sprintf("restart window: from the restart signal until %v after the restart completed (completed: the old process exited and the new one answered, whichever is later); steady state: every request that started outside all windows, including the %v before each round's first restart",
			o.window, o.baseline),
		"signal: the kill, or the start of `systemctl reload|restart` (its own start-up, through nsenter into the namespaces, included)",
		"handover time: from the signal to the first response from the new PID, to the load or to a probe that, from the signal until the new PID answers, sends one request at a time (1 ms apart) on new connections",
		"drain time: from the signal to the exit of the old PID (pidfd)",
		fmt.Sprintf("rounds: the approaches take turns, %d rounds of %d restarts (or so) each; every round starts a fresh server (and systemd), runs the load %v before its first restart and %v after its last, then stops the server; an approach's rounds are analyzed as one time line",
			o.rounds, o.restarts/o.rounds, o.baseline, o.tail),
		fmt.Sprintf("schedule: one restart every %v, but never sooner than %v after the previous one completed", o.interval, o.gap),
		"PIDs seen: distinct X-Pid values the load saw, summed over the rounds: one per generation, so restarts + rounds when every generation answered",
		"leaks: old generations still running and server processes left as zombies at the end of each round, and anything left after stopping the server; descriptors of each round's first generation (idle, before the load) against its last (idle, after the load)",
	}
}

// restartRun is what happened during one restart, in wall-clock times.
type restartRun struct {
	signal    time.Time
	oldPID    int
	oldHost   int
	newPID    int
	newHost   int
	probeAt   time.Time // the probe's first answer from newPID
	exitAt    time.Time // zero: the old PID did not exit in time
	cmdDur    time.Duration
	completed time.Time
	probeN    int
	probeFail map[rawhttp.Kind]int
	err       error
}

// shift moves the restart's times by d.
func (rr *restartRun) shift(d time.Duration) {
	for _, t := range []*time.Time{&rr.signal, &rr.probeAt, &rr.exitAt, &rr.completed} {
		if !t.IsZero() {
			*t = t.Add(d)
		}
	}
}

// segment is one round of one approach: a server started, put under the load,
// restarted, and stopped.
type segment struct {
	lr      *load.Result
	runs    []restartRun
	samples []string
	leaks   Leaks
	ctl     []float64
	loadavg string
	notes   []string
	err     string
}

// runSegment runs one round of an approach: start the server, the load, the
// baseline, restarts restarts, the tail, and stop. Errors end up in the segment.
func runSegment(ctx context.Context, e *env, a approach, restarts int) (seg segment) {
	o := e.opts
	var srv server
	fail := func(err error) {
		if seg.err == "" {
			seg.err = err.Error()
		}
		logf("%s: %v", a.Name, err)
		if srv != nil {
			logf("%s: server log (last lines):\n%s", a.Name, srv.Log())
		}
	}
	before := runinfo.LoadAvg()
	defer func() {
		if r := recover(); r != nil {
			ab, ok := r.(tbAbort)
			if !ok {
				panic(r)
			}
			fail(errors.New(ab.msg))
		}
		seg.loadavg = before + " → " + runinfo.LoadAvg()
		if srv == nil {
			return
		}
		if err := srv.Stop(); err != nil {
			fail(fmt.Errorf("stopping the server: %w", err))
		}
		if err := proc.LeakCheck(); err != nil {
			seg.leaks.AfterStop = append(seg.leaks.AfterStop, err.Error())
			// Do not let one approach's leftovers spoil the next one's check.
			for _, p := range proc.Children(os.Getpid()) {
				proc.KillAndReap(p, 5*time.Second)
			}
		}
	}()
	var err error
	if srv, err = a.new(e); err != nil {
		fail(err)
		return seg
	}
	first, err := srv.Start()
	if err != nil {
		fail(err)
		return seg
	}
	firstHost, err := srv.Host(first)
	if err != nil {
		fail(err)
		return seg
	}
	seg.leaks.FDFirst = settledFDs(firstHost, -1, 2*time.Second)
	for _, d := range srv.CtlOverhead(3) {
		seg.ctl = append(seg.ctl, ms(d))
	}

	cfg := load.Config{
		Addr:              srv.Addr(),
		Concurrency:       o.concurrency,
		KeepAliveFraction: o.keepAlive,
		SlowEvery:         o.slowEvery,
		SlowMS:            o.slowMS,
		// A bound only: the run stops the load itself after the last restart.
		Duration:       o.baseline + o.tail + time.Duration(restarts)*(2*o.interval+time.Second) + time.Minute,
		MaxRequests:    o.maxRequests,
		RequestTimeout: o.requestTimeout,
	}
	if o.keepAlive == 0 {
		cfg.KeepAliveFraction = -1
	}
	lr, err := load.Start(cfg)
	if err != nil {
		fail(err)
		return seg
	}
	stopLoad := sync.OnceValue(lr.Stop)
	defer stopLoad()
	if err := proc.WaitFor(func() bool { ok, _, _ := lr.Progress(); return ok >= 50 }, 10*time.Second, "the load to get answers"); err != nil {
		fail(err)
		return seg
	}
	sleep(ctx, o.baseline)

	known := map[int]bool{first: true}
	cur, curHost := first, firstHost
	var reapers sync.WaitGroup
	var reapMu sync.Mutex
	var reapErrs []error
	failedInARow := 0
	next := time.Now()
	for i := 0; i < restarts && ctx.Err() == nil; i++ {
		sleep(ctx, time.Until(next))
		if ctx.Err() != nil {
			break
		}
		rr := restartOnce(ctx, e, srv, cur, curHost, known)
		seg.runs = append(seg.runs, rr)
		if rr.exitAt.IsZero() {
			seg.leaks.NotExited++
		} else if srv.Reaps() {
			reapers.Add(1)
			go func(pid int) {
				defer reapers.Done()
				if err := reapWhenOrphaned(pid, o.exitTimeout); err != nil {
					reapMu.Lock()
					reapErrs = append(reapErrs, err)
					reapMu.Unlock()
				}
			}(rr.oldHost)
		}
		next = latest(rr.signal.Add(o.interval), rr.completed.Add(o.gap))
		if rr.newPID != 0 {
			known[rr.newPID] = true
			cur, curHost = rr.newPID, rr.newHost
			failedInARow = 0
		} else {
			failedInARow++
			logf("%s: restart %d: no new PID answered: %v", a.Name, i+1, rr.err)
			if failedInARow == 3 {
				fail(fmt.Errorf("three restarts in a row without a new PID; stopping this round (last: %v)", rr.err))
				break
			}
		}
	}
	sleep(ctx, o.tail)
	seg.lr = stopLoad()
	for _, f := range seg.lr.FailureSamples(10) {
		seg.samples = append(seg.samples, f.String())
	}
	reapers.Wait()
	for _, err := range reapErrs {
		seg.notes = append(seg.notes, "reaping: "+err.Error())
	}
	// Old generations still there get a last chance to finish their drain.
	for _, rr := range seg.runs {
		if rr.exitAt.IsZero() && proc.Alive(rr.oldHost) {
			proc.WaitFor(func() bool { return !proc.Alive(rr.oldHost) }, 5*time.Second, "old generation")
		}
	}
	seg.leaks.FDLast = settledFDs(curHost, seg.leaks.FDFirst, 5*time.Second)
	if seg.leaks.FDLast != seg.leaks.FDFirst {
		seg.leaks.FDLastNames = fdTargets(curHost)
	}
	seg.leaks.OldRunning, seg.leaks.Zombies = srv.Leaks(curHost)
	seg.notes = append(seg.notes, srv.Notes()...)
	return seg
}

// result merges an approach's rounds, one after the other on one time line, and
// analyzes them.
func result(a approach, segs []segment, o options) ApproachResult {
	res := ApproachResult{Name: a.Name, Label: a.Label, Server: a.Server, Restart: a.Restart, RestartsAsked: o.restarts}
	var errs, notes []string
	var merged *load.Result
	var runs []restartRun
	var offset time.Duration
	var ctl []float64
	for i, s := range segs {
		if s.err != "" {
			errs = append(errs, fmt.Sprintf("round %d: %s", i+1, s.err))
		}
		res.LoadAvg = append(res.LoadAvg, s.loadavg)
		ctl = append(ctl, s.ctl...)
		for _, n := range s.notes {
			if !slices.Contains(notes, n) {
				notes = append(notes, n)
			}
		}
		L := &res.Leaks
		L.OldRunning = append(L.OldRunning, s.leaks.OldRunning...)
		L.Zombies = append(L.Zombies, s.leaks.Zombies...)
		L.AfterStop = append(L.AfterStop, s.leaks.AfterStop...)
		L.NotExited += s.leaks.NotExited
		if s.lr == nil {
			continue
		}
		if merged == nil {
			merged = &load.Result{Config: s.lr.Config, Started: s.lr.Started}
			L.FDFirst = s.leaks.FDFirst
		}
		L.FDLast = s.leaks.FDLast
		if s.leaks.FDFirst != s.leaks.FDLast {
			L.FDChanged++
			L.FDLastNames = s.leaks.FDLastNames
		}
		res.Segments = append(res.Segments, ms(offset))
		res.DistinctPIDs += len(s.lr.PIDs())
		if len(res.FailureSamples) < 10 {
			res.FailureSamples = append(res.FailureSamples, s.samples[:min(len(s.samples), 10-len(res.FailureSamples))]...)
		}
		for _, r := range s.lr.Records {
			r.Start += offset
			merged.Records = append(merged.Records, r)
		}
		shift := merged.Started.Add(offset).Sub(s.lr.Started)
		for _, rr := range s.runs {
			rr.shift(shift)
			runs = append(runs, rr)
		}
		offset += s.lr.Elapsed
	}
	res.Notes = notes
	res.Error = strings.Join(errs, "; ")
	res.CtlMS = dist(ctl)
	if merged == nil {
		return res
	}
	merged.Elapsed = offset
	distinct := res.DistinctPIDs
	analyze(&res, merged, runs, o)
	res.DistinctPIDs = distinct
	return res
}

// restartOnce restarts the server whose current generation is pid (host PID host)
// and measures the restart.
func restartOnce(ctx context.Context, e *env, srv server, pid, host int, known map[int]bool) restartRun {
	o := e.opts
	rr := restartRun{oldPID: pid, oldHost: host}
	exited := watchExit(host, o.exitTimeout)
	seen := make(map[int]bool, len(known))
	for p := range known {
		seen[p] = true
	}
	type trig struct {
		err error
		dur time.Duration
	}
	trigc := make(chan trig, 1)
	stopProbe := make(chan struct{})
	rr.signal = time.Now()
	go func() {
		err := srv.Restart(pid)
		trigc <- trig{err, time.Since(rr.signal)}
	}()
	probec := make(chan probeResult, 1)
	go func() { probec <- probe(ctx, srv.Addr(), seen, rr.signal.Add(o.exitTimeout), stopProbe) }()
	var pr probeResult
	select {
	case t := <-trigc:
		rr.err, rr.cmdDur = t.err, t.dur
		if t.err != nil {
			// Give a failed command a moment to have restarted anyway.
			time.AfterFunc(2*time.Second, func() { close(stopProbe) })
		}
		pr = <-probec
	case pr = <-probec:
		t := <-trigc
		rr.err, rr.cmdDur = t.err, t.dur
	}
	rr.exitAt = <-exited
	rr.newPID, rr.probeAt, rr.probeN, rr.probeFail = pr.pid, pr.at, pr.n, pr.fails
	if rr.newPID != 0 {
		h, err := srv.Host(rr.newPID)
		if err != nil {
			rr.err = errors.Join(rr.err, err)
		}
		rr.newHost = h
	}
	rr.completed = latest(rr.exitAt, rr.probeAt)
	if rr.completed.IsZero() {
		rr.completed = time.Now()
	}
	return rr
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// watchExit reports when pid exits (through a pidfd, which works for any process,
// child or not), or the zero time if it has not within timeout.
func watchExit(pid int, timeout time.Duration) <-chan time.Time {
	c := make(chan time.Time, 1)
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// ESRCH: already gone (and reaped).
		c <- time.Now()
		return c
	}
	go func() {
		defer unix.Close(fd)
		deadline := time.Now().Add(timeout)
		for {
			left := time.Until(deadline)
			if left <= 0 {
				c <- time.Time{}
				return
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, int(min(left, time.Second)/time.Millisecond)+1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if n > 0 {
				c <- time.Now()
				return
			}
		}
	}()
	return c
}

// reapWhenOrphaned reaps pid, which has exited, once it is this process's child: a
// generation whose parent generation has exited is reparented to the subreaper.
func reapWhenOrphaned(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		switch st := proc.State(pid); {
		case st == "":
			return nil // reaped already
		case proc.PPid(pid) == os.Getpid():
			_, err := proc.Reap(pid, time.Until(deadline))
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d (state %s) is still the child of %d after %v", pid, proc.State(pid), proc.PPid(pid), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// probeResult is the first answer from a PID not seen before.
type probeResult struct {
	pid   int
	at    time.Time
	n     int
	fails map[rawhttp.Kind]int
}

// probe sends GET / on a new connection, one at a time 1 ms apart, until a PID not
// in known answers, the deadline passes, stop is closed or ctx is done.
func probe(ctx context.Context, addr string, known map[int]bool, deadline time.Time, stop <-chan struct{}) probeResult {
	r := probeResult{fails: map[rawhttp.Kind]int{}}
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return r
		case <-stop:
			return r
		default:
		}
		resp, err := rawhttp.Get(addr, "/", 5*time.Second)
		now := time.Now()
		r.n++
		if k := rawhttp.KindOf(resp, err); k != rawhttp.OK {
			r.fails[k]++
		} else if p := resp.PID(); p != 0 && !known[p] {
			r.pid, r.at = p, now
			return r
		}
		time.Sleep(time.Millisecond)
	}
	return r
}

// settledFDs returns pid's descriptor count once it holds still (the same for
// 200 ms), or equals want, or timeout has passed.
func settledFDs(pid, want int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	last, since := proc.FDCount(pid), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n := proc.FDCount(pid)
		if n != last {
			last, since = n, time.Now()
			continue
		}
		if n == want || time.Since(since) >= 200*time.Millisecond && want < 0 {
			return n
		}
	}
	return last
}

// fdTargets lists what pid's descriptors point at.
func fdTargets(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	slices.Sort(out)
	return out
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// oneLine summarizes a result for the log.
func oneLine(r ApproachResult) string {
	if r.Requests == 0 {
		return "error: " + r.Error
	}
	s := fmt.Sprintf("%d restarts, %d PIDs, %d requests, %d failed %v, p99 steady %.2fms windows %.2fms, handover median %.1fms max %.1fms, drain median %.0fms",
		r.RestartsDone, r.DistinctPIDs, r.Requests, r.Failed, r.Failures, r.Latency.Steady.P99, r.Latency.Windows.P99,
		r.HandoverMS.Median, r.HandoverMS.Max, r.DrainMS.Median)
	if r.Error != "" {
		s += "; error: " + r.Error
	}
	return s
}
