package graceful

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// conn is a connection tracked by a Drainer: the one record the drain layer keeps per
// connection it accepted (or received from the previous generation). It forwards
// everything to the connection it wraps. A connection that may be handed to the next
// generation (kind, see passKind) also follows its reader, to know when it waits at
// a safe point (safePoint), and can be taken from it there (take).
type conn struct {
	net.Conn
	d    *Drainer
	ln   *listener // the listener it came through
	kind passKind  // set when it is tracked, never changed
	// guarded by d.mu
	state     http.ConnState
	idleSince time.Time
	// reading is set once a byte of a request has been read, and cleared when the
	// connection goes idle, so that a request still being read (net/http calls the
	// connection new or idle until the whole header is in) is not mistaken for an
	// unused connection.
	reading  atomic.Bool
	closed   atomic.Bool
	hijacked atomic.Bool // a handler took it over (its requests are not counted)
	// waiting is set while a Read at a safe point is blocked: the connection can be
	// handed over (see take).
	waiting atomic.Bool
	// taken: handed over; the descriptor here is a copy, closed without a word.
	taken atomic.Bool
	p     passState
	kept  *keptConn // its entry in the fd store, if it is kept there (connkeep.go)
}

// passKind says whether a connection may be handed to the next generation, and how
// its safe points are found (see conn.safePoint).
type passKind uint8

const (
	// passNever: TLS (crypto/tls cannot hand a live session's keys to another
	// process), HTTP/2 (its streams and HPACK state live in the process), a
	// connection that is not a plain TCP or unix socket, a Drainer that did not opt
	// in, a system without descriptor passing. Hijacked connections become so.
	passNever passKind = iota
	// passHTTP: a Server's plain HTTP/1 connection.
	passHTTP
	// passRaw: a connection of a Drainer that opted in (Drainer.HandOverIdle).
	passRaw
)

// passState follows the reader of a connection that may be handed over, and a
// hand-off in progress.
type passState struct {
	mu     sync.Mutex
	cond   sync.Cond // on mu: a Read ended, or a hand-off did
	first  int       // the length of the first Read: net/http's buffer
	read   bool      // a Read returned bytes
	idle   bool      // reported idle since the last bytes were read
	never  bool      // hijacked, or a hand-off failed: never handed over
	inRead bool
	taking bool   // a hand-off stopped the Read, and decides
	takes  uint64 // hand-offs begun: a take goes on only with its own
	// deadline is the read deadline the application last set; while a hand-off
	// holds the connection's own in the past, it is kept here.
	deadline time.Time
}

func newConn(nc net.Conn, d *Drainer, ln *listener, kind passKind) *conn {
	if kind != passNever && !passable(nc) {
		kind = passNever
	}
	c := &conn{Conn: nc, d: d, ln: ln, kind: kind}
	c.p.cond.L = &c.p.mu
	return c
}

// errHandedOver is what the reader of a connection handed over reads, and a write
// on it returns: a timeout, so that net/http, which takes it for a client gone
// quiet, closes its copy of the connection without a word.
var errHandedOver = &net.OpError{Op: "read", Net: "tcp", Err: handedOverError{}}

type handedOverError struct{}

func (handedOverError) Error() string   { return "connection handed over to the next generation" }
func (handedOverError) Timeout() bool   { return true }
func (handedOverError) Temporary() bool { return true }

// unused reports whether c carries no request: it is new or idle, no byte of a
// request has been read since, and none is waiting in the socket's receive queue.
// Called with d.mu held.
func (c *conn) unused() bool {
	if c.state != http.StateIdle && c.state != http.StateNew {
		return false
	}
	nc := c.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn() // a TLS listener of the application's
	}
	return !c.reading.Load() && pending(nc) == 0
}

// read reads from the connection and notes that the client has started a request.
func (c *conn) read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.reading.Load() {
		c.reading.Store(true)
	}
	return n, err
}

// Read reads from the connection. On a connection that may be handed over it also
// notes whether the Read is at a safe point, and yields to a hand-off (take): a Read
// that a hand-off stopped with nothing read either ends with errHandedOver or, if
// the connection stays, starts again as if nothing had happened.
func (c *conn) Read(b []byte) (int, error) {
	if c.kind == passNever {
		return c.read(b)
	}
	p := &c.p
	for {
		p.mu.Lock()
		if c.taken.Load() {
			p.mu.Unlock()
			return 0, errHandedOver
		}
		safe := c.safePoint(b)
		p.inRead = true
		c.waiting.Store(safe)
		p.mu.Unlock()
		if safe {
			c.d.wake()
		}
		n, err := c.readAt(b, safe)
		p.mu.Lock()
		p.inRead = false
		c.waiting.Store(false)
		if n > 0 {
			p.read, p.idle = true, false
		}
		if !p.taking {
			p.mu.Unlock()
			return n, err
		}
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			c.endTakeLocked(false) // bytes (or the end) came first: c stays
			p.mu.Unlock()
			return n, err
		}
		p.cond.Broadcast() // nothing was read: the hand-off goes on
		for p.taking {
			p.cond.Wait()
		}
		taken := c.taken.Load()
		p.mu.Unlock()
		if taken {
			return 0, errHandedOver
		}
	}
}

// readAt reads; a safe point of a connection kept in the fd store is marked there
// for as long as nothing was read (see keptConn.idleRead).
func (c *conn) readAt(b []byte, safe bool) (int, error) {
	if safe && c.kept != nil {
		return c.kept.idleRead(c, b)
	}
	return c.read(b)
}

// safePoint reports whether a Read of b, about to start, is at a safe point: the
// reader above holds no byte of the connection, and none was read since, so that
// whatever the client sends next is still in the socket and moves with it. c.p.mu
// is held.
//
//   - passRaw: the application reported the connection idle (ConnState) after the
//     last bytes it read: its promise that its reader holds none (Drainer.HandOverIdle).
//   - passHTTP, nothing read yet: net/http's first read of a new connection.
//   - passHTTP after a request: once it has answered, net/http reports StateIdle,
//     then waits for the next request with a Peek of its bufio.Reader (conn.serve).
//     That Peek reads from the connection with the whole buffer (as long as the
//     first Read) only when the buffer is empty. A pipelined request already in the
//     buffer is parsed without a Read (net/http even stays StateIdle while it serves
//     it: it reports StateActive only when it read bytes off the wire), and its body
//     reads and a handler's background read are other Reads. So: reported idle
//     since the last bytes read, a Read of the whole buffer, called by that Peek
//     (idlePeek). Should net/http change, the rule fails closed: nothing is handed
//     over, and connections are drained as before.
func (c *conn) safePoint(b []byte) bool {
	p := &c.p
	if p.first == 0 {
		p.first = len(b)
	}
	switch {
	case p.never || len(b) == 0:
		return false
	case c.kind == passRaw:
		return p.idle
	case !p.read:
		return true
	}
	return p.idle && len(b) == p.first && idlePeek()
}

// idlePeekFrames are the callers, innermost first, of a Read for net/http's wait for
// the next request on a keep-alive connection.
var idlePeekFrames = [...]string{"net/http.(*connReader).Read", "bufio.(*Reader).fill", "bufio.(*Reader).Peek", "net/http.(*conn).serve"}

// idlePeek reports whether the Read in progress on this goroutine is net/http's wait
// for the next request (see safePoint).
func idlePeek() bool {
	var pcs [16]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs[:])])
	i := -1
	for {
		f, more := frames.Next()
		if i < 0 && f.Function == idlePeekFrames[0] {
			i = 0
		}
		if i >= 0 {
			if f.Function != idlePeekFrames[i] {
				return false
			}
			if i++; i == len(idlePeekFrames) {
				return true
			}
		}
		if !more {
			return false
		}
	}
}

// noteState follows what the connection's server reports (Drainer.ConnState).
func (c *conn) noteState(st http.ConnState) {
	c.p.mu.Lock()
	switch st {
	case http.StateIdle:
		c.p.idle = true
	case http.StateActive:
		c.p.idle = false
	case http.StateHijacked:
		c.p.never = true
	}
	c.p.mu.Unlock()
}

// take stops c's Read at a safe point, without a byte read, and returns a duplicate
// of its descriptor; false if c is not at a safe point (any more). The Read waits
// until finish says whether c was handed over: with a deadline in the past, held
// against the application's own SetReadDeadline, so that nothing reads the
// connection meanwhile. A byte that comes first is read, and c stays.
func (c *conn) take() (*os.File, bool) {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if !c.beginTakeLocked() {
		return nil, false
	}
	// Several drains of one Drainer may hand over at once (a Server's Serve waits
	// on its drain beside the Upgrader's). If bytes end this hand-off, the
	// connection may answer them, wait at a safe point again, and another drain
	// begin a hand-off of it, all before this one runs again: that one is not
	// this one's to finish, or the connection would be handed over twice.
	mine := p.takes
	for p.inRead && p.taking && p.takes == mine {
		p.cond.Wait()
	}
	if !p.taking || p.takes != mine {
		return nil, false
	}
	f, err := dupConn(c.Conn)
	if err != nil {
		p.never = true
		c.endTakeLocked(false)
		return nil, false
	}
	return f, true
}

// beginTakeLocked begins a hand-off of c, if it waits at a safe point and none is in
// progress: the Read is stopped with a deadline in the past. c.p.mu is held.
func (c *conn) beginTakeLocked() bool {
	p := &c.p
	if !c.waiting.Load() || p.taking || p.never || c.taken.Load() {
		return false
	}
	p.taking = true
	p.takes++
	c.Conn.SetReadDeadline(aLongTimeAgo)
	return true
}

// finish ends a hand-off that take began: handed says whether the other side has
// the connection now.
func (c *conn) finish(handed bool) {
	c.p.mu.Lock()
	c.endTakeLocked(handed)
	c.p.mu.Unlock()
}

func (c *conn) endTakeLocked(handed bool) {
	p := &c.p
	p.taking = false
	if handed {
		c.taken.Store(true)
	} else {
		c.Conn.SetReadDeadline(p.deadline)
	}
	p.cond.Broadcast()
}

// SetReadDeadline sets the read deadline, unless a hand-off holds it (see take).
func (c *conn) SetReadDeadline(t time.Time) error {
	if c.kind == passNever {
		return c.Conn.SetReadDeadline(t)
	}
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	c.p.deadline = t
	if c.p.taking || c.taken.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines (the read one as SetReadDeadline does).
func (c *conn) SetDeadline(t time.Time) error {
	if c.kind == passNever {
		return c.Conn.SetDeadline(t)
	}
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// Write writes to the connection, unless it was handed over.
func (c *conn) Write(b []byte) (int, error) {
	if c.taken.Load() {
		return 0, errHandedOver
	}
	return c.Conn.Write(b)
}

// Close closes the connection and stops tracking it. A connection kept in the fd
// store is shut down first (the store's copy would keep it open) and leaves the
// store; one handed over is only closed here (the other side has it).
func (c *conn) Close() error {
	if c.kept != nil && !c.taken.Load() {
		c.kept.release(c)
	}
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.d.remove(c)
	}
	return err
}

// ReadFrom lets io.Copy into the connection use the wrapped connection's fast path
// (sendfile, splice).
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if c.taken.Load() {
		return 0, errHandedOver
	}
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite shuts down the writing side, when the wrapped connection can.
func (c *conn) CloseWrite() error {
	if c.taken.Load() {
		return errHandedOver
	}
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("graceful: connection does not support CloseWrite")
}

// NetConn returns the wrapped connection.
func (c *conn) NetConn() net.Conn { return c.Conn }

// tlsConn is a tracked connection that a TLS listener of the application's
// accepted (a *tls.Conn). net/http takes the TLS state of a connection that is not
// a *tls.Conn from its ConnectionState method, for r.TLS.
type tlsConn struct{ *conn }

// ConnectionState returns the state of the TLS connection, after its handshake:
// net/http asks before it reads the first request. A failed handshake leaves the
// state empty; the first read returns its error.
func (c tlsConn) ConnectionState() tls.ConnectionState {
	tc := c.Conn.(*tls.Conn)
	tc.Handshake()
	return tc.ConnectionState()
}
