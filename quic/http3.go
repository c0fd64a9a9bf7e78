package handoverquic

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3app serves HTTP/3 for a Socket, each connection with an http3.Server of its
// own (from newServer), so that each can be told to go away at the right moment.
//
// quic-go's http3.Server.Shutdown sends one GOAWAY per connection and rejects
// (H3_REQUEST_REJECTED) every request stream that arrives after it: a request the
// client sends while the GOAWAY is on its way is rejected. RFC 9114 (section 5.2)
// avoids that race with two GOAWAY frames, which quic-go does not send. So a
// connection is shut down when the race cannot bite a client that sends one
// request at a time: as a request starts on it (that request is served, and its
// client reads the GOAWAY before it has the answer and sends its next request), or
// once it has had no request for goAwayIdle. A client with several requests in
// flight at once can still see one rejected, which HTTP/3 clients resend (the
// server did not process it: RFC 9114 section 8.1).
type h3app struct {
	ln        *quic.EarlyListener
	newServer func() *http3.Server
	wake      func()

	mu       sync.Mutex
	first    *http3.Server // the first newServer's result, for the first connection
	draining bool          // connections are told to go away
	expired  bool          // the deadline passed
	conns    map[*h3conn]bool
	idleC    chan struct{} // closed and replaced when conns empties
}

// goAwayIdle is how long a connection must have had no request, once its
// generation drains, before it is told to go away without waiting for one.
var goAwayIdle = time.Second

func newH3App(ln *quic.EarlyListener, newServer func() *http3.Server, first *http3.Server, wake func()) *h3app {
	return &h3app{ln: ln, newServer: newServer, first: first, wake: wake, conns: map[*h3conn]bool{}, idleC: make(chan struct{})}
}

// h3conn is one connection and its server.
type h3conn struct {
	app *h3app
	srv *http3.Server
	ln  *handoffListener
	// ctx is Shutdown's: cancelled at the deadline, when the server closes the
	// connection (H3_NO_ERROR) whatever is under way.
	ctx    context.Context
	cancel context.CancelFunc

	// Guarded by app.mu.
	active    int       // requests under way
	lastEnd   time.Time // when the last request ended (or the connection came)
	goingAway bool      // to be shut down at its next request or once idle
	shut      bool      // Shutdown was called
	timer     *time.Timer
}

// serve makes new and draining connections normal again (a resume): those not
// yet told to go away are not.
func (a *h3app) serve() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining, a.expired = false, false
	for c := range a.conns {
		if !c.shut {
			c.goingAway = false
			if c.timer != nil {
				c.timer.Stop()
				c.timer = nil
			}
		}
	}
}

// drain tells every connection to go away, as soon as that is safe.
func (a *h3app) drain() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining = true
	for c := range a.conns {
		c.goAwayLocked()
	}
}

// expire makes every connection close now.
func (a *h3app) expire() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining, a.expired = true, true
	for c := range a.conns {
		c.cancel()
		c.shutdownLocked()
	}
}

// idle reports whether every connection has ended.
func (a *h3app) idle() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.conns) == 0
}

// waitIdle waits until every connection has ended, for at most d.
func (a *h3app) waitIdle(d time.Duration) bool {
	a.mu.Lock()
	if len(a.conns) == 0 {
		a.mu.Unlock()
		return true
	}
	c := a.idleC
	a.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c:
		return true
	case <-t.C:
		return false
	}
}

// acceptLoop serves every accepted connection, until the listener is closed.
func (a *h3app) acceptLoop() {
	for {
		conn, err := a.ln.Accept(context.Background())
		if err != nil {
			return
		}
		a.serveConn(conn)
	}
}

// serveConn starts a connection's server. A connection accepted while this
// generation drains (its handshake began just before the handover) is served
// too, and told to go away like the others.
func (a *h3app) serveConn(conn *quic.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	srv := a.first
	a.first = nil
	if srv == nil {
		if srv = a.newServer(); srv == nil {
			// newServer broke its contract: the connection cannot be served.
			_ = conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "no server")
			return
		}
	}
	c := &h3conn{app: a, srv: srv, ln: newHandoffListener(a.ln.Addr()), lastEnd: time.Now()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	srv.Handler = c.track(srv.Handler)
	a.conns[c] = true
	c.ln.feed(conn)
	go func() {
		_ = srv.ServeListener(c.ln)
		c.ln.served()
	}()
	switch {
	case a.expired:
		c.cancel()
		c.shutdownLocked()
	case a.draining:
		c.goAwayLocked()
	}
}

// track wraps a connection's handler: it counts the requests under way, and the
// first request of a connection that must go away shuts it down as it starts.
func (c *h3conn) track(h http.Handler) http.Handler {
	if h == nil {
		h = http.DefaultServeMux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := c.app
		a.mu.Lock()
		c.active++
		first := c.goingAway && !c.shut
		if first {
			c.shutdownLocked()
		}
		a.mu.Unlock()
		if first {
			c.awaitGoAway(r.Context())
		}
		defer func() {
			a.mu.Lock()
			c.active--
			c.lastEnd = time.Now()
			a.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// awaitGoAway holds the request that shuts the connection down until its server
// has begun to shut down (its graceful context, the one it accepts with, is
// cancelled), and lets the server's connection goroutine queue the GOAWAY: the
// answer then leaves after the GOAWAY, and the client knows before it sends its
// next request.
func (c *h3conn) awaitGoAway(req context.Context) {
	select {
	case <-c.ln.graceful():
	case <-req.Done():
		return
	}
	for range 3 {
		runtime.Gosched()
	}
}

// goAwayLocked marks the connection to go away: at once if a request is under
// way, else at its next request or once idle for goAwayIdle.
func (c *h3conn) goAwayLocked() {
	if c.shut || c.goingAway {
		return
	}
	c.goingAway = true
	if c.active > 0 {
		c.shutdownLocked()
		return
	}
	c.timer = time.AfterFunc(time.Until(c.lastEnd.Add(goAwayIdle)), c.idleCheck)
}

// idleCheck shuts an idle connection down, or waits again.
func (c *h3conn) idleCheck() {
	a := c.app
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.shut || !c.goingAway {
		return
	}
	if c.active == 0 {
		if wait := time.Until(c.lastEnd.Add(goAwayIdle)); wait > 0 {
			c.timer = time.AfterFunc(wait, c.idleCheck)
			return
		}
	}
	c.shutdownLocked()
}

// shutdownLocked shuts the connection's server down beside the caller: GOAWAY,
// then the connection ends when its client closes it, or when ctx is cancelled.
func (c *h3conn) shutdownLocked() {
	if c.shut {
		return
	}
	c.shut = true
	if c.timer != nil {
		c.timer.Stop()
	}
	go func() {
		c.ln.stop()
		_ = c.srv.Shutdown(c.ctx)
		c.ln.Close()
		c.cancel()
		a := c.app
		a.mu.Lock()
		delete(a.conns, c)
		if len(a.conns) == 0 {
			close(a.idleC)
			a.idleC = make(chan struct{})
		}
		a.mu.Unlock()
		a.wake()
	}()
}

// handoffListener is the http3.QUICListener a connection's server serves: it
// yields the one connection fed to it. stop waits until the server has taken it
// and is back in Accept, so that Shutdown, called next, finds the connection
// counted and tells it to go away: http3.Server.ServeListener drops a connection
// it accepts after Shutdown began.
type handoffListener struct {
	addr net.Addr

	mu        sync.Mutex
	cond      *sync.Cond
	queue     []*quic.Conn
	accepting bool            // an Accept waits on an empty queue
	acceptCtx context.Context // the server's: cancelled when it shuts down
	done      bool            // ServeListener returned
	closed    bool
}

func newHandoffListener(addr net.Addr) *handoffListener {
	l := &handoffListener{addr: addr}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// feed hands a connection to the server.
func (l *handoffListener) feed(c *quic.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queue = append(l.queue, c)
	l.cond.Broadcast()
}

// Accept returns the next connection fed.
func (l *handoffListener) Accept(ctx context.Context) (*quic.Conn, error) {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.acceptCtx == nil {
		l.acceptCtx = ctx
		l.cond.Broadcast()
	}
	for {
		switch {
		case len(l.queue) > 0:
			c := l.queue[0]
			l.queue = l.queue[1:]
			return c, nil
		case l.closed:
			return nil, quic.ErrServerClosed
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		l.accepting = true
		l.cond.Broadcast()
		l.cond.Wait()
		l.accepting = false
	}
}

// graceful returns a channel closed once the server's accept context is
// cancelled: http3.Server.Shutdown began (or the server stopped serving).
func (l *handoffListener) graceful() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.acceptCtx == nil && !l.done {
		l.cond.Wait()
	}
	if l.acceptCtx == nil {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return l.acceptCtx.Done()
}

// stop waits until the server has taken every connection fed to it.
func (l *handoffListener) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for !l.done && !l.closed && (len(l.queue) > 0 || !l.accepting) {
		l.cond.Wait()
	}
}

// served records that ServeListener returned; a connection it never took is
// closed.
func (l *handoffListener) served() {
	l.mu.Lock()
	l.done = true
	left := l.queue
	l.queue = nil
	l.cond.Broadcast()
	l.mu.Unlock()
	for _, c := range left {
		_ = c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
}

// Close wakes Accept for good.
func (l *handoffListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return nil
}

// Addr is the transport's address (http3.Server advertises its port in Alt-Svc).
func (l *handoffListener) Addr() net.Addr { return l.addr }
