//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/seed-a7250cfa/handover/examples/grpc/demopb"
)

var upgrades = flag.Int("upgrades", 10, "how many upgrades TestUpgradesUnderLoad performs")

// bins holds the binaries TestMain builds: the example server and cmd/handover.
var bins struct{ server, handover string }

func TestMain(m *testing.M) {
	// Generations outlive their parents: each is started by the one before it. As a
	// child subreaper, this process becomes the parent of every orphaned generation,
	// so it can reap each one by PID (as tests/internal/proc does in the main module).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "cannot become a child subreaper:", err)
		os.Exit(1)
	}
	// Descriptors this test binary inherited (from a shell, a CI runner) must not
	// reach the servers it starts.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	dir, err := os.MkdirTemp("", "grpc-example-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code, err := buildAndRun(m, dir)
	os.RemoveAll(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func buildAndRun(m *testing.M, dir string) (int, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bins.server = filepath.Join(dir, "grpc-demo")
	bins.handover = filepath.Join(dir, "handover")
	for _, args := range [][]string{
		{"build", "-o", bins.server, "."},
		// cmd/handover is the main module's; build it there (../..).
		{"build", "-C", "../..", "-o", bins.handover, "./cmd/handover"},
	} {
		if out, err := exec.Command(goTool, args...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return m.Run(), nil
}

// Load shape. Every call and stream is bounded: the load stops when the test is done
// with its upgrades, at maxUnary calls per worker, or when loadTimeout passes.
const (
	unaryWorkers  = 4 // each on one connection for the whole test
	dialWorkers   = 2 // each dialing a new connection for every call
	streamWorkers = 2
	streamLen     = 5      // messages per background stream (5 ticks of 20 ms)
	witnessLen    = 150    // messages per witness stream (3 s): open across an upgrade
	maxUnary      = 50_000 // per unary worker
	maxDials      = 20_000 // per dial worker
	callTimeout   = 10 * time.Second
	loadTimeout   = 50 * time.Second
	tick          = 20 * time.Millisecond
	drainTimeout  = 20 * time.Second
)

// TestUpgradesUnderLoad upgrades the example server 10 times (handover reload) while
// gRPC clients call it: unary calls in loops (on long-lived connections, and on a new
// connection for each call), short streams in loops, and before each upgrade one long
// "witness" stream opened on the serving generation. It asserts that no RPC failed,
// that every generation answered both kinds of RPC, that every witness stream ran to
// its end on the generation it started on, across that generation's drain, and that
// every generation exited (status 0 where this process reaps it).
//
// It runs once for each recipe: grpc-go's own transport (-via grpc, the recommended
// one) and gRPC through a graceful.Server over h2c (-via h2c).
func TestUpgradesUnderLoad(t *testing.T) {
	for _, via := range []string{"grpc", "h2c"} {
		t.Run(via, func(t *testing.T) { testUpgradesUnderLoad(t, via) })
	}
}

func testUpgradesUnderLoad(t *testing.T, via string) {
	start := time.Now()
	dir := t.TempDir()
	addr := freeAddr(t)
	pidFile := filepath.Join(dir, "grpc-demo.pid")
	ctl := filepath.Join(dir, "control.sock")
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()

	cmd := exec.Command(bins.server, "-via", via, "-addr", addr, "-pidfile", pidFile, "-control", ctl,
		"-drain-timeout", drainTimeout.String(), "-tick", tick.String(),
		// Ten upgrades in five seconds with streams of three: up to seven generations
		// drain at once, which is what this test is about (MaxDraining's own test is
		// in the main module).
		"-max-draining", "12")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// pids[g-1] is generation g. Reaped by PID (never cmd.Wait, never "any child").
	pids := []int{cmd.Process.Pid}
	reaped := map[int]bool{}
	t.Cleanup(func() {
		for _, pid := range pids {
			// Only a process still running the server binary: a PID that was
			// reaped elsewhere may have been reused.
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); !reaped[pid] && exe == bins.server {
				unix.Kill(pid, unix.SIGKILL)
				reap(pid, 5*time.Second)
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("server log (%s):\n%s", logPath, tail(b, 60))
		}
	})
	if err := waitFor(10*time.Second, "the PID file to name generation 1", func() bool {
		return readPID(pidFile) == pids[0]
	}); err != nil {
		t.Fatal(err)
	}

	ld := newLoad(t, addr)
	ld.start()
	defer ld.stop()

	var witnesses sync.WaitGroup
	witnessErrs := make(chan error, *upgrades)
	for g := 1; g <= *upgrades; g++ {
		cur := pids[g-1]
		// The serving generation answers both kinds of RPC before it is upgraded.
		if err := ld.waitAnswered(g, cur, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		// A stream open on it when it hands over: it must run to its end there.
		w, err := openWitness(addr, g, cur)
		if err != nil {
			t.Fatalf("witness stream before upgrade %d: %v", g, err)
		}
		witnesses.Add(1)
		go func() {
			defer witnesses.Done()
			witnessErrs <- w.finish()
		}()

		pid, gen, err := reload(ctl)
		if err != nil {
			t.Fatalf("upgrade %d: %v", g, err)
		}
		if gen != g+1 || pid == cur || pid <= 0 {
			t.Fatalf("upgrade %d: handover reload says PID %d generation %d; want a new PID (not %d), generation %d", g, pid, gen, cur, g+1)
		}
		pids = append(pids, pid)
	}
	last := pids[len(pids)-1]
	lastGen := len(pids)
	if err := ld.waitAnswered(lastGen, last, 15*time.Second); err != nil {
		t.Fatal(err)
	}

	// `handover status -json` of the last generation, while the load runs: the
	// Drainer's connection counts are there.
	st, err := handoverStatus(ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != last || st.Generation != lastGen || st.State != "serving" {
		t.Errorf("status: pid %d generation %d state %q; want %d, %d, serving", st.PID, st.Generation, st.State, last, lastGen)
	}
	if st.Connections.Accepted == 0 || st.Connections.Active == 0 {
		t.Errorf("status: connections %+v; want the load's connections counted (the Drainer)", st.Connections)
	}

	witnesses.Wait()
	ld.stop()
	close(witnessErrs)
	witnessOK := 0
	for err := range witnessErrs {
		if err != nil {
			t.Error(err)
		} else {
			witnessOK++
		}
	}

	// The last one drains and exits 0 on SIGTERM. Every old generation exits once
	// its RPCs are done (the witness streams bound that: 3 s), well within the drain
	// timeout, and its successor's probation is over: the one before the last stands
	// by until the last stops (graceful.Config.Probation, 10 s by default).
	if err := unix.Kill(last, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exitStatus := map[int]string{}
	for g, pid := range pids[:len(pids)-1] {
		st, err := reap(pid, drainTimeout+10*time.Second)
		if err != nil {
			t.Errorf("generation %d: %v", g+1, err)
			continue
		}
		reaped[pid] = true
		exitStatus[pid] = st
	}
	if st, err := reap(last, drainTimeout+10*time.Second); err != nil {
		t.Errorf("generation %d: %v", lastGen, err)
	} else {
		reaped[last] = true
		exitStatus[last] = st
	}
	exits := map[string]int{}
	for pid, st := range exitStatus {
		exits[st]++
		if st != "exit status 0" && st != reapedByParent {
			t.Errorf("PID %d: %s; want exit status 0", pid, st)
		}
	}

	// The servers' logs, by key: 10 handovers, and every generation drained
	// completely (gRPC stopped gracefully, not at the deadline).
	events := readEvents(t, logPath)
	if n := events.count("handed_over"); n != *upgrades {
		t.Errorf("%d event=handed_over lines; want %d", n, *upgrades)
	}
	for _, bad := range []string{"upgrade_failed", "successor_died", "serve_failed", "drain_deadline"} {
		if n := events.count(bad); n != 0 {
			t.Errorf("%d event=%s lines; want none", n, bad)
		}
	}
	exitLines := events.with("exit")
	if len(exitLines) != lastGen {
		t.Errorf("%d event=exit lines; want one per generation (%d)", len(exitLines), lastGen)
	}
	for _, e := range exitLines {
		if e["via"] != via || e["drain"] != "complete" || (via == "grpc" && e["grpc_stop"] != "graceful") {
			t.Errorf("generation %v exited with via=%v drain=%v grpc_stop=%v; want %s, complete (and graceful)", e["gen"], e["via"], e["drain"], e["grpc_stop"], via)
		}
	}

	r := ld.result()
	t.Logf("%d upgrades, %d generations, %s; RPCs: %d unary, %d streams of %d messages (%d of them went on while their server drained), %d witness streams of %d open across a handover; failed: %d",
		*upgrades, lastGen, time.Since(start).Round(time.Millisecond), r.unary, r.streams, streamLen, r.crossed, witnessOK, witnessLen, r.failed)
	t.Logf("generations exited: %v", exits)
	if r.failed != 0 {
		t.Errorf("%d RPCs failed; first errors:\n  %s", r.failed, strings.Join(r.errs, "\n  "))
	}
	for g := 1; g <= lastGen; g++ {
		if r.unaryBy[g] == 0 || r.streamsBy[g] == 0 {
			t.Errorf("generation %d answered %d unary calls and %d streams; want some of each", g, r.unaryBy[g], r.streamsBy[g])
		}
	}
	if r.unary == 0 || r.streams == 0 {
		t.Errorf("no load ran: %d unary calls, %d streams", r.unary, r.streams)
	}
}

// load runs the gRPC clients: unary workers calling Info in a loop and stream workers
// reading short Count streams in a loop, each on its own connection. No retry policy:
// gRPC retries transparently only what the server never saw; every error counts.
type load struct {
	t    testing.TB
	addr string
	ctx  context.Context
	quit context.CancelFunc
	wg   sync.WaitGroup
	once sync.Once

	unary, streams, messages, failed atomic.Int64
	crossed                          atomic.Int64 // streams that went on while their server drained

	mu        sync.Mutex
	errs      []string
	unaryBy   map[int]int // generation -> unary calls it answered
	streamsBy map[int]int // generation -> streams it served to the end
	pidOf     map[int]int // generation -> PID
	changed   chan struct{}
}

func newLoad(t testing.TB, addr string) *load {
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	return &load{t: t, addr: addr, ctx: ctx, quit: cancel,
		unaryBy: map[int]int{}, streamsBy: map[int]int{}, pidOf: map[int]int{}, changed: make(chan struct{})}
}

func (l *load) start() {
	for range unaryWorkers {
		c := l.client()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < maxUnary && l.ctx.Err() == nil; i++ {
				l.oneUnary(c)
			}
		}()
	}
	for range dialWorkers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < maxDials && l.ctx.Err() == nil; i++ {
				cc, err := grpc.NewClient(l.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					l.fail("NewClient: %v", err)
					return
				}
				l.oneUnary(demopb.NewClient(cc))
				cc.Close()
			}
		}()
	}
	for range streamWorkers {
		c := l.client()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for l.ctx.Err() == nil {
				l.oneStream(c)
			}
		}()
	}
}

// stop ends the load and waits for its workers. Calls have their own contexts: the
// stop cuts none short, so every error counts.
func (l *load) stop() {
	l.once.Do(func() {
		l.quit()
		l.wg.Wait()
	})
}

func (l *load) client() *demopb.Client {
	cc, err := grpc.NewClient(l.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cc.Close() })
	return demopb.NewClient(cc)
}

func (l *load) oneUnary(c *demopb.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	r, err := c.Info(ctx, &demopb.InfoRequest{})
	if err != nil {
		l.fail("Info: %v", err)
		return
	}
	l.unary.Add(1)
	l.answered(r.Generation, r.PID, false)
}

func (l *load) oneStream(c *demopb.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	s, err := c.Count(ctx, &demopb.CountRequest{N: streamLen})
	if err != nil {
		l.fail("Count: %v", err)
		return
	}
	var first demopb.CountReply
	drained := false
	for seq := 1; ; seq++ {
		m, err := s.Recv()
		if err == io.EOF && seq == streamLen+1 {
			break
		}
		if err != nil {
			l.fail("Count: message %d of %d: %v", seq, streamLen, err)
			return
		}
		l.messages.Add(1)
		drained = drained || m.Draining
		if seq == 1 {
			first = *m
		}
		if m.Seq != seq || m.PID != first.PID || m.Generation != first.Generation {
			l.fail("Count: message %d is %+v after %+v", seq, *m, first)
			return
		}
	}
	l.streams.Add(1)
	if drained {
		l.crossed.Add(1)
	}
	l.answered(first.Generation, first.PID, true)
}

func (l *load) fail(format string, args ...any) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

func (l *load) answered(gen, pid int, stream bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if stream {
		l.streamsBy[gen]++
	} else {
		l.unaryBy[gen]++
	}
	if l.pidOf[gen] == 0 {
		l.pidOf[gen] = pid
	} else if l.pidOf[gen] != pid {
		l.failed.Add(1)
		l.errs = append(l.errs, fmt.Sprintf("generation %d answered from PID %d and PID %d", gen, l.pidOf[gen], pid))
	}
	if (stream && l.streamsBy[gen] == 1) || (!stream && l.unaryBy[gen] == 1) {
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// waitAnswered waits until generation gen, as PID pid, has answered a unary call and
// served a stream to the load.
func (l *load) waitAnswered(gen, pid int, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		u, s, p, changed := l.unaryBy[gen], l.streamsBy[gen], l.pidOf[gen], l.changed
		l.mu.Unlock()
		if u > 0 && s > 0 {
			if p != pid {
				return fmt.Errorf("generation %d answered from PID %d; want %d", gen, p, pid)
			}
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("generation %d (PID %d) answered %d unary calls and %d streams within %s; want some of each", gen, pid, u, s, timeout)
		case <-l.ctx.Done():
			return fmt.Errorf("the load ended (%v) before generation %d answered", l.ctx.Err(), gen)
		}
	}
}

type loadResult struct {
	unary, streams, messages, failed, crossed int64
	errs                                      []string
	unaryBy, streamsBy                        map[int]int
}

func (l *load) result() loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadResult{unary: l.unary.Load(), streams: l.streams.Load(), messages: l.messages.Load(),
		failed: l.failed.Load(), crossed: l.crossed.Load(), errs: append([]string(nil), l.errs...), unaryBy: l.unaryBy, streamsBy: l.streamsBy}
}

// witness is a long Count stream opened on generation gen (PID pid) before it is
// upgraded.
type witness struct {
	gen, pid int
	cc       *grpc.ClientConn
	stream   grpc.ServerStreamingClient[demopb.CountReply]
	cancel   context.CancelFunc
}

// openWitness opens the stream on its own connection and reads its first message,
// so that the stream is known to be served by pid.
func openWitness(addr string, gen, pid int) (*witness, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), witnessLen*tick+callTimeout)
	w := &witness{gen: gen, pid: pid, cc: cc, cancel: cancel}
	w.stream, err = demopb.NewClient(cc).Count(ctx, &demopb.CountRequest{N: witnessLen})
	if err == nil {
		err = w.check(1)
	}
	if err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

func (w *witness) check(seq int) error {
	m, err := w.stream.Recv()
	if err != nil {
		return fmt.Errorf("witness stream on generation %d: message %d of %d: %w", w.gen, seq, witnessLen, err)
	}
	if m.Seq != seq || m.PID != w.pid || m.Generation != w.gen {
		return fmt.Errorf("witness stream on generation %d (PID %d): message %d is %+v", w.gen, w.pid, seq, *m)
	}
	if seq == 1 && m.Draining {
		return fmt.Errorf("witness stream on generation %d: already draining at its first message", w.gen)
	}
	if seq == witnessLen && !m.Draining {
		return fmt.Errorf("witness stream on generation %d: its last message (%d ticks after its upgrade began) was sent before the generation drained", w.gen, witnessLen)
	}
	return nil
}

// finish reads the rest of the stream: every message, from the same process, the
// last ones sent while it drained, then the stream's clean end.
func (w *witness) finish() error {
	defer w.close()
	for seq := 2; seq <= witnessLen; seq++ {
		if err := w.check(seq); err != nil {
			return err
		}
	}
	if _, err := w.stream.Recv(); err != io.EOF {
		return fmt.Errorf("witness stream on generation %d: after %d messages: %v; want the stream's end", w.gen, witnessLen, err)
	}
	return nil
}

func (w *witness) close() {
	w.cancel()
	w.cc.Close()
}

// reload runs `handover reload` and returns the new generation's PID and number
// from its output ("upgraded: PID P, generation G").
func reload(ctl string) (pid, gen int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bins.handover, "reload", "-control", ctl, "-timeout", "45s")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("handover reload: %v: %s%s", err, stdout.Bytes(), stderr.Bytes())
	}
	if _, err := fmt.Sscanf(stdout.String(), "upgraded: PID %d, generation %d", &pid, &gen); err != nil {
		return 0, 0, fmt.Errorf("handover reload printed %q: %v", stdout.String(), err)
	}
	return pid, gen, nil
}

// serverStatus is the part of `handover status -json` the test reads.
type serverStatus struct {
	PID         int    `json:"pid"`
	Generation  int    `json:"generation"`
	State       string `json:"state"`
	Connections struct {
		Active   int    `json:"active"`
		Accepted uint64 `json:"accepted"`
	} `json:"connections"`
}

func handoverStatus(ctl string) (serverStatus, error) {
	var st serverStatus
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.handover, "status", "-control", ctl, "-json").Output()
	if err != nil {
		return st, fmt.Errorf("handover status -json: %v: %s", err, out)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("handover status -json printed %q: %v", out, err)
	}
	return st, nil
}

// reapedByParent is reap's status for a generation that its own parent, an older
// generation still draining, reaped: this process cannot see how it exited.
const reapedByParent = "reaped by its parent"

// reap waits up to timeout for pid to exit and returns how it exited. It reaps pid
// with wait4(pid) once pid is this process's child (reparented to it as a
// subreaper); a generation whose parent is still alive is that parent's to reap, and
// is done when it has vanished from /proc.
func reap(pid int, timeout time.Duration) (string, error) {
	if pid <= 1 {
		return "", fmt.Errorf("refusing to wait for PID %d", pid)
	}
	var last error
	err := waitFor(timeout, fmt.Sprintf("PID %d to exit", pid), func() bool {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case err == nil && got == pid:
			switch {
			case ws.Exited():
				last = fmt.Errorf("exit status %d", ws.ExitStatus())
			case ws.Signaled():
				last = fmt.Errorf("killed by %v", ws.Signal())
			default:
				last = fmt.Errorf("wait status %#x", uint32(ws))
			}
			return true
		case errors.Is(err, unix.ECHILD):
			if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(serr, os.ErrNotExist) {
				last = errors.New(reapedByParent)
				return true
			}
		}
		return false
	})
	if err != nil {
		return "", err
	}
	return last.Error(), nil
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for pause := time.Millisecond; ; pause = min(2*pause, 20*time.Millisecond) {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(pause)
	}
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	return pid
}

// freeAddr returns a loopback address whose port, below the ephemeral range (32768),
// nothing listens on right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	first := os.Getpid() % 12000
	for i := range 12000 {
		port := 20000 + (first+i)%12000
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatal("no free port in 20000-31999 on 127.0.0.1")
	return ""
}

// events are the servers' JSON log lines.
type events []map[string]any

func readEvents(t testing.TB, path string) events {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out events
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (e events) with(event string) []map[string]any {
	var out []map[string]any
	for _, m := range e {
		if m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

func (e events) count(event string) int { return len(e.with(event)) }

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
