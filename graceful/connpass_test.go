//go:build linux

package graceful

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The hand-off tests run two generations in one process, each an http.Server with a
// Drainer on a real loopback listener, and the connection carriers between them: the
// old one's successor is a peer that hands each message (with copies of its
// descriptors, as the channel would) to the new one's carrier. A response says which
// generation answered. No step waits on time: each waits for an observable event
// (a state net/http reports, a Read blocked at a safe point, a response).

// gen is one generation of a pair.
type gen struct {
	name  string
	d     *Drainer
	srv   *http.Server
	log   *stateLog
	c     *connCarrier
	tl    *listener
	addr  string
	done  chan struct{}
	clock *fakeClock
}

// testHost is the process as a carrier sees it, in a test.
type testHost struct{ wg sync.WaitGroup }

func (h *testHost) Logger() *slog.Logger        { return slog.Default() }
func (h *testHost) Inherited(string) []*os.File { return nil }
func (h *testHost) Store() carry.Store          { return nil }
func (h *testHost) Go(f func())                 { h.wg.Add(1); go func() { defer h.wg.Done(); f() }() }
func (h *testHost) wait()                       { h.wg.Wait() }
func (h *testHost) Generation() int             { return 1 }
func (h *testHost) UnderMaster() bool           { return false }
func (h *testHost) TakesBack(net.PacketConn)    {}
func (p *testPeer) count() int                  { p.mu.Lock(); defer p.mu.Unlock(); return p.conns }
func (p *testPeer) setErr(err error)            { p.mu.Lock(); p.err = err; p.mu.Unlock() }
func (g *gen) counts() ConnCounts               { return g.d.Counts() }

// testPeer is the successor as the old generation's carrier sees it: it hands each
// message to the new generation's carrier, with copies of its descriptors, and says
// it has them ("conns-taken") to the old one's carrier first, as a successor does
// as it receives them. A stalled one (a successor stopped, or dead, with the message
// in its channel's queue) keeps the message and says nothing.
type testPeer struct {
	mu      sync.Mutex
	to      *connCarrier
	from    *connCarrier
	err     error
	conns   int
	stalled []handoff.Message
	stall   bool
	// goneMidSend: the successor goes away while a message is being sent to it
	// (its exit is judged, peerGone), and the send fails.
	goneMidSend bool
}

func (p *testPeer) Send(m handoff.Message) error {
	p.mu.Lock()
	err, gone := p.err, p.goneMidSend
	p.mu.Unlock()
	if gone {
		p.from.peerGone(p)
		return errors.New("the successor is dead")
	}
	if err != nil {
		return err
	}
	var files []*os.File
	for _, f := range m.Files {
		nc, err := net.FileConn(f)
		if err != nil {
			return err
		}
		g, err := dupConn(nc)
		nc.Close()
		if err != nil {
			return err
		}
		files = append(files, g)
	}
	m.Files = files
	p.mu.Lock()
	if p.stall {
		p.stalled = append(p.stalled, m)
		p.mu.Unlock()
		return nil
	}
	p.conns += len(files)
	p.mu.Unlock()
	p.from.peerTook(p, len(files))
	p.to.Take(m, carry.Final)
	return nil
}

// die ends a stalled peer: the messages in its queue are lost with it, nothing can
// be sent to it any more, and the old generation hears it is gone.
func (p *testPeer) die() {
	p.mu.Lock()
	lost := p.stalled
	p.stalled, p.err = nil, errors.New("the successor is dead")
	p.mu.Unlock()
	for _, m := range lost {
		closeFiles(m.Files)
	}
	p.from.peerGone(p)
}

// newGen starts a generation serving on ln; its handler answers "<name> <path>"
// (and h, if set, runs first).
func newGen(t *testing.T, name string, ln net.Listener, h func(w http.ResponseWriter, r *http.Request)) *gen {
	t.Helper()
	g := &gen{name: name, log: newStateLog(), done: make(chan struct{}), clock: newFakeClock()}
	g.d = &Drainer{KeepAliveGrace: testGrace, clock: g.clock, server: true}
	g.srv = &http.Server{ConnState: g.log.hook, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h != nil {
			h(w, r)
		}
		io.WriteString(w, name+" "+r.URL.Path)
	})}
	g.d.attach(g.srv)
	g.c = newConnCarrier(slog.Default(), nil)
	g.c.h = &testHost{}
	g.tl = g.d.Listener(ln).(*listener)
	g.addr = ln.Addr().String()
	g.c.attach(g.d, g.tl, connOrigin{Name: "http", Network: "tcp", Addr: g.addr}, passHTTP)
	g.c.Turn(carry.Turn{Role: carry.Serving, Main: true})
	go func() {
		defer close(g.done)
		g.srv.Serve(g.tl)
	}()
	t.Cleanup(func() {
		g.srv.Close()
		<-g.done
		g.c.h.(*testHost).wait()
	})
	return g
}

// pair is an old generation and the new one it hands its connections to, on one
// socket.
type pair struct {
	old, new *gen
	peer     *testPeer
}

func newPair(t *testing.T, oldHandler func(w http.ResponseWriter, r *http.Request)) *pair {
	t.Helper()
	// Two sockets, one name: connections go by name.
	p := &pair{old: newGen(t, "old", listenLoopback(t), oldHandler), new: newGen(t, "new", listenLoopback(t), nil)}
	p.peer = &testPeer{to: p.new.c, from: p.old.c}
	return p
}

// handOver makes the old generation hand over and drain, as after an upgrade: its
// carrier hears of the successor, then its drain starts. It returns the drain's
// outcome channel.
func (p *pair) handOver(t *testing.T) <-chan error {
	t.Helper()
	p.old.c.Turn(carry.Turn{Role: carry.Upgrading, Main: true})
	p.old.d.handsOver()
	if !p.old.d.passing.Load() {
		t.Fatal("the drain does not hand connections over")
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	t.Cleanup(cancel)
	go func() { done <- p.old.d.Drain(ctx) }()
	<-p.old.d.Draining()
	p.old.c.Turn(carry.Turn{Role: carry.HandedOver, Successor: p.peer})
	return done
}

// expect reads one response on c and checks it came from generation who for path.
func expect(t *testing.T, c *client, who, path string) *http.Response {
	t.Helper()
	resp, body := c.response(t)
	if resp.StatusCode != 200 || body != who+" "+path {
		t.Fatalf("%s: got %d %q; want %q", c.LocalAddr(), resp.StatusCode, body, who+" "+path)
	}
	if closesConn(resp) {
		t.Fatalf("%s: the response to %s says Connection: close", c.LocalAddr(), path)
	}
	return resp
}

// idle makes n keep-alive connections, each answered once by the old generation and
// idle since, at net/http's wait for the next request.
func (p *pair) idle(t *testing.T, n int) []*client {
	t.Helper()
	var cs []*client
	for i := 0; i < n; i++ {
		c := dialClient(t, p.old.addr)
		c.send(t, "/first")
		expect(t, c, "old", "/first")
		cs = append(cs, c)
	}
	for _, c := range cs {
		sc := p.old.log.wait(t, c, http.StateIdle, 1)
		eventually(t, "the idle wait", sc.waiting.Load)
	}
	return cs
}

// nextAnsweredBy sends a request on each of cs and checks that generation who
// answers it, on the same connection.
func nextAnsweredBy(t *testing.T, cs []*client, who string) {
	t.Helper()
	for i, c := range cs {
		path := "/next" + strconv.Itoa(i)
		c.send(t, path)
		expect(t, c, who, path)
	}
}

func waitDrain(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the old generation's drain: %v", err)
		}
	case <-time.After(waitBound):
		t.Fatal("the old generation's drain did not end")
	}
}

// TestHandOverIdle: idle keep-alive connections move to the new generation at the
// handover: the old one's drain ends at once, and each client's next request, on
// the same connection, is answered by the new one. The counts follow.
func TestHandOverIdle(t *testing.T) {
	p := newPair(t, nil)
	cs := p.idle(t, 16)
	waitDrain(t, p.handOver(t))
	nextAnsweredBy(t, cs, "new")
	if got := p.old.counts(); got.HandedOver != 16 || got.Total() != 0 {
		t.Errorf("old counts %+v; want 16 handed over, none open", got)
	}
	if got := p.new.counts(); got.Received != 16 || got.Accepted != 0 {
		t.Errorf("new counts %+v; want 16 received, none accepted", got)
	}
}

// TestHandOverSuccessorGone: the old generation lets its copy of a connection go
// only once the successor says it has it. Until then the connection waits, unread,
// and a request the client sends meanwhile stays in the socket; if the successor is
// gone first (the connections still in its channel's queue are lost with it), the
// old generation, resuming, serves the connection again, that request included.
func TestHandOverSuccessorGone(t *testing.T) {
	p := newPair(t, nil)
	p.peer.stall = true
	cs := p.idle(t, 3)
	p.handOver(t)
	eventually(t, "the connections sent", func() bool {
		p.peer.mu.Lock()
		defer p.peer.mu.Unlock()
		return len(p.peer.stalled) == 1
	})
	if got := p.old.counts(); got.HandedOver != 0 || got.Total() != 3 {
		t.Fatalf("old counts %+v while the successor is silent; want 3 open, none handed over", got)
	}
	for i, c := range cs {
		c.send(t, "/meanwhile"+strconv.Itoa(i))
	}
	// The successor dies; the old generation resumes, then takes back what the
	// dead one did not take, as its machine does (onSuccessorExit).
	p.old.c.Turn(carry.Turn{Role: carry.Serving, Main: true})
	p.old.d.resume()
	p.peer.die()
	for i, c := range cs {
		expect(t, c, "old", "/meanwhile"+strconv.Itoa(i))
		c.send(t, "/again")
		expect(t, c, "old", "/again")
	}
	if got := p.old.counts(); got.HandedOver != 0 || got.Total() != 3 {
		t.Errorf("old counts %+v; want 3 open, none handed over", got)
	}
}

// TestHandOverAfterResponse: a connection in the middle of a request when the drain
// starts is answered by the old generation without "Connection: close", and moves
// as it becomes idle; the drain ends then.
func TestHandOverAfterResponse(t *testing.T) {
	release := make(chan struct{})
	p := newPair(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
	})
	c := dialClient(t, p.old.addr)
	c.send(t, "/slow")
	p.old.log.wait(t, c, http.StateActive, 1)
	done := p.handOver(t)
	close(release)
	expect(t, c, "old", "/slow")
	waitDrain(t, done)
	c.send(t, "/after")
	expect(t, c, "new", "/after")
}

// TestHandOverPipelined: requests pipelined behind one in progress (in net/http's
// buffer, the second with a body that arrives later, read by its handler with a
// buffer as large as net/http's) are all answered by the old generation; the
// connection moves only once it is idle with an empty buffer.
func TestHandOverPipelined(t *testing.T) {
	release := make(chan struct{})
	reading := make(chan struct{})
	p := newPair(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			<-release
		case "/body":
			close(reading)
			buf := make([]byte, 4096)
			n := 0
			for {
				k, err := r.Body.Read(buf)
				n += k
				if err != nil {
					break
				}
			}
			fmt.Fprintf(w, "%d ", n)
		}
	})
	c := dialClient(t, p.old.addr)
	const size = 20000
	body := strings.Repeat("x", size)
	pipelined := "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" +
		"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: " + strconv.Itoa(size) + "\r\n\r\n" + body[:100]
	if _, err := io.WriteString(c, pipelined); err != nil {
		t.Fatal(err)
	}
	sc := p.old.log.wait(t, c, http.StateActive, 1)
	done := p.handOver(t)
	close(release)
	expect(t, c, "old", "/slow")
	<-reading
	// The handler's body read waits in the kernel, reported idle since /slow's
	// response (net/http read /body's header from its buffer): not a safe point.
	eventually(t, "the body read", func() bool { sc.p.mu.Lock(); defer sc.p.mu.Unlock(); return sc.p.inRead })
	if sc.waiting.Load() {
		t.Fatal("a handler's body read is taken for a safe point")
	}
	if _, err := io.WriteString(c, body[100:]); err != nil {
		t.Fatal(err)
	}
	resp, got := c.response(t)
	if want := strconv.Itoa(size) + " old /body"; got != want || closesConn(resp) {
		t.Fatalf("pipelined POST: %q (close %v); want %q kept alive", got, closesConn(resp), want)
	}
	waitDrain(t, done)
	c.send(t, "/after")
	expect(t, c, "new", "/after")
	// Two requests pipelined at once on an idle connection of the new generation
	// are both answered, in order, whatever moves.
	if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	expect(t, c, "new", "/a")
	expect(t, c, "new", "/b")
}

// TestHandOverBackgroundByte: the first byte of a request sent while the previous
// one is handled is read by net/http's background read; after the response, the
// wait for the rest reads with the rest of the buffer: not a safe point. The request
// is answered by the old generation, and the connection moves after.
func TestHandOverBackgroundByte(t *testing.T) {
	release := make(chan struct{})
	p := newPair(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
	})
	c := dialClient(t, p.old.addr)
	c.send(t, "/slow")
	sc := p.old.log.wait(t, c, http.StateActive, 1)
	if _, err := io.WriteString(c, "G"); err != nil {
		t.Fatal(err)
	}
	received := int64(len("GET /slow HTTP/1.1\r\nHost: test\r\n\r\n") + 1)
	eventually(t, "the background read takes the byte", func() bool { return bytesReceived(t, sc.Conn) == received && pending(sc.Conn) == 0 })
	done := p.handOver(t)
	close(release)
	expect(t, c, "old", "/slow")
	p.old.log.wait(t, c, http.StateIdle, 1)
	eventually(t, "the wait for the rest", func() bool { sc.p.mu.Lock(); defer sc.p.mu.Unlock(); return sc.p.inRead })
	if sc.waiting.Load() {
		t.Fatal("net/http's wait with a byte in its buffer is taken for a safe point")
	}
	if _, err := io.WriteString(c, "ET /b HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	expect(t, c, "old", "/b")
	waitDrain(t, done)
	c.send(t, "/after")
	expect(t, c, "new", "/after")
}

// TestHandOverPartialRequest: a connection with bytes of a request read by the old
// generation is never handed over: it finishes that request there, then moves.
func TestHandOverPartialRequest(t *testing.T) {
	p := newPair(t, nil)
	c := p.idle(t, 1)[0]
	if _, err := io.WriteString(c, "GET /partial HTTP/1.1\r\nHo"); err != nil {
		t.Fatal(err)
	}
	sc := p.old.log.wait(t, c, http.StateIdle, 1)
	eventually(t, "net/http reads the partial header", func() bool { return sc.reading.Load() })
	done := p.handOver(t)
	eventually(t, "the header read waits", func() bool { sc.p.mu.Lock(); defer sc.p.mu.Unlock(); return sc.p.inRead })
	if sc.waiting.Load() || p.peer.count() != 0 {
		t.Fatal("a connection with a partial request is at a safe point")
	}
	if _, err := io.WriteString(c, "st: t\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	expect(t, c, "old", "/partial")
	waitDrain(t, done)
	c.send(t, "/after")
	expect(t, c, "new", "/after")
}

// TestHandOverHalfClose: a client that half-closes after its request gets its answer
// and then the connection's end, whether its request came before the handover or
// after (the new generation answers it then).
func TestHandOverHalfClose(t *testing.T) {
	p := newPair(t, nil)
	cs := p.idle(t, 2)
	cs[0].send(t, "/before")
	cs[0].Conn.(*net.TCPConn).CloseWrite()
	expect(t, cs[0], "old", "/before")
	cs[0].expectClosed(t)
	waitDrain(t, p.handOver(t))
	cs[1].send(t, "/after")
	cs[1].Conn.(*net.TCPConn).CloseWrite()
	expect(t, cs[1], "new", "/after")
	cs[1].expectClosed(t)
}

// TestHandOverRace: requests sent at the instant the connections move are each
// answered exactly once, by one generation or the other, and the connections go on
// with the new one, each handed over once, also with a second wait on the drain
// beside it (as a Server's Serve waits on the Upgrader's drain).
func TestHandOverRace(t *testing.T) {
	for round := 0; round < 4; round++ {
		p := newPair(t, nil)
		cs := p.idle(t, 32)
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, len(cs))
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				path := "/race" + strconv.Itoa(i)
				if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(c.br, nil)
				if err != nil {
					errs <- fmt.Errorf("%s: %v", path, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				if s := string(b); s != "old "+path && s != "new "+path || resp.Close {
					errs <- fmt.Errorf("%s: %q (close %v)", path, s, resp.Close)
				}
			}()
		}
		close(start)
		done := p.handOver(t)
		second := make(chan error, 1)
		go func() { second <- p.old.d.wait(context.Background()) }()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		waitDrain(t, done)
		waitDrain(t, second)
		if got := p.old.counts().HandedOver; got != uint64(len(cs)) {
			t.Errorf("round %d: %d connections handed over; want each of %d once", round, got, len(cs))
		}
		for i, c := range cs {
			path := "/then" + strconv.Itoa(i)
			c.send(t, path)
			expect(t, c, "new", path)
		}
	}
}

// TestHandOverThroughDrained: connections an older generation hands over to one
// whose own drain has ended (it stands by for its successor's probation) go on to
// that successor: each client's next request, on the same connection, is answered
// there, none is closed.
func TestHandOverThroughDrained(t *testing.T) {
	a := newPair(t, nil)
	b := &pair{old: a.new, new: newGen(t, "newer", listenLoopback(t), nil)}
	b.peer = &testPeer{to: b.new.c, from: b.old.c}
	waitDrain(t, b.handOver(t)) // no connection: its drain ends at once
	b.old.c.Turn(carry.Turn{Role: carry.Drained, Successor: b.peer})
	cs := a.idle(t, 4)
	waitDrain(t, a.handOver(t))
	nextAnsweredBy(t, cs, "newer")
	if got := b.new.counts(); got.Received != 4 {
		t.Errorf("newest counts %+v; want 4 received", got)
	}
}

// TestTakeEndedByBytes: a hand-off that bytes ended (the Read returned them first)
// is over for the drain that began it, even when, before that drain runs again, the
// connection has answered them, waits at a safe point again, and another drain (a
// Server's Serve waits on its drain beside the Upgrader's) began a hand-off of its
// own: the first must not go on with the second's, or the connection would be handed
// over twice and served by two readers of one socket (a request split between them:
// "G" + "ET / HTTP/1.1", a 405). The test plays the Read by hand, as conn.Read does.
func TestTakeEndedByBytes(t *testing.T) {
	ln := listenLoopback(t)
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := newConn(nc, &Drainer{}, nil, passRaw)
	defer sc.Close()
	p := &sc.p
	locked := func(f func()) { p.mu.Lock(); defer p.mu.Unlock(); f() }
	readAtSafePoint := func() { p.inRead = true; sc.waiting.Store(true) }
	readReturned := func() { p.inRead = false; sc.waiting.Store(false) }

	locked(readAtSafePoint)
	first := make(chan bool, 1)
	go func() {
		f, ok := sc.take()
		if f != nil {
			f.Close()
		}
		first <- ok
	}()
	eventually(t, "the first hand-off waits for the Read", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.taking
	})
	locked(func() {
		readReturned()
		sc.endTakeLocked(false) // bytes came first: the first hand-off ends
		readAtSafePoint()       // answered; the next Read waits at a safe point
		if !sc.beginTakeLocked() {
			t.Error("a second hand-off could not begin")
		}
	})
	// The second hand-off stops the Read with nothing read (conn.Read), and the
	// first drain runs again.
	locked(func() { readReturned(); p.cond.Broadcast() })
	select {
	case ok := <-first:
		if ok {
			t.Error("the first drain took the connection during a hand-off that is not its own: it would be handed over twice")
		}
	case <-time.After(waitBound):
		t.Fatal("the first hand-off did not return")
	}
	locked(func() { sc.endTakeLocked(false) })
}

// TestHandOverFailed: when the successor cannot take the connections, they stay:
// the client's next request is answered by the old generation, which then drains as
// without a successor ("Connection: close").
func TestHandOverFailed(t *testing.T) {
	p := newPair(t, nil)
	c := p.idle(t, 1)[0]
	p.peer.setErr(errors.New("broken channel"))
	done := p.handOver(t)
	eventually(t, "the drain gives up handing over", func() bool { return !p.old.d.passing.Load() })
	c.send(t, "/next")
	resp, body := c.response(t)
	if body != "old /next" || !closesConn(resp) {
		t.Fatalf("after a failed hand-off: %q (close %v); want the old generation, Connection: close", body, closesConn(resp))
	}
	c.expectClosed(t)
	waitDrain(t, done)
}

// TestHandOverGoneMidSend: the successor is gone (peerGone) while the "conns"
// message is being sent, and the send fails: the batch, released by peerGone
// already (served here again), is not released a second time, and the drain stops
// handing over. The connection is the old generation's, and answered once.
func TestHandOverGoneMidSend(t *testing.T) {
	p := newPair(t, nil)
	c := p.idle(t, 1)[0]
	p.peer.goneMidSend = true
	done := p.handOver(t)
	eventually(t, "the drain gives up handing over", func() bool { return !p.old.d.passing.Load() })
	c.send(t, "/next")
	if _, body := c.response(t); body != "old /next" {
		t.Fatalf("after the successor went away mid-send: %q; want the old generation's answer", body)
	}
	waitDrain(t, done)
	if got := p.old.counts(); got.HandedOver != 0 {
		t.Errorf("old counts %+v; want none handed over", got)
	}
	p.old.c.mu.Lock()
	held := len(p.old.c.held)
	p.old.c.mu.Unlock()
	if held != 0 {
		t.Errorf("%d batches still held after the successor went away", held)
	}
}

// TestHandOverHijacked: a hijacked connection is never handed over.
func TestHandOverHijacked(t *testing.T) {
	hijacked := make(chan net.Conn, 1)
	p := newPair(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			nc, _, _ := w.(http.Hijacker).Hijack()
			hijacked <- nc
		}
	})
	c := dialClient(t, p.old.addr)
	c.send(t, "/ws")
	nc := <-hijacked
	done := p.handOver(t)
	nc.Write([]byte("bye"))
	nc.Close()
	waitDrain(t, done)
	if got := p.old.counts(); got.HandedOver != 0 {
		t.Errorf("counts %+v: a hijacked connection was handed over", got)
	}
}

// TestIdlePeek: the rule's picture of net/http holds in this Go: the Read of its
// wait for the next request is called by the Peek of conn.serve.
func TestIdlePeek(t *testing.T) {
	p := newPair(t, nil)
	c := p.idle(t, 1)[0]
	sc := p.old.log.wait(t, c, http.StateIdle, 1)
	if !sc.waiting.Load() {
		t.Fatal("net/http's wait for the next request is not a safe point: has net/http changed? (see conn.safePoint)")
	}
}

// bytesReceived returns how many bytes the socket of c has received (TCP_INFO).
func bytesReceived(t *testing.T, c net.Conn) int64 {
	var n int64
	withFD(c, func(fd int) {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		n = int64(info.Bytes_received)
	})
	return n
}

// TestHandOverRaw: a Drainer of the application's own protocol (a line echo) whose
// connections may be handed over as HandOverIdle makes them (passRaw; the carrier is
// wired by hand here, as Drainer.Listener does for a socket of the Upgrader's) hands
// over a connection it reported idle, with its reader empty, and blocked in a Read;
// the new generation's Drainer accepts it as a new connection and answers its next
// line. One with a line half read is not handed over until it has answered that line
// and is idle again.
func TestHandOverRaw(t *testing.T) {
	serve := func(name string, d *Drainer, ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if r.Buffered() == 0 {
						d.ConnState(c, http.StateIdle) // a safe point: nothing buffered
					}
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					d.ConnState(c, http.StateActive)
					fmt.Fprintf(c, "%s %s", name, line)
				}
			}()
		}
	}
	gens := map[string]*Drainer{}
	lns := map[string]net.Listener{}
	cs := map[string]*connCarrier{}
	for _, name := range []string{"old", "new"} {
		d := &Drainer{KeepAliveGrace: testGrace, clock: newFakeClock(), HandOverIdle: true}
		ln := listenLoopback(t)
		tl := d.Listener(ln).(*listener)
		c := newConnCarrier(slog.Default(), nil)
		c.h = &testHost{}
		c.attach(d, tl, connOrigin{Name: "lines", Network: "tcp", Addr: ln.Addr().String()}, passRaw)
		c.Turn(carry.Turn{Role: carry.Serving, Main: true})
		go serve(name, d, tl)
		t.Cleanup(func() { tl.Close(); c.h.(*testHost).wait() })
		gens[name], lns[name], cs[name] = d, ln, c
	}
	old := gens["old"]
	line := func(c net.Conn, br *bufio.Reader, send, want string) {
		t.Helper()
		if _, err := io.WriteString(c, send); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("sent %q: got %q, %v; want %q", send, got, err, want)
		}
	}
	idle := dialClient(t, lns["old"].Addr().String())
	line(idle, idle.br, "a\n", "old a\n")
	half := dialClient(t, lns["old"].Addr().String())
	line(half, half.br, "b\n", "old b\n")
	io.WriteString(half, "c") // half a line: read by the old generation
	server := func(cli net.Conn) *conn {
		old.mu.Lock()
		defer old.mu.Unlock()
		for c := range old.conns {
			if c.RemoteAddr().String() == cli.LocalAddr().String() {
				return c
			}
		}
		return nil
	}
	eventually(t, "the idle one at a safe point, the half line read", func() bool {
		si, sh := server(idle), server(half)
		return si.waiting.Load() && bytesReceived(t, sh.Conn) == 3 && pending(sh.Conn) == 0
	})
	peer := &testPeer{to: cs["new"], from: cs["old"]}
	cs["old"].Turn(carry.Turn{Role: carry.Upgrading, Main: true})
	old.handsOver()
	done := make(chan error, 1)
	go func() { done <- old.Drain(context.Background()) }()
	<-old.Draining()
	cs["old"].Turn(carry.Turn{Role: carry.HandedOver, Successor: peer})
	eventually(t, "the idle connection handed over", func() bool { return old.Counts().HandedOver == 1 })
	line(idle, idle.br, "d\n", "new d\n")
	line(half, half.br, "\n", "old c\n")
	eventually(t, "the other one handed over once idle", func() bool { return old.Counts().HandedOver == 2 })
	line(half, half.br, "e\n", "new e\n")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitBound):
		t.Fatal("the drain did not end")
	}
}
