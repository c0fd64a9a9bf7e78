//go:build linux

package graceful

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// The machines driven by hand, as internal/master's machine is in its tests: the
// test goroutine is the machine's (it calls handle), fake processes (an exit
// channel, a handover channel made of Go channels, a real pipe for stderr), a fake
// clock the test moves, the machine's own timers fired by the test, and what the
// service manager hears recorded. Nothing here starts a process, sends a signal or
// waits for the real clock. The goroutines of an attempt and of a successor watch
// run; every step waits for what they post (waitBound only bounds a broken
// machine).

// fakeProc is a started process.
type fakeProc struct {
	pid    int
	exited chan struct{}
	once   sync.Once

	mu       sync.Mutex
	status   string
	killed   bool
	released bool
	slow     bool // a killed process lives on until the test ends it
}

func (p *fakeProc) Pid() int                { return p.pid }
func (p *fakeProc) Exited() <-chan struct{} { return p.exited }

func (p *fakeProc) ExitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

func (p *fakeProc) exit(status string) {
	p.once.Do(func() {
		p.mu.Lock()
		p.status = status
		p.mu.Unlock()
		close(p.exited)
	})
}

func (p *fakeProc) Kill() {
	p.mu.Lock()
	p.killed = true
	slow := p.slow
	p.mu.Unlock()
	if !slow {
		p.exit("signal: killed")
	}
}

func (p *fakeProc) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.released = true
}

func (p *fakeProc) wasKilled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

func (p *fakeProc) wasReleased() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.released
}

// fakeChannel is one end of a handover channel made of Go channels: the test says
// what the other end says (say, hangUp) and reads what this end sent (next).
type fakeChannel struct {
	in       chan handoff.Message // what Receive returns; closed: the other end hung up
	sent     chan handoff.Message // what Send sent, its files duplicated as a socket would
	closed   chan struct{}
	once     sync.Once
	inOnce   sync.Once
	failSend atomic.Bool

	dmu     sync.Mutex
	expired chan struct{} // closed while the read deadline has passed
}

func newFakeChannel() *fakeChannel {
	return &fakeChannel{in: make(chan handoff.Message, 16), sent: make(chan handoff.Message, 64), closed: make(chan struct{}), expired: make(chan struct{})}
}

// SetReadDeadline, as a socket's: once t has passed, Receive takes no message.
func (c *fakeChannel) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	passed := isDone(c.expired)
	switch {
	case !t.IsZero() && !t.After(time.Now()) && !passed:
		close(c.expired)
	case (t.IsZero() || t.After(time.Now())) && passed:
		c.expired = make(chan struct{})
	}
	return nil
}

// readStopped reports whether the read deadline has passed.
func (c *fakeChannel) readStopped() bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return isDone(c.expired)
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (c *fakeChannel) Send(m handoff.Message, _ time.Duration) error {
	if c.failSend.Load() {
		return syscall.EPIPE
	}
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
	}
	var files []*os.File
	for _, f := range m.Files {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		files = append(files, os.NewFile(uintptr(fd), f.Name()))
	}
	m.Files = files
	c.sent <- m
	return nil
}

func (c *fakeChannel) Receive() (handoff.Message, error) {
	c.dmu.Lock()
	expired := c.expired
	c.dmu.Unlock()
	if isDone(expired) {
		return handoff.Message{}, os.ErrDeadlineExceeded // what came stays queued
	}
	select {
	case <-expired:
		return handoff.Message{}, os.ErrDeadlineExceeded
	case m, ok := <-c.in:
		if !ok {
			return handoff.Message{}, io.EOF
		}
		return m, nil
	case <-c.closed:
		return handoff.Message{}, net.ErrClosed
	}
}

func (c *fakeChannel) Close()                  { c.once.Do(func() { close(c.closed) }) }
func (c *fakeChannel) File() (*os.File, error) { return os.Open(os.DevNull) }
func (c *fakeChannel) say(m handoff.Message)   { c.in <- m }
func (c *fakeChannel) hangUp()                 { c.inOnce.Do(func() { close(c.in) }) }

func (c *fakeChannel) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// next returns the next message this end sent.
func (c *fakeChannel) next(t *testing.T) handoff.Message {
	t.Helper()
	select {
	case m := <-c.sent:
		t.Cleanup(func() { closeFiles(m.Files) })
		return m
	case <-time.After(waitBound):
		t.Fatal("nothing was sent on the channel")
		return handoff.Message{}
	}
}

// expect returns the next message this end sent, which must be verb.
func (c *fakeChannel) expect(t *testing.T, verb string) handoff.Message {
	t.Helper()
	m := c.next(t)
	if m.Verb != verb {
		t.Fatalf("sent %q; want %q", m.String(), verb)
	}
	return m
}

// nothingSent checks that this end sent nothing (yet).
func (c *fakeChannel) nothingSent(t *testing.T, when string) {
	t.Helper()
	select {
	case m := <-c.sent:
		closeFiles(m.Files)
		t.Fatalf("%s: sent %q; want nothing", when, m.String())
	default:
	}
}

// fakeGen is a new generation the machine started.
type fakeGen struct {
	proc   *fakeProc
	ch     *fakeChannel // the parent's end
	spec   spawnSpec
	batch  []handoff.Message // its initial batch, as spec.batch made it
	stderr *os.File          // the write end of its stderr pipe
}

func (g *fakeGen) pid() int { return g.proc.pid }

// die ends the process as a real one ends: its stderr closes, its channel closes.
func (g *fakeGen) die(status string) {
	g.stderr.Close()
	g.ch.hangUp()
	g.proc.exit(status)
}

// fakeNotifier records what the service manager hears.
type fakeNotifier struct {
	mu       sync.Mutex
	sent     []string
	fail     string        // a notification containing this fails
	barrier  chan struct{} // if set, Barrier waits until it is closed
	barriers chan struct{} // receives when Barrier is called
	barrErr  error
}

func newFakeNotifier() *fakeNotifier { return &fakeNotifier{barriers: make(chan struct{}, 16)} }

func (n *fakeNotifier) Send(state string, fds ...int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail != "" && strings.Contains(state, n.fail) {
		return errors.New("sd_notify: connection refused")
	}
	n.sent = append(n.sent, state)
	return nil
}

func (n *fakeNotifier) Barrier(time.Duration) error {
	n.mu.Lock()
	b := n.barrier
	n.mu.Unlock()
	n.barriers <- struct{}{}
	if b != nil {
		<-b
	}
	return n.barrErr
}

// count returns how many notifications contained s.
func (n *fakeNotifier) count(s string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, st := range n.sent {
		if strings.Contains(st, s) {
			c++
		}
	}
	return c
}

// syncBuffer is a log destination several goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type pendingAfter struct {
	d       time.Duration
	ev      event
	stopped bool
}

// fakeWorld is a machine and the fake fakeWorld around it.
type fakeWorld struct {
	t       *testing.T
	m       *machine
	clock   *fakeClock
	sd      *fakeNotifier
	events  chan event // what goroutines posted to the machine
	spawned chan *fakeGen
	logs    *syncBuffer
	afters  []*pendingAfter
	exits   []os.Signal

	mu        sync.Mutex
	pid       int
	spawnErr  error
	slowDeath bool
}

func newWorld(t *testing.T, mod func(*Config)) *fakeWorld {
	cfg := Config{Args: []string{"serve"}}
	if mod != nil {
		mod(&cfg)
	}
	w := &fakeWorld{t: t, clock: newFakeClock(), events: make(chan event, 256), spawned: make(chan *fakeGen, 8), logs: &syncBuffer{}, pid: 1000}
	tl := &testLog{t: t}
	t.Cleanup(func() {
		tl.mu.Lock()
		tl.done = true
		tl.mu.Unlock()
	})
	m := newMachine(cfg.withDefaults(), new(fds.Set), slog.New(slog.NewTextHandler(io.MultiWriter(w.logs, tl), nil)))
	m.exe = "/opt/app/current/app"
	m.clock = w.clock
	m.post = func(ev event) { w.events <- ev }
	m.spawn = w.spawn
	m.after = func(d time.Duration, ev event) func() bool {
		p := &pendingAfter{d: d, ev: ev}
		w.afters = append(w.afters, p)
		return func() bool { was := !p.stopped; p.stopped = true; return was }
	}
	m.exitNow = func(sig os.Signal) { w.exits = append(w.exits, sig) }
	w.m = m
	return w
}

// withSystemd makes a service manager listen.
func (w *fakeWorld) withSystemd() *fakeWorld {
	w.sd = newFakeNotifier()
	w.m.notifier = w.sd
	return w
}

func (w *fakeWorld) spawn(s spawnSpec) (*generation, error) {
	w.mu.Lock()
	err, slow := w.spawnErr, w.slowDeath
	w.pid++
	pid := w.pid
	w.mu.Unlock()
	if err != nil {
		return nil, err
	}
	r, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	g := &fakeGen{proc: &fakeProc{pid: pid, exited: make(chan struct{}), slow: slow}, ch: newFakeChannel(), spec: s, stderr: wr}
	g.batch = s.batch()
	w.t.Cleanup(func() {
		g.stderr.Close()
		g.proc.exit("")
		closeMessages(g.batch)
	})
	w.spawned <- g
	return newGeneration(g.proc, g.ch, proc.Relay(r, io.Discard)), nil
}

// step handles the next event posted to the machine, and returns it.
func (w *fakeWorld) step() event {
	w.t.Helper()
	select {
	case ev := <-w.events:
		w.m.handle(ev)
		return ev
	case <-time.After(waitBound):
		w.t.Fatal("nothing was posted to the machine")
		return nil
	}
}

// stepTo handles posted events up to the first of type E, and returns it.
func stepTo[E event](w *fakeWorld) E {
	w.t.Helper()
	for {
		if e, ok := w.step().(E); ok {
			return e
		}
	}
}

// quiet checks that nothing is posted to the machine (yet).
func (w *fakeWorld) quiet(when string) {
	w.t.Helper()
	select {
	case ev := <-w.events:
		w.t.Fatalf("%s: %T was posted; want nothing", when, ev)
	default:
	}
}

// stepUntil handles posted events until cond holds.
func (w *fakeWorld) stepUntil(what string, cond func() bool) {
	w.t.Helper()
	for !cond() {
		select {
		case ev := <-w.events:
			w.m.handle(ev)
		case <-time.After(waitBound):
			w.t.Fatalf("nothing was posted to the machine while waiting until %s", what)
		}
	}
}

func (w *fakeWorld) ready() {
	w.t.Helper()
	w.readyWith(nil)
}

func (w *fakeWorld) readyWith(upstream channel) {
	w.t.Helper()
	done := make(chan struct{})
	ev := readyEvent{done: done, child: upstream != nil}
	if upstream != nil {
		ev.upstream = upstream
	}
	w.m.handle(ev)
	if w.m.st == starting {
		w.t.Fatal("still starting after Ready")
	}
}

// reply is the outcome of an upgrade asked for by the test.
type reply struct {
	got bool
	r   upgradeResult
}

func (w *fakeWorld) upgrade() *reply {
	rep := &reply{}
	w.m.handle(upgradeRequest{trigger: "API", reply: func(r upgradeResult) { rep.got, rep.r = true, r }})
	return rep
}

// child waits for the next new generation to start (handling what leads to it), and
// for its attempt to wait for it (its UpgradeTimeout timer is armed).
func (w *fakeWorld) child() *fakeGen {
	w.t.Helper()
	var g *fakeGen
	started := 0
	spawned := w.spawned
	for g == nil || started == 0 {
		select {
		case g = <-spawned:
			spawned = nil
		case ev := <-w.events:
			w.m.handle(ev)
			if e, ok := ev.(attemptStarted); ok {
				started = e.pid
			}
		case <-time.After(waitBound):
			w.t.Fatal("no new generation was started")
		}
	}
	if started != g.pid() {
		w.t.Fatalf("started %d; want %d", started, g.pid())
	}
	w.clock.waitTimer(w.t, w.clock.Now().Add(w.m.cfg.UpgradeTimeout), 1)
	return g
}

// takeOver makes g say "ready" and waits until it has taken over: it hears the
// history and "main".
func (w *fakeWorld) takeOver(g *fakeGen) attemptEnded {
	w.t.Helper()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	g.ch.expect(w.t, handoff.History)
	g.ch.expect(w.t, handoff.Main)
	g.stderr.Close() // it puts its own stderr back
	e := stepTo[attemptEnded](w)
	if e.err != nil {
		w.t.Fatalf("the handover failed: %v", e.err)
	}
	return e
}

// upgradeTo runs a whole upgrade to a new generation, which takes over.
func (w *fakeWorld) upgradeTo() *fakeGen {
	w.t.Helper()
	rep := w.upgrade()
	g := w.child()
	w.takeOver(g)
	if !rep.got || rep.r.err != nil || rep.r.pid != g.pid() {
		w.t.Fatalf("Upgrade = %+v; want PID %d", rep, g.pid())
	}
	return g
}

// failed waits for the attempt to end in failure, and returns its reply.
func (w *fakeWorld) failed(rep *reply, cause string) *upgradeError {
	w.t.Helper()
	e := stepTo[attemptEnded](w)
	if e.err == nil || e.err.Cause != cause {
		w.t.Fatalf("attempt ended with %v; want cause %s", e.err, cause)
	}
	if rep != nil && (!rep.got || !errors.Is(rep.r.err, e.err)) {
		w.t.Fatalf("Upgrade answered %+v; want %v", rep, e.err)
	}
	if !w.logged("upgrade_failed", "cause="+cause) {
		w.t.Fatalf("no upgrade_failed cause=%s logged", cause)
	}
	return e.err
}

var eventRE = regexp.MustCompile(`event=([a-z_]+)`)

// logged reports whether a line with event=ev and every one of attrs (key=value)
// was logged.
func (w *fakeWorld) logged(ev string, attrs ...string) bool {
	for _, line := range strings.Split(w.logs.String(), "\n") {
		if m := eventRE.FindStringSubmatch(line); m == nil || m[1] != ev {
			continue
		}
		all := true
		for _, a := range attrs {
			all = all && strings.Contains(line, " "+a)
		}
		if all {
			return true
		}
	}
	return false
}

// probationTimer returns the pending timer of the successor's probation, or nil.
func (w *fakeWorld) probationTimer() *pendingAfter {
	for _, p := range w.afters {
		if _, ok := p.ev.(probationOver); ok && !p.stopped {
			return p
		}
	}
	return nil
}

// passProbation fires the timer that ends the successor's probation, which must be
// pending, for d.
func (w *fakeWorld) passProbation(d time.Duration) {
	w.t.Helper()
	p := w.probationTimer()
	if p == nil || p.d != d {
		w.t.Fatalf("the probation timer: %+v; want one pending for %s", p, d)
	}
	p.stopped = true
	w.m.handle(p.ev)
}

func (w *fakeWorld) exitClosed() bool {
	select {
	case <-w.m.exit.ch:
		return true
	default:
		return false
	}
}

func (w *fakeWorld) waitDone() error {
	w.t.Helper()
	select {
	case <-w.m.done.ch:
		return w.m.done.err
	default:
		w.t.Fatalf("the process is not done (state %s)", w.m.st)
		return nil
	}
}

// TestMachineUpgrade: a whole upgrade. The new generation is started with the
// machine's initial batch, says "ready", hears its history (this upgrade in it) and
// "main"; whoever asked hears its PID; this process drains, says farewell, and may
// exit.
func TestMachineUpgrade(t *testing.T) {
	w := newWorld(t, nil)
	if rep := w.upgrade(); !errors.Is(rep.r.err, errNotReady) || !w.logged("upgrade_refused", "reason=not_ready") {
		t.Fatalf("Upgrade before Ready: %+v", rep)
	}
	w.ready()
	rep := w.upgrade()
	g := w.child()
	if g.spec.child.path != w.m.exe || g.spec.child.gen != 2 || g.spec.child.sibling {
		t.Fatalf("started %+v", g.spec.child)
	}
	if b := g.batch; len(b) != 2 || b[0].Verb != handoff.History || b[1].Verb != handoff.Above || b[1].N != 1 {
		t.Fatalf("initial batch %v", b)
	}
	if st := w.m.status(); st.State != "upgrading" || st.Upgrading != g.pid() {
		t.Fatalf("Status while upgrading: %+v", st)
	}
	if again := w.upgrade(); !errors.Is(again.r.err, ErrUpgradeInProgress) || !w.logged("upgrade_refused", "reason=in_progress", "child=") {
		t.Fatalf("a second Upgrade: %+v", again)
	}
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	h, err := decodeHistory(g.ch.expect(t, handoff.History).Text)
	if err != nil || len(h.Records) != 1 || h.Records[0].Outcome != "ok" || h.Records[0].To != g.pid() || h.Records[0].Trigger != "API" {
		t.Fatalf("history handed over: %+v, %v", h, err)
	}
	g.ch.expect(t, handoff.Main)
	if w.exitClosed() {
		t.Fatal("Exit closed before the handover was done")
	}
	stepTo[attemptEnded](w)
	if !rep.got || rep.r.err != nil || rep.r.pid != g.pid() {
		t.Fatalf("Upgrade = %+v", rep)
	}
	if !w.exitClosed() || g.proc.wasKilled() || !w.logged("handed_over", "replacement=false") {
		t.Fatalf("after the handover: exit closed %v, killed %v", w.exitClosed(), g.proc.wasKilled())
	}
	// Nothing to drain: once "above" is sent, and the new generation has put its
	// own stderr back (this process relays what it logs until then), "drained"
	// goes out, then the process stands by until the probation is over, then it is
	// done.
	if a := g.ch.expect(t, handoff.Above); a.N != 1 {
		t.Fatalf("above %d; want 1 (this process drains)", a.N)
	}
	stepTo[wakeEvent](w)
	if w.m.line.drained || w.m.st != draining {
		t.Fatal("finished before the new generation put its stderr back")
	}
	g.stderr.Close()
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained })
	if d := g.ch.expect(t, handoff.Drained); !strings.Contains(d.Text, fmt.Sprintf(`"To":%d`, g.pid())) {
		t.Fatalf("drained %q", d.Text)
	}
	if a := g.ch.expect(t, handoff.Above); a.N != 0 {
		t.Fatalf("drained: above %d; want 0 (no older generation drains, this one no more)", a.N)
	}
	w.stepUntil("the messages are sent", func() bool { return w.m.holds.Load() == 0 })
	if w.m.st != draining || !w.m.standingBy() {
		t.Fatalf("state %s; want it standing by", w.m.st)
	}
	w.passProbation(10 * time.Second)
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	if !w.logged("probation_over", "reason=passed") {
		t.Fatalf("after the probation: %s", w.m.st)
	}
	if err := w.waitDone(); err != nil {
		t.Fatalf("Wait: %v, state %s", err, w.m.st)
	}
	if st := w.m.status(); len(st.Upgrades) != 1 || !st.Upgrades[0].Drained {
		t.Fatalf("the upgrade's record: %+v", st.Upgrades)
	}
	if again := w.upgrade(); again.r.moved != g.pid() || !w.logged("upgrade_refused", "reason=handed_over") {
		t.Fatalf("Upgrade after the handover: %+v; want a pointer to %d", again, g.pid())
	}
}

// TestMachineDefersSIGUSR2: a SIGUSR2 that reaches a new generation before it is
// ready runs once it is; before a first generation is ready it is refused.
func TestMachineDefersSIGUSR2(t *testing.T) {
	w := newWorld(t, nil)
	w.m.hasParent = true
	w.m.handle(signalEvent{syscall.SIGUSR2})
	w.m.handle(signalEvent{syscall.SIGUSR2})
	if strings.Count(w.logs.String(), "event=upgrade_deferred") != 1 || w.m.st != starting {
		t.Fatalf("SIGUSR2 before ready: state %s, logs:\n%s", w.m.st, w.logs)
	}
	select {
	case <-w.spawned:
		t.Fatal("a new generation was started before this one was ready")
	default:
	}
	w.ready()
	if w.m.st != upgrading {
		t.Fatalf("after Ready: %s; want the deferred upgrade", w.m.st)
	}
	w.child()

	first := newWorld(t, nil)
	first.m.handle(signalEvent{syscall.SIGUSR2})
	if !first.logged("upgrade_refused", "reason=not_ready", "trigger=SIGUSR2") {
		t.Fatal("a first generation's SIGUSR2 before Ready was not refused")
	}
}

// TestMachineInitialHistory: the history a new generation gets from its parent is
// decoded only when needed, not on the way to its first answers: not by a status
// request before Ready, nor at Ready, where the initial batch's gives way to the
// history with this upgrade in it if the parent sent it before "main"; the first
// status request after Ready decodes it (a bad one is logged as lost).
func TestMachineInitialHistory(t *testing.T) {
	var inherited history
	inherited.add(Upgrade{Trigger: "SIGUSR2", From: 10, To: 11, Generation: 2, Outcome: "ok"})
	text := inherited.encode()
	var withThis history
	withThis.add(Upgrade{Trigger: "SIGUSR2", From: 10, To: 11, Generation: 2, Outcome: "ok"})
	withThis.add(Upgrade{Trigger: "SIGUSR2", From: 11, To: 12, Generation: 3, Outcome: "ok"})
	ready := func(w *fakeWorld, said ...handoff.Message) {
		done := make(chan struct{})
		w.m.handle(readyEvent{done: done, child: true, upstream: newFakeChannel(), said: said})
	}
	for _, c := range []struct {
		name    string
		in      string
		said    []handoff.Message
		records int
		lost    bool
	}{
		{"replaced", text, []handoff.Message{{Verb: handoff.History, Text: withThis.encode()}}, 2, false},
		{"kept", text, nil, 1, false},
		{"bad", "{not json", nil, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, nil)
			w.m.hasParent = true
			in := c.in
			w.m.historyIn = &in
			w.m.handle(adoptEvent{&target{d: new(Drainer)}})
			if len(w.m.history.Records) != 0 || w.m.historyIn == nil {
				t.Fatal("the initial history was decoded before it was needed")
			}
			ready(w, c.said...)
			if w.m.historyIn == nil || len(w.m.history.Records) != 0 {
				t.Fatal("the history was decoded as the process took over, before it was needed")
			}
			reply := make(chan Status, 1)
			w.m.handle(statusRequest{reply})
			<-reply
			if w.m.historyIn != nil || len(w.m.history.Records) != c.records || w.logged("history_lost") != c.lost {
				t.Fatalf("after Ready and Status: %d records, pending %v, history_lost %v; want %d, nil, %v", len(w.m.history.Records), w.m.historyIn, w.logged("history_lost"), c.records, c.lost)
			}
		})
	}
	// Status before Ready (an application asking for its Generation after New)
	// leaves the inherited history undecoded, and shows none; after Ready, with no
	// history from the parent, the inherited one.
	w := newWorld(t, nil)
	w.m.hasParent = true
	w.m.historyIn = &text
	status := func() Status {
		reply := make(chan Status, 1)
		w.m.handle(statusRequest{reply})
		return <-reply
	}
	if st := status(); len(st.Upgrades) != 0 || st.State != "starting" || w.m.historyIn == nil {
		t.Fatalf("Status before Ready: state %s, upgrades %+v, history decoded %v; want starting, none, not decoded", st.State, st.Upgrades, w.m.historyIn == nil)
	}
	ready(w)
	if st := status(); len(st.Upgrades) != 1 || st.Upgrades[0].To != 11 {
		t.Fatalf("Status after Ready: upgrades %+v; want the inherited one", st.Upgrades)
	}
}

// TestMachineStopSignals: SIGTERM stops (drains); a second one exits at once;
// SIGHUP is ignored.
func TestMachineStopSignals(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.ready()
	w.m.handle(signalEvent{syscall.SIGHUP})
	if w.m.st != serving || !w.logged("signal_ignored", "signal=SIGHUP") {
		t.Fatalf("SIGHUP: %s", w.m.st)
	}
	w.m.handle(signalEvent{syscall.SIGTERM})
	if !w.exitClosed() || w.sd.count("STOPPING=1") != 1 || !w.logged("stop", "why=SIGTERM") {
		t.Fatalf("SIGTERM: state %s, exit closed %v", w.m.st, w.exitClosed())
	}
	if err := w.waitDone(); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	w.m.handle(signalEvent{syscall.SIGINT})
	if len(w.exits) != 1 || w.exits[0] != syscall.SIGINT || !w.logged("exit_now") {
		t.Fatalf("second stop signal: exits %v", w.exits)
	}
}

// TestMachineStatusTick: under systemd, STATUS= is refreshed on a timer while the
// process lives, and only when it changed.
func TestMachineStatusTick(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.m.begin()
	w.ready()
	fire := func() {
		t.Helper()
		p := w.afters[len(w.afters)-1]
		if p.stopped || p.d != statusEvery {
			t.Fatalf("pending timer %+v", p)
		}
		p.stopped = true
		w.m.handle(p.ev)
	}
	before := w.sd.count("STATUS=serving")
	fire()
	if w.sd.count("STATUS=serving") != before || len(w.afters) != 2 {
		t.Fatalf("an unchanged status was sent again, or the timer was not rearmed (%d timers)", len(w.afters))
	}
	w.m.handle(stopRequest{"test", make(chan struct{})})
	fire()
	if len(w.afters) != 2 {
		t.Fatal("the status timer runs on after the process finished")
	}
}

// TestMachineWatchdog: the service manager's watchdog is pinged at half its
// interval while this process is the main one; the pings stop at the handover (the
// new main process pings it from then on).
func TestMachineWatchdog(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.m.svc.watchdog = &sdnotify.Watchdog{Interval: 2 * time.Second}
	w.ready()
	eventually(t, "the first ping", func() bool { return w.sd.count("WATCHDOG=1") == 1 })
	w.clock.waitTimer(t, w.clock.Now().Add(time.Second), 1)
	w.clock.Advance(time.Second)
	eventually(t, "the second ping", func() bool { return w.sd.count("WATCHDOG=1") == 2 })
	done := w.m.svc.wdDone
	rep := w.upgrade()
	g := w.child()
	if env := strings.Join(g.spec.child.env, " "); !strings.Contains(env, "WATCHDOG_USEC=2000000") {
		t.Fatal("the new generation does not learn of the watchdog")
	}
	w.takeOver(g)
	if !rep.got || rep.r.err != nil {
		t.Fatalf("Upgrade = %+v", rep)
	}
	select {
	case <-done:
	case <-time.After(waitBound):
		t.Fatal("the pings go on after the handover")
	}
	pings := w.sd.count("WATCHDOG=1")
	w.clock.Advance(time.Hour)
	if w.sd.count("WATCHDOG=1") != pings {
		t.Fatal("pinged after the handover")
	}
}

// TestMachineWaitsForBarrier: under systemd, the new generation hears "main" only
// once systemd has confirmed its MAINPID= (BARRIER=1); an unconfirmed barrier is
// logged, and the handover goes on.
func TestMachineWaitsForBarrier(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.sd.barrier = make(chan struct{})
	w.ready()
	w.upgrade()
	g := w.child()
	if !g.spec.child.sibling {
		t.Fatal("not started as systemd's child")
	}
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	select {
	case <-w.sd.barriers:
	case <-time.After(waitBound):
		t.Fatal("no barrier")
	}
	if w.sd.count(fmt.Sprintf("MAINPID=%d\nREADY=1", g.pid())) != 1 {
		t.Fatalf("no MAINPID= before the barrier: %q", w.sd.sent)
	}
	// The handover waits in the barrier: nothing was said to the new generation.
	g.ch.nothingSent(t, "before systemd confirmed")
	close(w.sd.barrier)
	g.ch.expect(t, handoff.History)
	g.ch.expect(t, handoff.Main)
	g.stderr.Close()
	stepTo[attemptEnded](w)
	if !g.proc.wasReleased() || w.m.nextPID != g.pid() {
		t.Fatalf("after the handover: released %v, handed over to %d", g.proc.wasReleased(), w.m.nextPID)
	}

	late := newWorld(t, nil).withSystemd()
	late.sd.barrErr = errors.New("barrier: timed out")
	late.ready()
	g = late.upgradeTo()
	if !late.logged("barrier_timeout") || late.m.nextPID != g.pid() {
		t.Fatalf("an unconfirmed barrier: handed over to %d", late.m.nextPID)
	}
}

// TestMachineQuietAfterMainPID: under systemd, once the new generation's MAINPID= is
// on its way, the old process says nothing more to systemd (NotifyAccess=main would
// refuse it and log "reception only permitted for main PID"): the STATUS= refresh
// and the watchdog pings that come while the handover waits for systemd's barrier
// are not sent. An upgrade that fails before MAINPID= reached systemd speaks again.
func TestMachineQuietAfterMainPID(t *testing.T) {
	w := newWorld(t, nil).withSystemd()
	w.m.svc.watchdog = &sdnotify.Watchdog{Interval: 2 * time.Second}
	w.sd.barrier = make(chan struct{})
	w.m.begin()
	w.ready()
	eventually(t, "the first ping", func() bool { return w.sd.count("WATCHDOG=1") == 1 })
	w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	select {
	case <-w.sd.barriers:
	case <-time.After(waitBound):
		t.Fatal("no barrier")
	}
	w.sd.mu.Lock()
	before := len(w.sd.sent)
	w.sd.mu.Unlock()
	// The status refresh comes, and the watchdog's next ping is due, while systemd
	// has not confirmed MAINPID= yet.
	var tick *pendingAfter
	for _, p := range w.afters {
		if !p.stopped && p.d == statusEvery {
			tick = p
		}
	}
	if tick == nil {
		t.Fatal("no status timer")
	}
	tick.stopped = true
	w.m.handle(tick.ev)
	w.clock.Advance(time.Second)
	close(w.sd.barrier)
	g.ch.expect(t, handoff.History)
	g.ch.expect(t, handoff.Main)
	g.stderr.Close()
	stepTo[attemptEnded](w)
	w.sd.mu.Lock()
	after := slices.Clone(w.sd.sent[before:])
	w.sd.mu.Unlock()
	if len(after) != 0 {
		t.Fatalf("the old process notified systemd after its successor's MAINPID=: %q", after)
	}

	// MAINPID= refused: the process is still the main one, and says so.
	f := newWorld(t, nil).withSystemd()
	f.ready()
	f.upgrade()
	g = f.child()
	f.sd.mu.Lock()
	f.sd.fail = fmt.Sprintf("MAINPID=%d\nREADY=1", g.pid())
	f.sd.mu.Unlock()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](f)
	stepTo[attemptEnded](f)
	if f.m.svc.handing || f.sd.count("READY=1\nSTATUS=serving") != 1 {
		t.Fatalf("after a failed MAINPID=: handing %v, sent %q", f.m.svc.handing, f.sd.sent)
	}
}

// recordingCarrier is a carrier that records what the machine asks of it.
type recordingCarrier struct {
	mu    sync.Mutex
	turns []carry.Role
	took  []string
	h     carry.Host
	work  chan struct{} // HandedOver's work beside the machine waits on it
	sent  error
}

func (c *recordingCarrier) Take(m handoff.Message, at carry.Phase) bool {
	if m.Verb != handoff.Keys {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.took = append(c.took, m.Verb)
	return true
}
func (c *recordingCarrier) Start(h carry.Host) error { c.h = h; return nil }
func (c *recordingCarrier) Batch() []handoff.Message {
	return []handoff.Message{{Verb: handoff.Keys}}
}

func (c *recordingCarrier) Turn(t carry.Turn) {
	c.mu.Lock()
	c.turns = append(c.turns, t.Role)
	c.mu.Unlock()
	if t.Role == carry.HandedOver {
		c.h.Go(func() {
			<-c.work
			err := t.Successor.Send(handoff.Message{Verb: handoff.Keys})
			c.mu.Lock()
			c.sent = err
			c.mu.Unlock()
		})
	}
}

// TestMachineCarriers: a carrier's part of the initial batch follows the machine's;
// it hears every turn; what it sends to the successor goes after the machine's own
// messages; and the process does not finish before its work beside the machine is
// done.
func TestMachineCarriers(t *testing.T) {
	w := newWorld(t, nil)
	c := &recordingCarrier{work: make(chan struct{})}
	w.m.carriers = []carry.Carrier{c}
	c.Start(&carryHost{log: w.m.log, set: w.m.set, hold: w.m.hold})
	w.ready()
	rep := w.upgrade()
	g := w.child()
	if b := g.batch; len(b) != 3 || b[2].Verb != handoff.Keys {
		t.Fatalf("initial batch %v", b)
	}
	w.takeOver(g)
	if rep.r.err != nil {
		t.Fatal(rep.r.err)
	}
	g.ch.expect(t, handoff.Above)
	stepTo[wakeEvent](w)
	if w.m.st != draining || w.m.line.farewell {
		t.Fatalf("state %s, farewell %v while a carrier's work was under way", w.m.st, w.m.line.farewell)
	}
	close(c.work)
	g.ch.expect(t, handoff.Keys)
	w.stepUntil("the end of the drain", func() bool { return w.m.line.drained })
	g.ch.expect(t, handoff.Drained)
	g.ch.expect(t, handoff.Above)
	w.passProbation(10 * time.Second)
	w.stepUntil("the process is done", func() bool { return w.m.st == exited })
	w.m.onUpstreamMessage(handoff.Message{Verb: handoff.Keys})
	c.mu.Lock()
	defer c.mu.Unlock()
	if want := []carry.Role{carry.Serving, carry.Upgrading, carry.HandedOver, carry.Drained}; !slices.Equal(c.turns, want) || c.sent != nil {
		t.Fatalf("turns %v (want %v), send %v", c.turns, want, c.sent)
	}
	if len(c.took) != 1 {
		t.Fatalf("the carrier took %v", c.took)
	}
}

// TestReplyOnceNotAccepting: whoever asked for an upgrade hears its outcome once this
// process accepts no more (its drains have stopped its listeners): a connection made
// after the answer (handover reload, then a request) reaches the new generation.
func TestReplyOnceNotAccepting(t *testing.T) {
	w := newWorld(t, nil)
	d := new(Drainer)
	w.m.handle(adoptEvent{&target{d: d}})
	w.ready()
	var got, stopped bool
	w.m.handle(upgradeRequest{trigger: "API", reply: func(r upgradeResult) {
		got, stopped = r.err == nil, d.draining.Load()
	}})
	w.takeOver(w.child())
	if !got || !stopped {
		t.Fatalf("answered %v, the drain had stopped accepting %v; want the answer after it had", got, stopped)
	}
}
