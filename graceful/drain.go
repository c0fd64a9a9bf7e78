package graceful

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultKeepAliveGrace is how long a Drainer lets an idle keep-alive connection live
// after draining starts (or after its last response) before closing it.
const DefaultKeepAliveGrace = time.Second

// ErrDrainDeadline is returned by Drain when connections were still open at the
// deadline and were force-closed.
var ErrDrainDeadline = errors.New("graceful: drain deadline reached; remaining connections were force-closed")

// A Drainer counts the connections accepted through its listeners and drains them:
// it is the layer every restart path shares. It works under any protocol; attached to
// an http.Server (Attach), it also knows which connections are idle, active or
// hijacked and turns keep-alive off while draining.
//
// Drain proceeds in stages, so that no request that reached the process goes
// unanswered:
//
//  1. Draining is signalled (the channel returned by Draining, and the context value
//     read by the package-level Draining function, are closed) and every tracked
//     listener is closed: the process stops accepting. Connections still in the
//     kernel's accept queue stay there for whichever process shares the socket.
//  2. Keep-alive stops: every HTTP/1 request whose handler starts from now on is
//     answered with "Connection: close", and its connection is closed after the
//     response. (A request already being handled keeps its connection, which goes
//     idle after the response and is closed by stage 3.)
//  3. A connection that is idle (between requests) or new (accepted, no byte of a
//     request received yet) is closed once it has been so for KeepAliveGrace, counted
//     from the start of the drain at the earliest. A client that sends its next
//     request within the grace period gets a full answer.
//  4. Active connections (a request being read or handled, any raw-protocol
//     connection) and hijacked ones (websockets) run until they close by themselves.
//  5. When ctx is done, every connection still open is force-closed and Drain
//     returns ErrDrainDeadline.
//
// The zero Drainer is ready to use. A Drainer drains once.
type Drainer struct {
	// KeepAliveGrace is the grace period of stage 3; zero means
	// DefaultKeepAliveGrace.
	KeepAliveGrace time.Duration
	// Clock is the time source; nil means the system clock.
	Clock Clock

	mu        sync.Mutex
	conns     map[*Conn]struct{}
	listeners []*listener
	drainCh   chan struct{} // closed when draining starts
	draining  atomic.Bool
	drainedAt time.Time
	http      bool
	changed   chan struct{} // closed and replaced on every change while draining
	accepted  atomic.Uint64
	// accepting counts the Accept calls between the start of the underlying Accept
	// and the tracking of the connection it returned, so that Drain does not report
	// "all closed" while a connection the kernel handed over is not tracked yet.
	// Incremented without mu, decremented with mu held.
	accepting atomic.Int64
}

// ConnCounts is a snapshot of a Drainer's connections by state.
type ConnCounts struct {
	// New connections have been accepted but have not sent a byte of a request.
	New int `json:"new"`
	// Active connections are reading or handling a request (raw-protocol
	// connections are always active unless the server reports them idle).
	Active int `json:"active"`
	// Idle connections are kept alive between requests.
	Idle int `json:"idle"`
	// Hijacked connections were taken over by a handler (websockets).
	Hijacked int `json:"hijacked"`
	// Accepted counts every connection ever accepted.
	Accepted uint64 `json:"accepted"`
}

// Total returns the number of open connections.
func (c ConnCounts) Total() int { return c.New + c.Active + c.Idle + c.Hijacked }

func (d *Drainer) init() {
	if d.conns == nil {
		d.conns = make(map[*Conn]struct{})
		d.drainCh = make(chan struct{})
		d.changed = make(chan struct{})
	}
}

func (d *Drainer) clock() Clock {
	if d.Clock == nil {
		return systemClock{}
	}
	return d.Clock
}

func (d *Drainer) grace() time.Duration {
	if d.KeepAliveGrace <= 0 {
		return DefaultKeepAliveGrace
	}
	return d.KeepAliveGrace
}

// Draining returns a channel that is closed when Drain starts.
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
	c := ConnCounts{Accepted: d.accepted.Load()}
	for conn := range d.conns {
		switch conn.state {
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
// the returned listener closes l. Drain closes it too.
func (d *Drainer) Listener(l net.Listener) net.Listener {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	tl := &listener{Listener: l, d: d}
	d.listeners = append(d.listeners, tl)
	if d.draining.Load() {
		l.Close()
	}
	return tl
}

// Attach makes the Drainer follow srv's connections: it chains srv.ConnState (to know
// which connections are idle, active or hijacked), wraps srv.Handler (to send
// "Connection: close" while draining) and srv.BaseContext (so that handlers can wait
// on Draining(r.Context())). Call it before srv starts serving, and serve srv on
// listeners wrapped by d.Listener.
func (d *Drainer) Attach(srv *http.Server) {
	d.mu.Lock()
	d.init()
	d.http = true
	d.mu.Unlock()
	prevState := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		d.ConnState(c, st)
		if prevState != nil {
			prevState(c, st)
		}
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = d.Handler(h)
	prevBase := srv.BaseContext
	srv.BaseContext = func(l net.Listener) context.Context {
		ctx := context.Background()
		if prevBase != nil {
			ctx = prevBase(l)
		}
		return context.WithValue(ctx, drainerKey{}, d)
	}
}

// Handler returns h wrapped so that every HTTP/1 response started while draining
// carries "Connection: close". Attach installs it.
func (d *Drainer) Handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.draining.Load() && r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

type drainerKey struct{}

// Draining returns a channel that is closed when the server that received the request
// whose context is ctx starts draining, or nil (a channel that never closes) when ctx
// does not come from a Drainer-attached server. Handlers of long-lived or hijacked
// connections (websockets, streams) select on it to end politely before the drain
// deadline force-closes them.
func Draining(ctx context.Context) <-chan struct{} {
	if d, ok := ctx.Value(drainerKey{}).(*Drainer); ok {
		return d.Draining()
	}
	return nil
}

// ConnState records that c is now in state st. Attach installs it as srv.ConnState;
// a raw-protocol server may call it itself (StateIdle between requests, StateActive
// during one) so that Drain closes its idle connections after the grace period.
// Connections not accepted through d's listeners are ignored.
func (d *Drainer) ConnState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tc, ok := c.(*Conn)
	if !ok || tc.d != d || st == http.StateClosed {
		return
	}
	d.mu.Lock()
	if _, open := d.conns[tc]; open {
		tc.state = st
		if st == http.StateIdle {
			tc.idleSince = d.clock().Now()
			tc.reading.Store(false)
		}
		d.changedLocked()
	}
	d.mu.Unlock()
}

// changedLocked wakes every Drain waiting for a change. d.mu is held.
func (d *Drainer) changedLocked() {
	if d.draining.Load() {
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

// add tracks c, which an Accept counted in d.accepting returned.
func (d *Drainer) add(c *Conn) {
	d.accepted.Add(1)
	d.mu.Lock()
	if d.http {
		c.state = http.StateNew
		c.idleSince = d.clock().Now()
	} else {
		c.state = http.StateActive
	}
	d.conns[c] = struct{}{}
	d.accepting.Add(-1)
	d.changedLocked()
	d.mu.Unlock()
}

// acceptFailed ends an Accept counted in d.accepting that returned no connection.
func (d *Drainer) acceptFailed() {
	d.mu.Lock()
	d.accepting.Add(-1)
	d.changedLocked()
	d.mu.Unlock()
}

func (d *Drainer) remove(c *Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.changedLocked()
	d.mu.Unlock()
}

// Drain stops accepting and waits for the tracked connections to finish, in the stages
// described on Drainer, until ctx is done; then it force-closes what is left and
// returns ErrDrainDeadline. It returns nil once every connection has closed. Calling
// Drain again waits again, with the new ctx.
func (d *Drainer) Drain(ctx context.Context) error {
	d.mu.Lock()
	d.init()
	if !d.draining.Load() {
		d.drainedAt = d.clock().Now()
		d.draining.Store(true)
		close(d.drainCh)
	}
	listeners := append([]*listener(nil), d.listeners...)
	d.mu.Unlock()
	for _, l := range listeners {
		l.Listener.Close()
	}

	clock := d.clock()
	grace := d.grace()
	for {
		now := clock.Now()
		var closeNow []*Conn
		var next time.Time
		d.mu.Lock()
		// Closed when anything changes after this pass; every concurrent Drain
		// waits on it.
		wake := d.changed
		open := len(d.conns) + int(d.accepting.Load())
		for c := range d.conns {
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
		for _, c := range closeNow {
			c.Close()
		}
		if len(closeNow) > 0 {
			continue
		}
		var timerC <-chan time.Time
		var timer Timer
		if !next.IsZero() {
			timer = timerAt(clock, next, now)
			timerC = timer.C()
		}
		select {
		case <-wake:
		case <-timerC:
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			d.closeAll()
			return ErrDrainDeadline
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// closeAll force-closes every tracked connection.
func (d *Drainer) closeAll() {
	d.mu.Lock()
	all := make([]*Conn, 0, len(d.conns))
	for c := range d.conns {
		all = append(all, c)
	}
	d.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
}

// listener tracks the connections it accepts.
type listener struct {
	net.Listener
	d *Drainer
}

// Accept accepts a connection and tracks it. A connection accepted while draining is
// still tracked and served: it reached this process, so it gets an answer.
func (l *listener) Accept() (net.Conn, error) {
	l.d.accepting.Add(1)
	c, err := l.Listener.Accept()
	if err != nil {
		l.d.acceptFailed()
		return nil, err
	}
	tc := &Conn{Conn: c, d: l.d}
	l.d.add(tc)
	return tc, nil
}

// Conn is a connection tracked by a Drainer: the one record the drain layer keeps per
// accepted connection. It forwards everything to the connection it wraps.
type Conn struct {
	net.Conn
	d *Drainer
	// guarded by d.mu
	state     http.ConnState
	idleSince time.Time
	// reading is set once a byte of a request has been read, and cleared when the
	// connection goes idle, so that a request still being read (net/http calls the
	// connection new or idle until the whole header is in) is not mistaken for an
	// unused connection.
	reading atomic.Bool
	closed  atomic.Bool
}

// unused reports whether c carries no request: it is new or idle, no byte of a
// request has been read since, and none is waiting in the socket's receive queue.
// Called with d.mu held.
func (c *Conn) unused() bool {
	if c.state != http.StateIdle && c.state != http.StateNew {
		return false
	}
	return !c.reading.Load() && pending(c.Conn) == 0
}

// pending returns the number of bytes waiting in c's receive queue (0 if unknown).
func pending(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n
}

// Read reads from the connection and notes that the client has started a request.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.reading.Load() {
		c.reading.Store(true)
	}
	return n, err
}

// Close closes the connection and stops tracking it.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.d.remove(c)
	}
	return err
}

// ReadFrom lets io.Copy into the connection use the wrapped connection's fast path
// (sendfile, splice).
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite shuts down the writing side, when the wrapped connection can.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("graceful: connection does not support CloseWrite")
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }
