package graceful

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// defaultKeepAliveGrace is how long a Drainer lets an idle keep-alive connection live
// after draining starts (or after its last response) before closing it.
const defaultKeepAliveGrace = time.Second

// ErrDrainDeadline is returned by Drain and Shutdown when connections were still
// open at the deadline and were force-closed.
var ErrDrainDeadline = errors.New("graceful: drain deadline reached; remaining connections were force-closed")

// errResumed ends a drain the Upgrader took back: the new generation died and this
// process serves again.
var errResumed = errors.New("graceful: drain abandoned: serving again")

// A Drainer counts the connections accepted through its listeners and drains them:
// it is the layer every restart path shares. It works under any protocol; a Server
// uses one that also knows which HTTP connections are idle, active or hijacked.
//
// Drain proceeds in stages, so that no request that reached the process goes
// unanswered:
//
//  1. Draining is signalled (the channel returned by Draining, and the one the
//     package-level Draining function returns for a request's context, are closed)
//     and the Drainer's listeners stop accepting. Connections still in the kernel's
//     accept queue stay there for whichever process shares the socket. A listener
//     that cannot stop accepting without closing (one with no SetDeadline method,
//     such as tls.NewListener's or a struct embedding a net.Listener) is closed,
//     and the drain cannot be taken back. A *net.TCPListener or *net.UnixListener
//     that stops accepting while the drain can still be taken back is closed too,
//     its socket kept open and a unix socket's file left in place (Linux): the
//     process then neither accepts nor wakes for the connections that arrive for
//     the new generation. Taken back, the drain makes a new listener on
//     the same socket, which the Drainer's listener accepts through (and Upgrader
//     passes on); the net.Listener given to the Drainer stays closed.
//  2. HTTP keep-alive stops (Server): every HTTP/1 request whose handler starts from
//     now on is answered with "Connection: close", and its connection is closed
//     after the response; HTTP/2 connections are told to go away (two GOAWAY frames:
//     see Server) and finish the streams they have.
//  3. A connection that is idle (between requests, as reported by ConnState) or new
//     (accepted, no byte received yet; HTTP only, see ConnState) is closed once it has
//     been so for the keep-alive grace period (one second), counted from the start of
//     the drain at the earliest; one with bytes waiting in its receive queue is never
//     taken for idle. A client that sends its next request within the grace period
//     gets a full answer. But a drain the Upgrader runs after a handover (or, with
//     Config.FDStore, as the main process stops under systemd) first hands over to
//     the new generation (or the fd store) every connection that waits at a safe
//     point, at once, and each one as it gets there: a Server's plain HTTP/1
//     connections (see Server), and those of a Drainer with HandOverIdle. Stage 2
//     then leaves their responses without "Connection: close".
//  4. Active connections (a request being read or handled; a raw-protocol connection
//     not reported idle) and hijacked ones (websockets) run until they close by
//     themselves; their handlers learn of the drain through Draining.
//  5. When the deadline passes, every connection still open is force-closed.
//
// A Drainer whose listener came from the process's Upgrader (Upgrader.Listen) belongs
// to the Upgrader: it drains when a new generation has taken over or the process is
// asked to stop, and if the new generation dies while this process is still
// draining, or stands by for the new generation's probation once drained (see
// Config.Probation), its listeners accept again and Draining returns a new channel:
// the process serves on. Upgrader.Wait waits for its drain. Any other Drainer is drained
// by calling Drain.
//
// The zero Drainer is ready to use.
type Drainer struct {
	// KeepAliveGrace is the grace period of stage 3; zero means one second.
	KeepAliveGrace time.Duration
	// HandOverIdle makes a drain after a handover hand each connection of the
	// application's own protocol to the new generation once it is at a safe point,
	// instead of closing it (stage 3): the application reported it idle, with
	// ConnState(c, http.StateIdle), at a point where its reader holds no byte of the
	// connection (a buffered reader is empty), and it is then blocked in a Read of
	// c. Whatever the client sends next is still in the socket and moves with it.
	// The new generation's Drainer on the same socket (by name, else address) must
	// set HandOverIdle too: its Accept returns the connection as a new one, to be
	// served from that safe point on (no greeting, no handshake). Linux only; the
	// listener must come from the Upgrader; not for TLS.
	HandOverIdle bool

	clock clock // nil means the system clock; tests inject a fake one
	// reopened, if set, hears of a listener's socket that got a new listener as
	// a drain was taken back (see listener.park), or of the error that kept it
	// from getting one: the Upgrader's Set holds the new one from then on, or the
	// Upgrader logs the error. Set before the first drain; called with mu held.
	reopened  func(old, new net.Listener, err error)
	mu        sync.Mutex
	conns     map[*conn]struct{}
	listeners []*listener
	drainCh   chan struct{} // closed when draining starts; replaced when it is taken back
	draining  atomic.Bool
	final     bool // the listeners were closed for good
	quiesced  bool // listeners paused ahead of a handover, not draining (quiesce)
	drainedAt time.Time
	http      bool
	changed   chan struct{} // closed and replaced on every change while draining
	accepted  atomic.Uint64
	requests  atomic.Uint64 // HTTP requests answered (Server), not those whose handler hijacked the connection
	forced    atomic.Uint64 // connections force-closed at a deadline
	// accepting counts the Accept calls between the start of the underlying Accept
	// and the tracking of the connection it returned, so that a drain does not report
	// "all closed" while a connection the kernel handed over is not tracked yet.
	// Incremented without mu, decremented with mu held.
	accepting atomic.Int64
	server    bool // a Server's own: the Server is the Upgrader's target
	adopted   bool // a target of the Upgrader

	// Connections handed to the next generation (connpass.go).
	pass       atomic.Pointer[connCarrier] // where; nil: connections are drained as always
	passing    atomic.Bool                 // this drain hands connections over
	handing    sync.Mutex                  // one handOver at a time (several waits may run)
	received   atomic.Uint64
	handedOver atomic.Uint64
}

func (d *Drainer) init() {
	if d.conns == nil {
		d.conns = make(map[*conn]struct{})
		d.drainCh = make(chan struct{})
		d.changed = make(chan struct{})
	}
}

func (d *Drainer) now() time.Time {
	if d.clock == nil {
		return time.Now()
	}
	return d.clock.Now()
}

func (d *Drainer) grace() time.Duration {
	if d.KeepAliveGrace <= 0 {
		return defaultKeepAliveGrace
	}
	return d.KeepAliveGrace
}

// Draining returns a channel that is closed when draining starts. If the drain is
// taken back (see Drainer), later calls return a new channel.
func (d *Drainer) Draining() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	return d.drainCh
}

// Counts returns the current connection counts.
func (d *Drainer) Counts() ConnCounts {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := ConnCounts{Accepted: d.accepted.Load(), Received: d.received.Load(), HandedOver: d.handedOver.Load()}
	for cn := range d.conns {
		switch cn.state {
		case http.StateNew:
			c.New++
		case http.StateIdle:
			c.Idle++
		case http.StateHijacked:
			c.Hijacked++
		default:
			c.Active++
		}
	}
	return c
}

// Listener returns l wrapped so that the connections it accepts are tracked. Closing
// the returned listener closes l; so does the end of a drain. If l came from the
// process's Upgrader, the Drainer is the Upgrader's (see Drainer). Wrap l before any
// TLS: the Drainer tracks the connections underneath.
func (d *Drainer) Listener(l net.Listener) net.Listener {
	d.mu.Lock()
	d.init()
	tl := &listener{Listener: l, d: d, wake: make(chan struct{})}
	d.listeners = append(d.listeners, tl)
	switch {
	case d.final:
		defer tl.closeForDrain()
	case d.draining.Load():
		tl.paused = true
		if !tl.stop() {
			defer tl.closeForDrain()
		} else {
			tl.park() // as stopAccepting parks the others
		}
	}
	adopt := !d.server && !d.adopted
	d.mu.Unlock()
	u := processUpgrader()
	if u == nil || !u.set.Holds(l) {
		return tl
	}
	tl.held = u.held
	if adopt {
		d.mu.Lock()
		adopt, d.adopted = !d.adopted, true
		d.mu.Unlock()
		if adopt {
			u.adopt(&target{d: d})
		}
		if d.HandOverIdle {
			u.ext.conns.serve(d, tl, l, passRaw)
		}
	}
	return tl
}

// attach makes the Drainer follow srv's connections: it chains srv.ConnState (to know
// which connections are idle, active or hijacked), wraps srv.Handler (to send
// "Connection: close" while draining) and srv.BaseContext (so that handlers can wait
// on Draining(r.Context())).
func (d *Drainer) attach(srv *http.Server) {
	d.mu.Lock()
	d.init()
	d.http = true
	d.mu.Unlock()
	prevState := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		c = netConnOf(c) // what net/http gave the Server, for an HTTP/2 connection
		d.ConnState(c, st)
		if prevState != nil {
			prevState(c, st)
		}
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.draining.Load() && r.ProtoMajor == 1 && !d.keepsAlive(r) {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
		if c, ok := r.Context().Value(connKey{}).(*conn); !ok || !c.hijacked.Load() {
			d.requests.Add(1) // answered: not a connection a handler took over
		}
	})
	prevConn := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prevConn != nil {
			ctx = prevConn(ctx, c)
		}
		if tc := d.tracked(c); tc != nil {
			ctx = context.WithValue(ctx, connKey{}, tc)
		}
		return ctx
	}
	prevBase := srv.BaseContext
	srv.BaseContext = func(l net.Listener) context.Context {
		ctx := context.Background()
		if prevBase != nil {
			ctx = prevBase(l)
		}
		return context.WithValue(ctx, drainerKey{}, d)
	}
}

type drainerKey struct{}

// connKey is the context key of a request's tracked connection.
type connKey struct{}

// tracked returns the tracked connection of d that c is (or wraps), or nil.
func (d *Drainer) tracked(c net.Conn) *conn {
	switch cc := c.(type) {
	case *tls.Conn:
		c = cc.NetConn()
	case tlsConn:
		c = cc.conn
	}
	if tc, ok := c.(*conn); ok && tc.d == d {
		return tc
	}
	return nil
}

// Draining returns a channel that is closed when the Server that received the request
// whose context is ctx starts draining, or nil (a channel that never closes) when ctx
// does not come from a Server. Handlers of long-lived or hijacked connections
// (websockets, streams, server-sent events) select on it to end politely before the
// drain deadline force-closes them.
func Draining(ctx context.Context) <-chan struct{} {
	if d, ok := ctx.Value(drainerKey{}).(*Drainer); ok {
		return d.Draining()
	}
	return nil
}

// ConnState records that c, a connection accepted through one of d's listeners, is
// now in state st. A Server reports every state change itself. A raw-protocol server
// may call it (http.StateIdle between requests, http.StateActive during one) so that
// a drain closes its idle connections after the grace period; a raw connection it
// never reports stays active until it closes or the deadline. Other connections are
// ignored.
func (d *Drainer) ConnState(c net.Conn, st http.ConnState) {
	tc := d.tracked(c)
	if tc == nil || st == http.StateClosed {
		return
	}
	if tc.kind != passNever {
		tc.noteState(st)
	}
	d.mu.Lock()
	if _, open := d.conns[tc]; open {
		tc.state = st
		if st == http.StateHijacked {
			tc.hijacked.Store(true)
		}
		if st == http.StateIdle {
			tc.idleSince = d.now()
			tc.reading.Store(false)
		}
		d.changedLocked()
	}
	d.mu.Unlock()
}

// changedLocked wakes every drain waiting for a change. d.mu is held.
func (d *Drainer) changedLocked() {
	if d.draining.Load() {
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

// add tracks c, which an Accept counted in d.accepting returned, or which the
// previous generation handed over (received).
func (d *Drainer) add(c *conn, received bool) {
	if received {
		d.received.Add(1)
	} else {
		d.accepted.Add(1)
	}
	d.mu.Lock()
	if d.http {
		c.state = http.StateNew
		c.idleSince = d.now()
	} else {
		c.state = http.StateActive
	}
	d.conns[c] = struct{}{}
	if !received {
		d.accepting.Add(-1)
	}
	d.changedLocked()
	d.mu.Unlock()
}

// acceptEnded ends an Accept counted in d.accepting that returned no connection.
func (d *Drainer) acceptEnded() {
	d.mu.Lock()
	d.accepting.Add(-1)
	d.changedLocked()
	d.mu.Unlock()
}

func (d *Drainer) remove(c *conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.changedLocked()
	d.mu.Unlock()
}

// Drain drains the connections in the stages described on Drainer: its listeners are
// closed at once, then it waits until every connection has closed (nil) or until ctx
// is done, when it force-closes the rest and returns ErrDrainDeadline. Calling Drain
// again, or from several goroutines, waits again, each with its own ctx.
func (d *Drainer) Drain(ctx context.Context) error {
	d.stopAccepting(true)
	return d.wait(ctx)
}

// stopAccepting starts draining. With final, the listeners are closed; without,
// they only stop accepting (resume can take it back).
func (d *Drainer) stopAccepting(final bool) {
	d.mu.Lock()
	d.init()
	if !d.draining.Load() {
		d.drainedAt = d.now()
		d.draining.Store(true)
		close(d.drainCh)
	}
	d.final = d.final || final
	d.quiesced = false // the drain's from now on
	lns := append([]*listener(nil), d.listeners...)
	inboxes := make([][]arrival, len(lns))
	for i, l := range lns {
		l.paused, l.quiet = true, false
		inboxes[i] = l.takeInbox()
	}
	d.mu.Unlock()
	for _, l := range lns {
		d.mu.Lock()
		paused := !final && l.stop()
		if paused {
			l.park()
		}
		d.mu.Unlock()
		if !paused {
			l.closeForDrain()
		}
	}
	d.flushInboxes(lns, inboxes)
}

// resumable reports whether every listener can stop accepting without closing
// its socket, and none has been closed by the application.
func (d *Drainer) resumable() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.listeners {
		if l.closed.Load() {
			return false
		}
		if _, ok := l.Listener.(deadliner); !ok {
			return false
		}
	}
	return true
}

// resume takes a drain back: the listeners accept again, keep-alive is on again,
// and Draining returns a new channel.
func (d *Drainer) resume() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.draining.Load() {
		return
	}
	d.draining.Store(false)
	d.passing.Store(false)
	d.drainCh = make(chan struct{})
	close(d.changed) // wakes wait, which sees ctx canceled
	d.changed = make(chan struct{})
	for _, l := range d.listeners {
		l.restart()
	}
}

// closeListeners closes every listener for good: the end of a drain.
func (d *Drainer) closeListeners() {
	d.mu.Lock()
	d.final = true
	lns := append([]*listener(nil), d.listeners...)
	d.mu.Unlock()
	for _, l := range lns {
		l.closeForDrain()
	}
}

// closedByDrain reports whether l, a listener of d, was closed by a drain (not by
// the application).
func (d *Drainer) closedByDrain(l net.Listener) bool {
	tl, ok := l.(*listener)
	return ok && tl.d == d && tl.byDrain.Load()
}

// wait waits for every connection to close, in the stages described on Drainer. When
// ctx is done it force-closes what is left and returns ErrDrainDeadline, unless its
// cause is errResumed: then it returns that and closes nothing.
func (d *Drainer) wait(ctx context.Context) error {
	grace := d.grace()
	for {
		now := d.now()
		var closeNow, hand []*conn
		var next time.Time
		passing := d.passing.Load()
		d.mu.Lock()
		// Closed when anything changes after this pass; every concurrent wait
		// waits on it.
		wake := d.changed
		open := len(d.conns) + int(d.accepting.Load())
		for c := range d.conns {
			if passing && c.waiting.Load() {
				hand = append(hand, c)
				continue
			}
			if !c.unused() {
				continue
			}
			since := c.idleSince
			if since.Before(d.drainedAt) {
				since = d.drainedAt
			}
			deadline := since.Add(grace)
			if !now.Before(deadline) {
				closeNow = append(closeNow, c)
			} else if next.IsZero() || deadline.Before(next) {
				next = deadline
			}
		}
		d.mu.Unlock()
		if open == 0 {
			return nil
		}
		if context.Cause(ctx) == errResumed {
			return errResumed
		}
		for _, c := range closeNow {
			c.Close()
		}
		if len(hand) > 0 {
			d.handOver(hand)
		}
		if len(closeNow) > 0 || len(hand) > 0 {
			continue
		}
		var timerC <-chan time.Time
		var t timer
		if !next.IsZero() {
			t = timerAt(d.clock, next, now)
			timerC = t.C()
		}
		select {
		case <-wake:
		case <-timerC:
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			if context.Cause(ctx) == errResumed {
				return errResumed
			}
			d.closeAll()
			return ErrDrainDeadline
		}
		if t != nil {
			t.Stop()
		}
	}
}

// closeAll force-closes every tracked connection.
func (d *Drainer) closeAll() {
	d.mu.Lock()
	all := make([]*conn, 0, len(d.conns))
	for c := range d.conns {
		all = append(all, c)
	}
	d.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
	d.forced.Add(uint64(len(all)))
}
