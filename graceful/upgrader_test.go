//go:build linux

package graceful

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// These tests run a whole Upgrader (newUpgrader) with fake children (seams.start):
// no process is started, but the handover channel is a real socket pair, so that
// what a new generation is started with (its arguments, environment, descriptors and
// initial batch) is checked as a child would see it. newUpgrader still reads the
// process's inherited sockets (nothing here), registers signal handlers (stopped at
// cleanup) and starts the machine's goroutine, which outlives the test. The machine
// itself, driven by hand with a fake clock, is tested in machine_test.go.

// fakeChild is a started "process": the test plays the new generation on the
// child's end of the handover channel, which stays open after the "process" exits
// or is killed, so that the test can read what it was sent last.
type fakeChild struct {
	pid  int
	spec childSpec
	ch   *handoff.Channel // the child's end
	// batch is the initial batch the parent sent (up to "end").
	batch []handoff.Message
	// history is the last "history" the parent sent.
	history string

	exitOnce sync.Once
	exited   chan struct{}
	mu       sync.Mutex
	killed   bool
	released bool
}

func (c *fakeChild) Pid() int                { return c.pid }
func (c *fakeChild) Exited() <-chan struct{} { return c.exited }
func (c *fakeChild) ExitStatus() string      { return "" }
func (c *fakeChild) exit()                   { c.exitOnce.Do(func() { close(c.exited) }) }

func (c *fakeChild) Kill() {
	c.mu.Lock()
	c.killed = true
	c.mu.Unlock()
	c.exit()
}

func (c *fakeChild) Release() {
	c.mu.Lock()
	c.released = true
	c.mu.Unlock()
}

func (c *fakeChild) wasKilled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killed
}

// fakeStarter is a startFunc that hands each started child to the test.
type fakeStarter struct {
	t       *testing.T
	started chan *fakeChild
	err     error
	mu      sync.Mutex
	nextPID int
}

func newFakeStarter(t *testing.T) *fakeStarter {
	return &fakeStarter{t: t, started: make(chan *fakeChild, 8), nextPID: 1 << 22}
}

func (s *fakeStarter) start(spec childSpec) (child, error) {
	if s.err != nil {
		return nil, s.err
	}
	if len(spec.files) == 0 {
		return nil, errors.New("fake start: no handover channel passed")
	}
	// The caller closes its copy of the child's end once we return, as after a
	// real fork; the fake child keeps a duplicate.
	fd, err := unix.FcntlInt(spec.files[len(spec.files)-2].Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ch, err := handoff.NewChannel(os.NewFile(uintptr(fd), "fake-child-channel"))
	if err != nil {
		return nil, err
	}
	ch.SetDeadline(time.Now().Add(waitBound))
	s.mu.Lock()
	s.nextPID++
	c := &fakeChild{pid: s.nextPID, spec: spec, ch: ch, exited: make(chan struct{})}
	s.mu.Unlock()
	read := make(chan struct{})
	s.t.Cleanup(func() {
		c.exit()
		c.ch.Close()
		<-read
		closeMessages(c.batch)
	})
	// The initial batch comes once the child has started, as for a real child: the
	// test gets the child once it is read (next fails if it never comes).
	go func() {
		defer close(read)
		for {
			m, err := ch.Receive()
			if err != nil {
				return
			}
			if m.Verb == handoff.End {
				break
			}
			c.batch = append(c.batch, m)
		}
		s.started <- c
	}()
	return c, nil
}

func (s *fakeStarter) next(t *testing.T) *fakeChild {
	t.Helper()
	select {
	case c := <-s.started:
		return c
	case <-time.After(waitBound):
		t.Fatal("no child started")
		return nil
	}
}

// testLog sends an Upgrader's logs to t.Log until the test ends (the Upgrader's
// goroutines outlive it).
type testLog struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(b), "\n"))
	}
	return len(b), nil
}

func newTestUpgrader(t *testing.T, cfg Config, s *fakeStarter) *Upgrader {
	t.Helper()
	if _, ok := os.LookupEnv("NOTIFY_SOCKET"); !ok {
		t.Setenv("NOTIFY_SOCKET", "")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	w := &testLog{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	cfg.Logger = slog.New(slog.NewTextHandler(w, nil))
	cfg.Executable = exe
	if cfg.Args == nil {
		cfg.Args = []string{"-test.run=^$", "serve"}
	}
	u, err := newUpgrader(cfg, seams{start: s.start})
	if err != nil {
		t.Fatalf("newUpgrader: %v", err)
	}
	t.Cleanup(func() { signal.Stop(u.sigs) })
	return u
}

type upgradeOutcome struct {
	pid int
	err error
}

func upgradeAsync(u *Upgrader) <-chan upgradeOutcome {
	res := make(chan upgradeOutcome, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitBound)
		defer cancel()
		pid, err := u.Upgrade(ctx)
		res <- upgradeOutcome{pid, err}
	}()
	return res
}

func outcome(t *testing.T, res <-chan upgradeOutcome) upgradeOutcome {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(waitBound):
		t.Fatal("Upgrade did not return")
		return upgradeOutcome{}
	}
}

func exitClosed(u *Upgrader) bool {
	select {
	case <-u.Exit():
		return true
	default:
		return false
	}
}

// expect reads what the parent says until verb, skipping the history, counts and
// stats a parent sends along (see handoff.Message).
func (c *fakeChild) expect(t *testing.T, verb string) handoff.Message {
	t.Helper()
	m, err := c.ch.Receive()
	for err == nil && m.Verb != verb && (m.Verb == handoff.History || m.Verb == handoff.Above || m.Verb == handoff.Drained) {
		if m.Verb == handoff.History {
			c.history = m.Text
		}
		m, err = c.ch.Receive()
	}
	if err != nil || m.Verb != verb {
		t.Fatalf("child %d received %+v, %v; want %q", c.pid, m, err, verb)
	}
	return m
}

func TestUpgradeBeforeReady(t *testing.T) {
	s := newFakeStarter(t)
	u := newTestUpgrader(t, Config{}, s)
	if st := u.Status(); st.State != "starting" || st.Generation != 1 {
		t.Fatalf("Status = %+v", st)
	}
	if r := outcome(t, upgradeAsync(u)); !errors.Is(r.err, errNotReady) {
		t.Fatalf("Upgrade before Ready: %v; want errNotReady", r.err)
	}
	if len(s.started) != 0 {
		t.Fatal("a child was started before Ready")
	}
}

func TestUpgradeHandsOver(t *testing.T) {
	s := newFakeStarter(t)
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	u := newTestUpgrader(t, Config{PIDFile: pidfile, Args: []string{"-flag", "value"}}, s)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, pidfile); got != strconv.Itoa(os.Getpid())+"\n" {
		t.Fatalf("PID file after Ready: %q", got)
	}
	res := upgradeAsync(u)
	c := s.next(t)

	// What the new generation is started with.
	if want := append([]string{u.m.exe}, "-flag", "value"); c.spec.path != u.m.exe || !slices.Equal(c.spec.args, want) {
		t.Fatalf("started %q %q; want %q %q", c.spec.path, c.spec.args, u.m.exe, want)
	}
	if c.spec.sibling {
		t.Fatal("started as a sibling without a service manager")
	}
	var marker string
	for _, kv := range c.spec.env {
		if v, ok := strings.CutPrefix(kv, handoff.MarkerEnv+"="); ok {
			marker = v
		}
	}
	m, err := handoff.ParseMarker(marker)
	if err != nil {
		t.Fatalf("marker %q: %v", marker, err)
	}
	if m.PID != os.Getpid() || m.PPID != os.Getpid() || m.Generation != 2 || m.Channel != handoff.ListenFDsStart+len(c.spec.files)-2 || m.Stderr != m.Channel+1 || c.spec.stderr == nil {
		t.Fatalf("marker %+v; want this process as parent, generation 2, channel at fd %d, our stderr after it, a pipe at fd 2", m, handoff.ListenFDsStart+len(c.spec.files)-2)
	}
	// The loop learns the child's PID once the start returns (an event).
	eventually(t, "Status to show the upgrade", func() bool {
		st := u.Status()
		return st.State == "upgrading" && st.Upgrading == c.pid
	})
	if r := outcome(t, upgradeAsync(u)); !errors.Is(r.err, ErrUpgradeInProgress) {
		t.Fatalf("second Upgrade: %v; want ErrUpgradeInProgress", r.err)
	}
	if exitClosed(u) {
		t.Fatal("Exit closed before the new generation was ready")
	}

	if err := c.ch.Send(handoff.Message{Verb: "ready", PID: c.pid}, time.Second); err != nil {
		t.Fatal(err)
	}
	c.expect(t, "main")
	r := outcome(t, res)
	if r.err != nil || r.pid != c.pid {
		t.Fatalf("Upgrade = %d, %v; want %d", r.pid, r.err, c.pid)
	}
	// The new generation was handed the history, this upgrade in it.
	h, err := decodeHistory(c.history)
	if err != nil || len(h.Records) != 1 || h.Records[0].Outcome != "ok" || h.Records[0].To != c.pid || h.Records[0].From != os.Getpid() || h.Records[0].Trigger != "API" || h.Outcomes["ok"] != 1 {
		t.Fatalf("history handed over: %+v, %v", h, err)
	}
	select {
	case <-u.Exit():
	case <-time.After(waitBound):
		t.Fatal("Exit not closed after handing over")
	}
	// Nothing to drain (no Server, no Drainer): the process is done at once.
	if err := u.Wait(); err != nil {
		t.Fatalf("Wait after handing over: %v", err)
	}
	if st := u.Status(); st.State != "exited" || st.Upgrading != 0 {
		t.Fatalf("Status after handing over = %+v", st)
	}
	if r := outcome(t, upgradeAsync(u)); r.err == nil || !strings.Contains(r.err.Error(), strconv.Itoa(c.pid)) {
		t.Fatalf("Upgrade after handing over: %v; want a pointer to PID %d", r.err, c.pid)
	}
	if c.wasKilled() {
		t.Fatal("the new generation was killed")
	}
	// The successor retires in turn and exits: nothing is restarted.
	c.ch.Send(handoff.Message{Verb: "done"}, time.Second)
	c.exit()
}

func TestUpgradeMissingExecutable(t *testing.T) {
	s := newFakeStarter(t)
	u := newTestUpgrader(t, Config{}, s)
	u.m.exe = filepath.Join(t.TempDir(), "gone")
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	if r := outcome(t, upgradeAsync(u)); r.err == nil || !strings.Contains(r.err.Error(), "does not exist") {
		t.Fatalf("Upgrade = %v", r.err)
	}
	if len(s.started) != 0 {
		t.Fatal("started a missing executable")
	}
}

func TestStopDuringUpgrade(t *testing.T) {
	s := newFakeStarter(t)
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	u := newTestUpgrader(t, Config{PIDFile: pidfile}, s)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	res := upgradeAsync(u)
	c := s.next(t)
	u.Stop()
	if !exitClosed(u) {
		t.Fatal("Exit not closed by Stop")
	}
	c.expect(t, "abort")
	if r := outcome(t, res); r.err == nil || !strings.Contains(r.err.Error(), "stopping") {
		t.Fatalf("Upgrade = %v; want it abandoned", r.err)
	}
	eventually(t, "the child to be killed", c.wasKilled)
	if err := u.Wait(); err != nil {
		t.Fatalf("Wait after Stop: %v", err)
	}
	if st := u.Status(); st.State != "exited" {
		t.Fatalf("Status = %+v", st)
	}
	if _, err := os.Stat(pidfile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("PID file after Stop: %v; want it removed", err)
	}
	if r := outcome(t, upgradeAsync(u)); !errors.Is(r.err, errStopping) {
		t.Fatalf("Upgrade while stopping: %v", r.err)
	}
	u.Stop() // again: nothing happens
}

// Under a service manager, the new generation is told it is the main one only after
// the manager has confirmed (BARRIER=1) that it knows the new MAINPID.
func TestUpgradeUnderServiceManager(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	mgr, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	type datagram struct {
		state string
		fds   []int
	}
	got := make(chan datagram, 64)
	go func() {
		for {
			buf := make([]byte, 4096)
			oob := make([]byte, unix.CmsgSpace(4*16))
			n, oobn, _, _, err := mgr.ReadMsgUnix(buf, oob)
			if err != nil {
				close(got)
				return
			}
			var fds []int
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if r, err := unix.ParseUnixRights(&m); err == nil {
						fds = append(fds, r...)
					}
				}
			}
			got <- datagram{string(buf[:n]), fds}
		}
	}()
	// next returns the next notification containing want, closing the descriptors
	// of the ones it skips.
	next := func(want string) datagram {
		t.Helper()
		bound := time.After(waitBound)
		for {
			select {
			case d, ok := <-got:
				if !ok {
					t.Fatalf("manager socket closed waiting for %q", want)
				}
				if strings.Contains(d.state, want) {
					return d
				}
				for _, fd := range d.fds {
					unix.Close(fd)
				}
			case <-bound:
				t.Fatalf("the manager never received %q", want)
			}
		}
	}

	t.Setenv("NOTIFY_SOCKET", sock)
	s := newFakeStarter(t)
	u := newTestUpgrader(t, Config{}, s)
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	if d := next("READY=1"); !strings.Contains(d.state, "MAINPID="+strconv.Itoa(os.Getpid())) {
		t.Fatalf("Ready notified %q", d.state)
	}
	res := upgradeAsync(u)
	if d := next("RELOADING=1"); !strings.Contains(d.state, "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING=1 without MONOTONIC_USEC: %q", d.state)
	}
	c := s.next(t)
	if !c.spec.sibling {
		t.Fatal("not started as a sibling under a service manager")
	}
	c.ch.Send(handoff.Message{Verb: "ready", PID: c.pid}, time.Second)
	if d := next("MAINPID=" + strconv.Itoa(c.pid)); !strings.Contains(d.state, "READY=1") {
		t.Fatalf("handover notification %q", d.state)
	}
	barrier := next("BARRIER=1")
	if len(barrier.fds) != 1 {
		t.Fatalf("BARRIER=1 with %d descriptors", len(barrier.fds))
	}
	mainc := make(chan error, 1)
	go func() {
		m, err := c.ch.Receive()
		for err == nil && m.Verb == handoff.History {
			m, err = c.ch.Receive()
		}
		if err == nil && m.Verb != "main" {
			err = errors.New("got " + m.String())
		}
		mainc <- err
	}()
	// That the child hears "main" only once the barrier is confirmed is checked by
	// hand, without waiting, in TestMachineWaitsForBarrier.
	unix.Close(barrier.fds[0])
	select {
	case err := <-mainc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitBound):
		t.Fatal("the child was not told it is main after the barrier")
	}
	if r := outcome(t, res); r.err != nil || r.pid != c.pid {
		t.Fatalf("Upgrade = %d, %v", r.pid, r.err)
	}
	// Upgrade's result is sent before the machine closes Exit (see
	// machine.handedOver), so wait for it rather than check it at once.
	select {
	case <-u.Exit():
	case <-time.After(waitBound):
		t.Fatal("Exit not closed after handing over")
	}
	c.mu.Lock()
	released := c.released
	c.mu.Unlock()
	if !released {
		t.Fatal("the new main process is still watched; systemd supervises it")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadInit: a new generation reads its parent's initial batch up to "end"; if the
// parent goes away before it has sent it all (it makes the batch once the child has
// started), the child carries on without the rest, as after a parent lost before the
// handover; a parent that abandons the upgrade meanwhile makes it fail.
func TestReadInit(t *testing.T) {
	for _, c := range []struct {
		name   string
		send   []handoff.Message
		hangUp bool
		err    string
		lost   bool
	}{
		{"whole", []handoff.Message{{Verb: handoff.Above, N: 2}, {Verb: handoff.End}}, false, "", false},
		{"parent gone", []handoff.Message{{Verb: handoff.Above, N: 2}}, true, "", true},
		{"abandoned", []handoff.Message{{Verb: handoff.Above, N: 2}, {Verb: handoff.Abort, Text: "the process is stopping"}}, false, "abandoned the upgrade: the process is stopping", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			u := newTestUpgrader(t, Config{}, newFakeStarter(t))
			logs := &syncBuffer{}
			u.log = slog.New(slog.NewTextHandler(logs, nil))
			parent, childEnd, err := handoff.SocketPair()
			if err != nil {
				t.Fatal(err)
			}
			defer parent.Close()
			child, err := handoff.NewChannel(childEnd)
			if err != nil {
				t.Fatal(err)
			}
			defer child.Close()
			for _, m := range c.send {
				if err := parent.Send(m, time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if c.hangUp {
				parent.Close()
			}
			err = u.readInit(child)
			if (err == nil) != (c.err == "") || err != nil && !strings.Contains(err.Error(), c.err) {
				t.Fatalf("readInit: %v; want %q", err, c.err)
			}
			if u.m.line.above != 2 {
				t.Errorf("above %d; want 2", u.m.line.above)
			}
			if lost := strings.Contains(logs.String(), "event=parent_lost"); lost != c.lost {
				t.Errorf("parent_lost logged: %v; want %v", lost, c.lost)
			}
		})
	}
}

// TestStopAsItTakesOver: a new generation stopped after it told its parent it is
// ready, before its machine heard it is (the parent has handed over: the PID file
// names it, whoever asked for the upgrade has the answer), tells the parent "done"
// as a ready one stopped does, so that the parent, standing by for its probation,
// finishes rather than taking its exit for a crash and serving again; it does not
// finish (Wait) before. One stopped before it told its parent it is ready, or a
// prepared one stopped before its commit ("main"), tells it nothing and finishes
// as it would have: the parent takes its exit for a death, and serves on.
func TestStopAsItTakesOver(t *testing.T) {
	for _, c := range []struct {
		name     string
		early    bool // stopped before Ready
		prepared bool // told "prepare" in its initial batch: "main" is its commit
	}{{"after ready", false, false}, {"before ready", true, false}, {"prepared", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			u := newTestUpgrader(t, Config{}, newFakeStarter(t))
			parent, end, err := handoff.SocketPair()
			if err != nil {
				t.Fatal(err)
			}
			defer parent.Close()
			parent.SetDeadline(time.Now().Add(waitBound))
			if u.parent.ch, err = handoff.NewChannel(end); err != nil {
				t.Fatal(err)
			}
			if c.prepared {
				u.hold() // as readInit does on "prepare"
			}
			if c.early {
				u.Stop()
			}
			ready := make(chan error, 1)
			go func() { ready <- u.Ready() }()
			if m, err := parent.Receive(); err != nil || m.Verb != handoff.Ready {
				t.Fatalf("the parent heard %+v, %v; want ready", m, err)
			}
			if !c.early {
				u.Stop()
				want := "stopping" // held until the parent has heard "done"
				if c.prepared {
					want = "exited"
				}
				if st := u.Status(); st.State != want {
					t.Fatalf("after the stop: %s; want %s", st.State, want)
				}
			}
			if err := parent.Send(handoff.Message{Verb: handoff.Main}, waitBound); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-ready:
				if err != nil {
					t.Fatalf("Ready: %v", err)
				}
			case <-time.After(waitBound):
				t.Fatal("Ready did not return")
			}
			m, err := parent.Receive()
			switch done := !c.early && !c.prepared; {
			case !done && !errors.Is(err, io.EOF):
				t.Fatalf("the parent heard %+v, %v; want the channel closed, nothing said", m, err)
			case done && (err != nil || m.Verb != handoff.Done):
				t.Fatalf("the parent heard %+v, %v; want done", m, err)
			}
			waited := make(chan error, 1)
			go func() { waited <- u.Wait() }()
			select {
			case <-waited:
			case <-time.After(waitBound):
				t.Fatal("Wait did not return")
			}
		})
	}
}
