package graceful

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The drain tests run real loopback sockets against a fake clock: no grace period
// elapses in real time, and every step waits for an observable event (a connection
// state reported by net/http, a pending timer of the Drainer, a client seeing EOF)
// rather than sleeping. waitBound only bounds how long a broken implementation can
// make a test hang.

const (
	testGrace = 30 * time.Second
	waitBound = 10 * time.Second
)

var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock is a manual clock: time moves only in Advance, and a timer fires when
// Advance reaches it. Tests observe the Drainer's pending timers (waitTimer) to know
// what deadline it is waiting for.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  map[*fakeTimer]struct{}
	changed chan struct{} // closed and replaced when the timer set changes
}

type fakeTimer struct {
	c    *fakeClock
	when time.Time
	ch   chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: epoch, timers: make(map[*fakeTimer]struct{}), changed: make(chan struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) timer {
	return c.NewTimerAt(c.Now().Add(d))
}

// NewTimerAt is what the Drainer uses: the deadline it computed stands even if the
// test advanced the clock while the Drainer was computing it.
func (c *fakeClock) NewTimerAt(when time.Time) timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, when: when, ch: make(chan time.Time, 1)}
	if !when.After(c.now) {
		t.ch <- c.now
		return t
	}
	c.timers[t] = struct{}{}
	c.notifyLocked()
	return t
}

func (c *fakeClock) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Advance moves the clock forward by d and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.when.After(c.now) {
			t.ch <- t.when
			delete(c.timers, t)
		}
	}
	c.notifyLocked()
}

// waitTimer waits until n timers are pending that fire at when. A Drainer creates
// its timer after a full pass over its connections, for the nearest deadline of the
// ones it did not close, so a pending timer for a deadline that only becomes the
// nearest once the earlier connections are gone proves that such a pass has
// happened after they were closed. (The Drainer asks for timers by deadline,
// NewTimerAt, so a pass that read the time just before an Advance cannot leave a
// timer that fires late.)
func (c *fakeClock) waitTimer(t testing.TB, when time.Time, n int) {
	t.Helper()
	bound := time.NewTimer(waitBound)
	defer bound.Stop()
	for {
		c.mu.Lock()
		got := 0
		for tm := range c.timers {
			if tm.when.Equal(when) {
				got++
			}
		}
		ch := c.changed
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-bound.C:
			t.Fatalf("no Drainer timer for %s (+%s from epoch) after %s", when.Format(time.TimeOnly), when.Sub(epoch), waitBound)
		}
	}
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, ok := t.c.timers[t]
	if ok {
		delete(t.c.timers, t)
		t.c.notifyLocked()
	}
	return ok
}

func TestFakeClock(t *testing.T) {
	c := newFakeClock()
	tm := c.NewTimer(time.Second)
	c.Advance(999 * time.Millisecond)
	select {
	case <-tm.C():
		t.Fatal("timer fired early")
	default:
	}
	c.Advance(time.Millisecond)
	select {
	case at := <-tm.C():
		if !at.Equal(epoch.Add(time.Second)) {
			t.Fatalf("fired at %v", at)
		}
	default:
		t.Fatal("timer did not fire when due")
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer returned true")
	}
	tm2 := c.NewTimer(time.Second)
	if !tm2.Stop() {
		t.Fatal("Stop of a pending timer returned false")
	}
	c.Advance(time.Hour)
	select {
	case <-tm2.C():
		t.Fatal("stopped timer fired")
	default:
	}
}

// stateLog records the states net/http reports for each server-side connection; it
// is chained after the Drainer's ConnState, so a state seen here is already known to
// the Drainer.
type stateLog struct {
	mu      sync.Mutex
	conns   []net.Conn
	seen    map[net.Conn][]http.ConnState
	changed chan struct{}
}

func newStateLog() *stateLog {
	return &stateLog{seen: make(map[net.Conn][]http.ConnState), changed: make(chan struct{})}
}

func (l *stateLog) hook(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[c]; !ok {
		l.conns = append(l.conns, c)
	}
	l.seen[c] = append(l.seen[c], st)
	close(l.changed)
	l.changed = make(chan struct{})
}

// find returns the server side of client, once it has reached state st n times.
func (l *stateLog) find(client net.Conn, st http.ConnState, n int) net.Conn {
	key := client.LocalAddr().String()
	for _, c := range l.conns {
		if c.RemoteAddr().String() != key {
			continue
		}
		got := 0
		for _, s := range l.seen[c] {
			if s == st {
				got++
			}
		}
		if got >= n {
			return c
		}
	}
	return nil
}

// wait waits until the server side of client has reached state st (for the nth
// time) and returns it.
func (l *stateLog) wait(t testing.TB, client net.Conn, st http.ConnState, n int) *conn {
	t.Helper()
	bound := time.NewTimer(waitBound)
	defer bound.Stop()
	for {
		l.mu.Lock()
		c := l.find(client, st, n)
		ch := l.changed
		l.mu.Unlock()
		if c != nil {
			return c.(*conn)
		}
		select {
		case <-ch:
		case <-bound.C:
			t.Fatalf("server side of %s never reached state %s (x%d)", client.LocalAddr(), st, n)
		}
	}
}

// known reports whether net/http ever reported the server side of client.
func (l *stateLog) known(client net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := client.LocalAddr().String()
	for _, c := range l.conns {
		if c.RemoteAddr().String() == key {
			return true
		}
	}
	return false
}

func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// client is a raw HTTP/1.1 client on one connection: no pooling, no retries.
type client struct {
	net.Conn
	br *bufio.Reader
}

func dialClient(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(waitBound))
	t.Cleanup(func() { c.Close() })
	return &client{Conn: c, br: bufio.NewReader(c)}
}

func (c *client) send(t testing.TB, path string) {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatalf("sending GET %s: %v", path, err)
	}
}

// response reads one response; its body is read in full and returned.
func (c *client) response(t testing.TB) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading a response body: %v", err)
	}
	return resp, string(b)
}

func (c *client) get(t testing.TB, path string) (*http.Response, string) {
	t.Helper()
	c.send(t, path)
	return c.response(t)
}

// expectClosed waits until the server has closed the connection.
func (c *client) expectClosed(t testing.TB) {
	t.Helper()
	var b [1]byte
	n, err := c.br.Read(b[:])
	switch {
	case n > 0:
		t.Fatalf("%s: unexpected byte %q from the server; want the connection closed", c.LocalAddr(), b[0])
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("%s: connection still open after %s; want it closed", c.LocalAddr(), waitBound)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		t.Fatalf("%s: read: %v; want EOF", c.LocalAddr(), err)
	}
}

// closesConn reports whether the server said "Connection: close" (ReadResponse
// turns the header into resp.Close and removes it).
func closesConn(resp *http.Response) bool {
	return resp.Close && resp.ProtoAtLeast(1, 1)
}

// harness is an http.Server with a Drainer attached, serving on a loopback listener,
// with a fake clock.
type harness struct {
	t      *testing.T
	clock  *fakeClock
	d      *Drainer
	srv    *http.Server
	log    *stateLog
	addr   string
	ln     net.Listener  // the listening socket, under the Drainer's listener
	served chan struct{} // closed when Serve returns
}

func newHarness(t *testing.T, h http.Handler) *harness {
	t.Helper()
	clock := newFakeClock()
	hs := &harness{
		t:      t,
		clock:  clock,
		d:      &Drainer{KeepAliveGrace: testGrace, clock: clock},
		log:    newStateLog(),
		served: make(chan struct{}),
	}
	hs.srv = &http.Server{Handler: h, ConnState: hs.log.hook}
	hs.d.attach(hs.srv)
	ln := listenLoopback(t)
	hs.addr, hs.ln = ln.Addr().String(), ln
	tl := hs.d.Listener(ln)
	go func() {
		defer close(hs.served)
		hs.srv.Serve(tl)
	}()
	t.Cleanup(func() {
		hs.srv.Close()
		select {
		case <-hs.served:
		case <-time.After(waitBound):
			t.Errorf("Serve did not return after Close")
		}
	})
	return hs
}

// sentinel returns a tracked connection, accepted on another listener of d, that
// nothing serves: the test drives its state. Made idle after the drain has started,
// it gives the Drainer a deadline later than the grace of the other connections.
func sentinel(t *testing.T, d *Drainer) (srv *conn, cli net.Conn) {
	t.Helper()
	ln := listenLoopback(t)
	tl := d.Listener(ln)
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*conn), cli
}

// drainRun is a Drain running in the background.
type drainRun struct {
	start  time.Time // fake time at which it started
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// startDrain starts d.Drain and returns once draining has been signalled.
func startDrain(t *testing.T, d *Drainer, clock *fakeClock) *drainRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &drainRun{start: clock.Now(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = d.Drain(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	select {
	case <-d.Draining():
	case <-time.After(waitBound):
		t.Fatal("Draining() not closed after Drain started")
	}
	return r
}

func (r *drainRun) wait(t testing.TB) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(waitBound):
		t.Fatalf("Drain did not return within %s", waitBound)
		return nil
	}
}

func (r *drainRun) returned() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// passGrace moves the fake clock to exactly the end of the grace period counted from
// the drain's start, with z made idle half-way so that the Drainer still has a later
// deadline to wait for, and returns once the Drainer has acted on the grace deadline
// (it is waiting for z's).
func passGrace(t *testing.T, d *Drainer, clock *fakeClock, r *drainRun, z *conn) {
	t.Helper()
	clock.Advance(testGrace / 2)
	d.ConnState(z, http.StateIdle)
	clock.Advance(testGrace - testGrace/2)
	clock.waitTimer(t, r.start.Add(testGrace/2+testGrace), 1)
}

func okHandler(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }

func TestDrainClosesListeners(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		h := newHarness(t, http.HandlerFunc(okHandler))
		c := dialClient(t, h.addr)
		if resp, _ := c.get(t, "/"); resp.StatusCode != 200 {
			t.Fatalf("status %d before draining", resp.StatusCode)
		}
		c.Close()
		h.log.wait(t, c, http.StateClosed, 1)
		r := startDrain(t, h.d, h.clock)
		select {
		case <-h.served:
		case <-time.After(waitBound):
			t.Fatal("Serve still accepting after Drain started")
		}
		expectRefused(t, h.addr)
		if err := r.wait(t); err != nil {
			t.Fatalf("Drain with no connections: %v", err)
		}
	})
	t.Run("shared", func(t *testing.T) {
		// The socket stays open in another "process" (a dup of it): a new
		// connection queues there and this server does not take it.
		clock := newFakeClock()
		d := &Drainer{KeepAliveGrace: testGrace, clock: clock}
		log := newStateLog()
		srv := &http.Server{Handler: http.HandlerFunc(okHandler), ConnState: log.hook}
		d.attach(srv)
		ln := listenLoopback(t)
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		other, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		served := make(chan struct{})
		go func() {
			defer close(served)
			srv.Serve(d.Listener(ln))
		}()
		defer srv.Close()

		c := dialClient(t, ln.Addr().String())
		c.get(t, "/")
		if got := d.Counts().Accepted; got != 1 {
			t.Fatalf("Accepted = %d, want 1", got)
		}
		c.Close()
		log.wait(t, c, http.StateClosed, 1)
		r := startDrain(t, d, clock)
		<-served
		if err := r.wait(t); err != nil {
			t.Fatal(err)
		}
		late := dialClient(t, ln.Addr().String())
		other.(*net.TCPListener).SetDeadline(time.Now().Add(waitBound))
		oc, err := other.Accept()
		if err != nil {
			t.Fatalf("the other holder of the socket did not get the new connection: %v", err)
		}
		defer oc.Close()
		if oc.RemoteAddr().String() != late.LocalAddr().String() {
			t.Fatalf("other holder accepted %s, want %s", oc.RemoteAddr(), late.LocalAddr())
		}
		if got := d.Counts().Accepted; got != 1 {
			t.Fatalf("Accepted = %d after drain; want 1 (the new connection is not ours)", got)
		}
		if log.known(late) {
			t.Fatal("the draining server saw the new connection")
		}
	})
	t.Run("listener added while draining", func(t *testing.T) {
		clock := newFakeClock()
		d := &Drainer{clock: clock}
		r := startDrain(t, d, clock)
		if err := r.wait(t); err != nil {
			t.Fatal(err)
		}
		ln := listenLoopback(t)
		tl := d.Listener(ln)
		expectRefused(t, ln.Addr().String())
		if c, err := tl.Accept(); err == nil {
			c.Close()
			t.Fatal("Accept succeeded on a listener added while draining")
		}
	})
}

// TestDrainResumable: a drain that can be taken back (the Upgrader's, while the new
// generation may still die) stops accepting without closing the listeners: a new
// connection waits in the socket's accept queue, and so does one to a listener added
// meanwhile; a request on a kept-alive connection is answered with "Connection:
// close". Taken back, the Drainer accepts again (the waiting connections first),
// Draining returns a new channel, and keep-alive is on again.
func TestDrainResumable(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(okHandler))
	kept := dialClient(t, h.addr)
	if resp, _ := kept.get(t, "/"); resp.StatusCode != 200 || closesConn(resp) {
		t.Fatalf("GET /: %d, close %v", resp.StatusCode, closesConn(resp))
	}
	sock := socketOf(t, h.ln) // h.ln is closed while the drain parks it
	draining := h.d.Draining()
	h.d.stopAccepting(false)
	select {
	case <-draining:
	default:
		t.Fatal("Draining() not closed by a drain that can be taken back")
	}
	if !h.d.resumable() {
		t.Fatal("a Drainer of TCP listeners is not resumable")
	}
	// An Accept already past its deadline check when stopAccepting set the deadline
	// still takes one connection (documented: "a connection accepted just as a drain
	// starts is still tracked and served"). Dial once every Accept in progress has
	// returned: from then on none can take a connection.
	eventually(t, "the Accept in progress to return", func() bool { return h.d.accepting.Load() == 0 })
	waiting := dialClient(t, h.addr) // the listener is open: the dial connects
	eventually(t, "the connection to wait in the accept queue", func() bool { return acceptQueueOf(t, sock, h.addr) == 1 })

	// A listener added while the drain can be taken back does not accept either.
	lnB := listenLoopback(t)
	sockB := socketOf(t, lnB) // lnB is closed as the drain parks it
	tlB := h.d.Listener(lnB)
	h.d.mu.Lock()
	parkedB := tlB.(*listener).parked != nil
	h.d.mu.Unlock()
	if !parkedB {
		t.Error("the TCP listener added while draining is not parked")
	}
	acceptedB := make(chan net.Conn, 1)
	go func() {
		c, err := tlB.Accept()
		if err != nil {
			t.Errorf("Accept on the listener added while draining: %v", err)
			close(acceptedB)
			return
		}
		acceptedB <- c
	}()
	waitingB := dialClient(t, lnB.Addr().String())
	eventually(t, "the connection to the added listener to wait in its accept queue", func() bool { return acceptQueueOf(t, sockB, lnB.Addr().String()) == 1 })
	select {
	case c := <-acceptedB:
		t.Fatalf("the listener added while draining accepted %v", c)
	default:
	}
	if got := h.d.Counts().Accepted; got != 1 {
		t.Fatalf("Accepted = %d while draining, want 1", got)
	}
	if resp, _ := kept.get(t, "/"); resp.StatusCode != 200 || !closesConn(resp) {
		t.Errorf("a request on a kept-alive connection while draining: %d, close %v; want 200 with Connection: close", resp.StatusCode, closesConn(resp))
	}

	h.d.resume()
	select {
	case <-h.d.Draining():
		t.Fatal("Draining() closed after the drain was taken back")
	default:
	}
	if resp, body := waiting.get(t, "/"); resp.StatusCode != 200 || body != "ok" || closesConn(resp) {
		t.Errorf("the connection that waited: %d %q, close %v; want 200 \"ok\", kept alive", resp.StatusCode, body, closesConn(resp))
	}
	select {
	case c := <-acceptedB:
		if c == nil || c.RemoteAddr().String() != waitingB.LocalAddr().String() {
			t.Errorf("the added listener accepted %v, want the connection from %s", c, waitingB.LocalAddr())
		} else {
			c.Close()
		}
	case <-time.After(waitBound):
		t.Fatal("the listener added while draining did not accept once the drain was taken back")
	}
	if got := h.d.Counts().Accepted; got != 3 {
		t.Errorf("Accepted = %d, want 3", got)
	}
}

// TestDrainQuiesce: quiesce (a handover's last step) stops the listeners accepting
// without draining: Draining() stays open, a connection that arrives waits in the
// accept queue, a listener that cannot pause without closing accepts on; unquiesce
// (the handover failed) lets them accept again. A drain takes a quiesce over: an
// unquiesce after it leaves the listeners to the drain, which resume takes back.
func TestDrainQuiesce(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(okHandler))
	sock := socketOf(t, h.ln)
	wrapped := listenLoopback(t)
	other := h.d.Listener(struct{ net.Listener }{wrapped}) // cannot pause without closing
	h.d.quiesce()
	select {
	case <-h.d.Draining():
		t.Fatal("Draining() closed by quiesce")
	default:
	}
	eventually(t, "the Accept in progress to return", func() bool { return h.d.accepting.Load() == 0 })
	waiting := dialClient(t, h.addr)
	eventually(t, "the connection to wait in the accept queue", func() bool { return acceptQueueOf(t, sock, h.addr) == 1 })
	if got := h.d.Counts().Accepted; got != 0 {
		t.Fatalf("Accepted = %d while quiesced, want 0", got)
	}
	go func() {
		if c, err := other.Accept(); err == nil {
			c.Close()
		}
	}()
	otherConn, err := net.Dial("tcp", wrapped.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer otherConn.Close()
	eventually(t, "the listener that cannot pause to accept", func() bool { return h.d.Counts().Accepted == 1 })

	h.d.unquiesce()
	if resp, body := waiting.get(t, "/"); resp.StatusCode != 200 || body != "ok" || closesConn(resp) {
		t.Fatalf("the connection that waited: %d %q, close %v; want 200 \"ok\", kept alive", resp.StatusCode, body, closesConn(resp))
	}

	h.d.quiesce()
	h.d.stopAccepting(false)
	h.d.unquiesce() // the drain's now: nothing happens
	eventually(t, "the Accept in progress to return", func() bool { return h.d.accepting.Load() == 0 })
	late := dialClient(t, h.addr)
	eventually(t, "the connection to wait in the accept queue while draining", func() bool { return acceptQueueOf(t, sock, h.addr) == 1 })
	h.d.resume()
	if resp, body := late.get(t, "/"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("the connection that waited out the drain: %d %q; want 200 \"ok\"", resp.StatusCode, body)
	}
}

// TestDrainResumableClosesWhatCannotPause: a listener that cannot stop accepting
// without closing (an application's that wraps a socket, without SetDeadline) is
// closed by a drain that could otherwise be taken back: then it cannot be, and the
// listener reports that a drain closed it.
func TestDrainResumableClosesWhatCannotPause(t *testing.T) {
	d := &Drainer{clock: newFakeClock()}
	ln := listenLoopback(t)
	tl := d.Listener(struct{ net.Listener }{ln})
	d.stopAccepting(false)
	if _, err := tl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept: %v, want net.ErrClosed", err)
	}
	expectRefused(t, ln.Addr().String())
	if d.resumable() {
		t.Error("a drain that closed a listener is resumable")
	}
	if !d.closedByDrain(tl) {
		t.Error("the listener does not say a drain closed it")
	}
	other := d.Listener(listenLoopback(t))
	other.Close()
	if d.closedByDrain(other) {
		t.Error("a listener the application closed says a drain closed it")
	}
}

// A handler that started before the drain learns of it through its request context,
// finishes, and its response arrives; Drain returns as soon as the last connection
// is gone, without any grace period passing.
func TestDrainSignalsDrainingAndWaitsForActive(t *testing.T) {
	entered := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ch := Draining(r.Context())
		if ch == nil {
			t.Error("Draining(r.Context()) is nil under an attached server")
		}
		select {
		case <-ch:
			t.Error("request context says draining before Drain")
		default:
		}
		close(entered)
		select {
		case <-ch:
		case <-time.After(waitBound):
			t.Error("Draining(r.Context()) not closed by Drain")
		}
		io.WriteString(w, "finished after drain start")
	}))
	if Draining(context.Background()) != nil {
		t.Fatal("Draining of a context without a Drainer is not nil")
	}
	c := dialClient(t, h.addr)
	c.send(t, "/slow")
	<-entered
	select {
	case <-h.d.Draining():
		t.Fatal("Draining() closed before Drain")
	default:
	}
	if got := h.d.Counts(); got.Active != 1 || got.Total() != 1 {
		t.Fatalf("Counts = %+v with one handler running; want 1 active", got)
	}
	r := startDrain(t, h.d, h.clock)
	resp, body := c.response(t)
	if resp.StatusCode != 200 || body != "finished after drain start" {
		t.Fatalf("slow handler's response: %d %q", resp.StatusCode, body)
	}
	if r.returned() {
		t.Fatal("Drain returned while a connection was still open")
	}
	c.Close()
	if err := r.wait(t); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if now := h.clock.Now(); !now.Equal(r.start) {
		t.Fatalf("fake clock moved to %v", now)
	}
}

func TestDrainKeepAliveGrace(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(okHandler))
	a := dialClient(t, h.addr)
	b := dialClient(t, h.addr)
	for _, c := range []*client{a, b} {
		resp, _ := c.get(t, "/")
		if resp.Close {
			t.Fatal("keep-alive off before draining")
		}
		h.log.wait(t, c, http.StateIdle, 1)
	}
	// Idle for long before the drain: the grace counts from the drain's start.
	h.clock.Advance(10 * testGrace)
	r := startDrain(t, h.d, h.clock)
	deadline := r.start.Add(testGrace)
	h.clock.waitTimer(t, deadline, 1)

	h.clock.Advance(testGrace - time.Nanosecond)
	resp, body := a.get(t, "/")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("request just before the grace ends: %d %q", resp.StatusCode, body)
	}
	if !closesConn(resp) {
		t.Fatal("response to a request started while draining lacks Connection: close")
	}
	a.expectClosed(t)
	h.log.wait(t, a, http.StateClosed, 1)
	h.clock.waitTimer(t, deadline, 1)
	if got := h.d.Counts(); got.Idle != 1 || got.Total() != 1 {
		t.Fatalf("Counts = %+v just before the grace ends; want b still idle", got)
	}
	if r.returned() {
		t.Fatal("Drain returned with an idle connection open")
	}

	h.clock.Advance(time.Nanosecond)
	b.expectClosed(t)
	if err := r.wait(t); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

// A connection whose request has started arriving is not idle, whether net/http has
// read the first bytes (it still calls the connection new) or they are waiting in
// the socket.
func TestDrainPartialRequestIsNotIdle(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(okHandler))
	p := dialClient(t, h.addr)
	y := dialClient(t, h.addr) // new, sends nothing: closed at grace
	z, _ := sentinel(t, h.d)
	if _, err := io.WriteString(p, "GET /partial HTTP/1.1\r\nHo"); err != nil {
		t.Fatal(err)
	}
	sp := h.log.wait(t, p, http.StateNew, 1)
	h.log.wait(t, y, http.StateNew, 1)
	eventually(t, "net/http reads the partial header", func() bool { return sp.reading.Load() })

	r := startDrain(t, h.d, h.clock)
	passGrace(t, h.d, h.clock, r, z)
	y.expectClosed(t)
	if got := h.d.Counts(); got.New != 1 || got.Idle != 1 || got.Total() != 2 {
		t.Fatalf("Counts = %+v after the grace; want the partial request (new) and the sentinel (idle)", got)
	}
	if _, err := io.WriteString(p, "st: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, body := p.response(t)
	if resp.StatusCode != 200 || body != "ok" || !closesConn(resp) {
		t.Fatalf("partial request's response: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	p.expectClosed(t)
	z.Close()
	if err := r.wait(t); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

// Raw mode: bytes of a next request sitting unread in the socket keep an idle
// connection open.
func TestDrainPendingBytesAreNotIdle(t *testing.T) {
	clock := newFakeClock()
	d := &Drainer{KeepAliveGrace: testGrace, clock: clock}
	ln := listenLoopback(t)
	tl := d.Listener(ln)
	accept := func() (*conn, net.Conn) {
		cli, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		cli.SetDeadline(time.Now().Add(waitBound))
		c, err := tl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*conn), cli
	}
	sp, cp := accept()
	sy, cy := accept()
	z, _ := accept()
	d.ConnState(sp, http.StateIdle)
	d.ConnState(sy, http.StateIdle)
	if _, err := io.WriteString(cp, "next request"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the bytes reach the server's socket", func() bool { return pending(sp.Conn) == len("next request") })

	r := startDrain(t, d, clock)
	passGrace(t, d, clock, r, z)
	(&client{Conn: cy, br: bufio.NewReader(cy)}).expectClosed(t)
	if got := d.Counts(); got.Idle != 2 || got.Total() != 2 {
		t.Fatalf("Counts = %+v after the grace; want the connection with pending bytes and the sentinel", got)
	}
	sp.SetDeadline(time.Now().Add(waitBound))
	buf := make([]byte, 64)
	n, err := sp.Read(buf)
	if err != nil || string(buf[:n]) != "next request" {
		t.Fatalf("server read %q, %v", buf[:n], err)
	}
	d.ConnState(sp, http.StateActive)
	if _, err := io.WriteString(sp, "answer"); err != nil {
		t.Fatal(err)
	}
	n, err = io.ReadFull(cp, buf[:len("answer")])
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}
	sp.Close()
	z.Close()
	if err := r.wait(t); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

// A hijacked connection outlives the grace period and is force-closed only at the
// deadline, and Drain then reports ErrDrainDeadline.
func TestDrainHijackedUntilDeadline(t *testing.T) {
	handlerDone := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("hijacked\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(line)
			brw.Flush()
		}
	}))
	c := dialClient(t, h.addr)
	y := dialClient(t, h.addr)
	z, _ := sentinel(t, h.d)
	c.send(t, "/ws")
	if line, err := c.br.ReadString('\n'); err != nil || line != "hijacked\n" {
		t.Fatalf("hijack greeting %q, %v", line, err)
	}
	h.log.wait(t, c, http.StateHijacked, 1)
	h.log.wait(t, y, http.StateNew, 1)
	echo := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := c.br.ReadString('\n'); err != nil || line != msg+"\n" {
			t.Fatalf("echo %q: got %q, %v", msg, line, err)
		}
	}
	echo("before")

	r := startDrain(t, h.d, h.clock)
	passGrace(t, h.d, h.clock, r, z)
	y.expectClosed(t)
	if got := h.d.Counts(); got.Hijacked != 1 || got.Idle != 1 || got.Total() != 2 {
		t.Fatalf("Counts = %+v after the grace; want the hijacked connection and the sentinel", got)
	}
	echo("after grace")
	if r.returned() {
		t.Fatal("Drain returned with a hijacked connection open")
	}

	r.cancel()
	if err := r.wait(t); !errors.Is(err, ErrDrainDeadline) {
		t.Fatalf("Drain at the deadline: %v; want ErrDrainDeadline", err)
	}
	c.expectClosed(t)
	select {
	case <-handlerDone:
	case <-time.After(waitBound):
		t.Fatal("the hijacking handler did not end after its connection was force-closed")
	}
	if got := h.d.Counts(); got.Total() != 0 {
		t.Fatalf("Counts = %+v after the deadline", got)
	}
}

// Without an http.Server, connections start active; the protocol marks them idle.
func TestDrainRawMode(t *testing.T) {
	clock := newFakeClock()
	d := &Drainer{KeepAliveGrace: testGrace, clock: clock}
	ln := listenLoopback(t)
	tl := d.Listener(ln)
	type pair struct {
		srv *conn
		cli *client
	}
	accept := func() pair {
		cli := dialClient(t, ln.Addr().String())
		c, err := tl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return pair{c.(*conn), cli}
	}
	r1, r2, zz := accept(), accept(), accept()
	if got := d.Counts(); got.Active != 3 || got.Total() != 3 || got.Accepted != 3 {
		t.Fatalf("Counts = %+v; want 3 active raw connections", got)
	}
	d.ConnState(r1.srv, http.StateIdle)
	if got := d.Counts(); got.Active != 2 || got.Idle != 1 {
		t.Fatalf("Counts = %+v after marking one idle", got)
	}

	r := startDrain(t, d, clock)
	if c, err := tl.Accept(); err == nil {
		c.Close()
		t.Fatal("Accept succeeded while draining")
	}
	passGrace(t, d, clock, r, zz.srv)
	r1.cli.expectClosed(t)
	if got := d.Counts(); got.Active != 1 || got.Idle != 1 || got.Total() != 2 {
		t.Fatalf("Counts = %+v after the grace; want r2 active and the sentinel idle", got)
	}
	if _, err := io.WriteString(r2.cli, "still here"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	r2.srv.SetDeadline(time.Now().Add(waitBound))
	if _, err := io.ReadFull(r2.srv, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("active raw connection: read %q, %v", buf, err)
	}

	// Idle from now (drain start + grace): closed one grace later, after the
	// sentinel.
	d.ConnState(r2.srv, http.StateIdle)
	clock.Advance(testGrace / 2)
	zz.cli.expectClosed(t)
	clock.waitTimer(t, r.start.Add(2*testGrace), 1)
	if got := d.Counts(); got.Idle != 1 || got.Total() != 1 {
		t.Fatalf("Counts = %+v; want r2 idle", got)
	}
	clock.Advance(testGrace / 2)
	r2.cli.expectClosed(t)
	if err := r.wait(t); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

func TestCounts(t *testing.T) {
	release := make(chan struct{})
	hijackDone := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/", okHandler)
	mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "released")
	})
	mux.HandleFunc("/hijack", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		brw.WriteString("hijacked\n")
		brw.Flush()
		io.Copy(io.Discard, conn)
		conn.Close()
		close(hijackDone)
	})
	h := newHarness(t, mux)
	if got := h.d.Counts(); got != (ConnCounts{}) {
		t.Fatalf("Counts = %+v with nothing accepted", got)
	}
	n := dialClient(t, h.addr)
	h.log.wait(t, n, http.StateNew, 1)
	a := dialClient(t, h.addr)
	a.send(t, "/block")
	h.log.wait(t, a, http.StateActive, 1)
	i := dialClient(t, h.addr)
	i.get(t, "/")
	h.log.wait(t, i, http.StateIdle, 1)
	hj := dialClient(t, h.addr)
	hj.send(t, "/hijack")
	if line, err := hj.br.ReadString('\n'); err != nil || line != "hijacked\n" {
		t.Fatalf("hijack: %q, %v", line, err)
	}
	h.log.wait(t, hj, http.StateHijacked, 1)

	want := ConnCounts{New: 1, Active: 1, Idle: 1, Hijacked: 1, Accepted: 4}
	if got := h.d.Counts(); got != want {
		t.Fatalf("Counts = %+v, want %+v", got, want)
	}
	if got := want.Total(); got != 4 {
		t.Fatalf("Total = %d", got)
	}

	close(release)
	a.response(t)
	h.log.wait(t, a, http.StateIdle, 1)
	hj.Close()
	<-hijackDone // net/http reports no state after StateHijacked
	n.Close()
	h.log.wait(t, n, http.StateClosed, 1)
	want = ConnCounts{Idle: 2, Accepted: 4}
	if got := h.d.Counts(); got != want {
		t.Fatalf("Counts = %+v, want %+v", got, want)
	}
}

func TestConnStateIgnoresForeignConnsAndUnwrapsTLS(t *testing.T) {
	d := &Drainer{}
	ln := listenLoopback(t)
	tl := d.Listener(ln)
	cli := dialClient(t, ln.Addr().String())
	_ = cli
	c, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	d.ConnState(p1, http.StateIdle)
	other := &Drainer{}
	d.ConnState(&conn{Conn: p1, d: other}, http.StateIdle)
	if got := d.Counts(); got.Active != 1 || got.Total() != 1 {
		t.Fatalf("Counts = %+v after foreign ConnState calls", got)
	}

	d.ConnState(tls.Server(c, &tls.Config{}), http.StateIdle)
	if got := d.Counts(); got.Idle != 1 || got.Total() != 1 {
		t.Fatalf("Counts = %+v after ConnState on the TLS wrapper; want it idle", got)
	}
	d.ConnState(c, http.StateClosed) // ignored: Close untracks
	if got := d.Counts(); got.Idle != 1 {
		t.Fatalf("Counts = %+v after StateClosed", got)
	}
	c.Close()
	c.Close()
	if got := d.Counts(); got.Total() != 0 || got.Accepted != 1 {
		t.Fatalf("Counts = %+v after Close", got)
	}
}

// Two Drains at once (an application's Shutdown racing the Upgrader's) both return
// as soon as the last connection is gone.
func TestDrainConcurrent(t *testing.T) {
	clock := newFakeClock()
	d := &Drainer{KeepAliveGrace: testGrace, clock: clock}
	ln := listenLoopback(t)
	tl := d.Listener(ln)
	dialClient(t, ln.Addr().String())
	c, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d.ConnState(c, http.StateIdle)
	r1 := startDrain(t, d, clock)
	r2 := startDrain(t, d, clock)
	// Both are waiting for the idle connection's grace.
	clock.waitTimer(t, r1.start.Add(testGrace), 2)
	c.Close()
	if err := r1.wait(t); err != nil {
		t.Fatalf("first Drain: %v", err)
	}
	if err := r2.wait(t); err != nil {
		t.Fatalf("second Drain: %v", err)
	}
}

// A Drain called again after one finished waits again, with its own ctx.
func TestDrainAgain(t *testing.T) {
	clock := newFakeClock()
	d := &Drainer{KeepAliveGrace: testGrace, clock: clock}
	ln := listenLoopback(t)
	tl := d.Listener(ln)
	cli := dialClient(t, ln.Addr().String())
	c, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Already-cancelled ctx: the raw (active) connection is force-closed.
	if err := d.Drain(ctx); !errors.Is(err, ErrDrainDeadline) {
		t.Fatalf("Drain with a done ctx: %v", err)
	}
	cli.expectClosed(t)
	if err := d.Drain(context.Background()); err != nil {
		t.Fatalf("second Drain with nothing open: %v", err)
	}
}

// A connection the kernel handed to Accept just as Drain closed the listener is
// tracked and waited for, not dropped.
func TestDrainWaitsForAcceptInFlight(t *testing.T) {
	clock := newFakeClock()
	d := &Drainer{KeepAliveGrace: testGrace, clock: clock}
	fl := &slowListener{entered: make(chan struct{}), conn: make(chan net.Conn), closed: make(chan struct{})}
	tl := d.Listener(fl)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := tl.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	<-fl.entered
	r := startDrain(t, d, clock)
	<-fl.closed
	// Nothing observable happens while Drain (correctly) waits, so this one check
	// gives a broken Drain a moment to return early.
	select {
	case <-r.done:
		t.Fatalf("Drain returned (%v) while a connection was being accepted", r.err)
	case <-time.After(50 * time.Millisecond):
	}
	p1, p2 := net.Pipe()
	defer p2.Close()
	fl.conn <- p1
	c := <-accepted
	if got := d.Counts(); got.Total() != 1 {
		t.Fatalf("Counts = %+v; want the late connection tracked", got)
	}
	if r.returned() {
		t.Fatal("Drain returned with the late connection open")
	}
	c.Close()
	if err := r.wait(t); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

// slowListener's Accept returns a connection only when the test hands it one, even
// after Close: a connection the kernel accepted just before the close.
type slowListener struct {
	entered chan struct{}
	conn    chan net.Conn
	closed  chan struct{}
	once    sync.Once
}

func (l *slowListener) Accept() (net.Conn, error) {
	close(l.entered)
	return <-l.conn, nil
}

func (l *slowListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *slowListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// expectRefused checks that nothing listens on addr any more: a dial is refused.
// Once the listener is closed its port is free, and another socket may take it
// before the dial (another process's, or the dialling socket itself: with nothing
// listening, the kernel may pick the destination port as the source port and
// connect the socket to itself). Then the dial connects to that socket, which
// proves nothing either way, and the check is skipped.
func expectRefused(t testing.TB, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err == nil {
		c.Close()
		// Connected: another process may have bound the port since (a reuse), or our
		// own listener is still open. Only the second is a failure.
		_, port, _ := net.SplitHostPort(addr)
		if ownListening(t, port) {
			t.Fatalf("dial %s connected, and this process still has a listening socket on port %s: the listener was left open", addr, port)
		}
		t.Logf("dial %s connected to another process's socket (the port was reused); ours is closed", addr)
		return
	}
	// A reset instead of a refusal: a socket of another process in the port's
	// four-tuple answered (seen with concurrent test processes); not ours either.
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial %s: %v; want connection refused", addr, err)
	}
}

// ownListening reports whether this process holds a TCP socket listening on port
// (hex port and state 0A in /proc/net/tcp{,6}, with an inode among our fds).
func ownListening(t testing.TB, port string) bool {
	t.Helper()
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]bool{}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
			ours[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	hexPort := fmt.Sprintf(":%04X", n)
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) > 9 && strings.HasSuffix(fs[1], hexPort) && fs[3] == "0A" && ours[fs[9]] {
				return true
			}
		}
	}
	return false
}

// eventually polls cond, for state that has no event to wait on.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
