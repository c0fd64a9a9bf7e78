package graceful

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A draining Server tells each HTTP/2 connection to go away in the two steps of
// RFC 9113 §6.8. net/http alone sends one GOAWAY whose last stream is the highest it
// has read: a stream the client sent just before (its HEADERS still on the wire) is
// above it and never processed, and clients that do not retry (h2load, curl) fail
// it. So the Server first sends GOAWAY with the largest stream ID (2^31-1: "stop
// opening streams", no stream refused) and a PING, and only once the PING's ACK has
// come back, which the client sends after every stream it opened before it read the
// GOAWAY, does net/http send its own GOAWAY with the real last stream.
//
// net/http offers neither step, so the Server serves each HTTP/2 connection through
// an h2Conn between net/http and the connection: it follows the frames net/http
// writes, to put the first GOAWAY and the PING between two of them (after the
// server's SETTINGS, which must come first), and the frames the client sends, to
// see the PING ACK (net/http ignores an ACK of a PING it did not send:
// http2serverConn.processPing). Each connection is served by an HTTP/2 server of its
// own (a listener-less http.Server configured by net/http), so that its Shutdown,
// which makes net/http send its GOAWAY, reaches that one connection only, once its
// own PING is answered. A connection whose client does not answer within
// goAwayAckTimeout gets its last GOAWAY anyway.
//
// A connection on which the client has not sent a request yet gets its first
// GOAWAY once the first request's HEADERS arrive (or goAwayAckTimeout has passed):
// a client that has just connected may have requests written but not yet sent, and
// after any GOAWAY it may not send them any more (RFC 9113 §6.8), so it fails them
// (h2load) or sends them elsewhere. Such connections are those that start HTTP/2
// (TLS handshake, h2c preface) as the drain starts, which are many under load.

// goAwayAckTimeout bounds the wait for the ACK of the PING sent with the first
// GOAWAY, and the wait for the first request of a connection that has not sent
// one. A client answers within a round trip; one second is many round trips of any
// network a server is upgraded on.
const goAwayAckTimeout = time.Second

// HTTP/2 framing (RFC 9113 §4.1, §6.7, §6.8).
const (
	frameHeaderLen = 9
	frameHeaders   = 0x1
	framePing      = 0x6
	frameGoAway    = 0x7
	flagAck        = 0x1
	maxStreamID    = 1<<31 - 1
)

// clientPreface is what an HTTP/2 client sends first (RFC 9113 §3.4).
var clientPreface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// frameScanner follows the frames of one direction of an HTTP/2 connection as
// their bytes go by, in pieces of any size.
type frameScanner struct {
	hdr    [frameHeaderLen]byte
	hdrN   int // bytes of the current frame's header seen
	left   int // bytes of the current frame's payload still to come
	frames int // frames complete

	pingAck bool    // the current frame is a PING ACK
	ping    [8]byte // its payload
	headers bool    // a HEADERS frame has begun
}

// between reports whether the bytes so far end a frame, after at least one frame.
func (s *frameScanner) between() bool { return s.hdrN == 0 && s.frames > 0 }

// scan takes b in and returns how many bytes of it it took: all of it, or with stop
// only up to the end of the first frame that ends in b. ack, if not nil, is called
// with the payload of each complete PING ACK.
func (s *frameScanner) scan(b []byte, stop bool, ack func([8]byte)) int {
	n := 0
	for n < len(b) {
		if s.hdrN < frameHeaderLen {
			k := copy(s.hdr[s.hdrN:], b[n:])
			s.hdrN += k
			n += k
			if s.hdrN < frameHeaderLen {
				break
			}
			h := s.hdr
			s.left = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			stream := (uint32(h[5])<<24 | uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8])) & maxStreamID
			s.pingAck = h[3] == framePing && h[4]&flagAck != 0 && s.left == len(s.ping) && stream == 0
			s.headers = s.headers || h[3] == frameHeaders
		} else {
			k := min(s.left, len(b)-n)
			if s.pingAck {
				copy(s.ping[len(s.ping)-s.left:], b[n:n+k])
			}
			s.left -= k
			n += k
		}
		if s.left == 0 {
			s.hdrN = 0
			s.frames++
			if s.pingAck && ack != nil {
				ack(s.ping)
			}
			if stop {
				break
			}
		}
	}
	return n
}

// h2State is where a connection is in its two-step GOAWAY.
type h2State int

const (
	h2Serving   h2State = iota
	h2Waiting           // for the first request, to send the first GOAWAY
	h2Announced         // the first GOAWAY and the PING are sent or queued
	h2Answered          // the PING was answered, timed out, or the connection ended
	h2Told              // net/http was told to send its GOAWAY
)

// h2Conn is an HTTP/2 connection as net/http serves it (see the top of this file):
// the *tls.Conn, or the plain connection of h2c, beneath.
type h2Conn struct {
	net.Conn
	set      *h2Conns
	shutdown func() // makes net/http send its GOAWAY on this connection
	opaque   [8]byte

	// Read side: net/http's reading goroutine only.
	preface  bool // the client preface is still to be read (TLS: net/http did not)
	rs       frameScanner
	reported bool // rs.headers was reported (set.requested)

	wmu     sync.Mutex // net/http's writes and the injected frames, one at a time
	ws      frameScanner
	pending atomic.Bool // inject holds frames: the fast path of Write skips c.mu

	mu        sync.Mutex // the fields below; never held across I/O
	state     h2State
	requested bool   // the client has sent a request's HEADERS
	inject    []byte // the first GOAWAY and the PING, until written
	midway    bool   // part of inject is written: the rest goes before anything else
	timer     *time.Timer
}

// h2TLSConn is an h2Conn over TLS. net/http's HTTP/2 server takes the TLS state of
// a connection with a ConnectionState method (http2connectionStater), for r.TLS.
type h2TLSConn struct{ *h2Conn }

// ConnectionState returns the TLS connection's state.
func (c h2TLSConn) ConnectionState() tls.ConnectionState {
	return c.Conn.(*tls.Conn).ConnectionState()
}

// netConnOf returns the connection net/http gave the Server for an HTTP/2
// connection it serves through an h2Conn, and c itself otherwise.
func netConnOf(c net.Conn) net.Conn {
	switch hc := c.(type) {
	case *h2Conn:
		return hc.Conn
	case h2TLSConn:
		return hc.Conn
	}
	return c
}

// Read reads from the connection, drops the client preface first if it is still
// there, and watches for the ACK of the PING sent with the first GOAWAY.
func (c *h2Conn) Read(b []byte) (int, error) {
	if c.preface {
		var got [24]byte
		if _, err := io.ReadFull(c.Conn, got[:]); err != nil {
			return 0, err
		}
		if !bytes.Equal(got[:], clientPreface) {
			return 0, fmt.Errorf("graceful: bogus HTTP/2 client preface %q", got[:])
		}
		c.preface = false
	}
	n, err := c.Conn.Read(b)
	c.rs.scan(b[:n], false, c.acked)
	if c.rs.headers && !c.reported {
		c.reported = true
		c.set.requested(c)
	}
	return n, err
}

// acked is called with each PING ACK the client sends.
func (c *h2Conn) acked(data [8]byte) {
	if data == c.opaque {
		c.set.answered(c)
	}
}

// Write writes p, and the first GOAWAY and the PING between two frames once they
// are queued. It returns how many bytes of p it wrote.
func (c *h2Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for {
		if c.pending.Load() && c.ws.between() {
			if err := c.injectLocked(); err != nil {
				return n, err
			}
		}
		if n == len(p) {
			return n, nil
		}
		k := len(p) - n
		if c.pending.Load() {
			s := c.ws
			k = s.scan(p[n:], true, nil)
		}
		m, err := c.Conn.Write(p[n : n+k])
		c.ws.scan(p[n:n+m], false, nil)
		n += m
		if err != nil {
			return n, err
		}
	}
}

// injectLocked writes the queued frames, if any. c.wmu is held, between frames.
func (c *h2Conn) injectLocked() error {
	c.mu.Lock()
	b := c.inject
	c.midway = len(b) > 0
	c.mu.Unlock()
	for len(b) > 0 {
		n, err := c.Conn.Write(b)
		b = b[n:]
		if err != nil {
			c.mu.Lock()
			c.inject = b
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Lock()
	c.inject, c.midway = nil, false
	c.pending.Store(false)
	c.mu.Unlock()
	return nil
}

// announce starts the two-step GOAWAY: at once if the client has sent a request,
// else once it sends its first, or timeout has passed. False if it was started
// before. c.set.mu is held.
func (c *h2Conn) announce(timeout time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != h2Serving {
		return false
	}
	if !c.requested {
		c.state = h2Waiting
		c.timer = time.AfterFunc(timeout, func() { c.set.requested(c) })
		return true
	}
	c.startLocked(timeout)
	return true
}

// startLocked queues the first GOAWAY and the PING, and writes them at once if
// net/http is between frames. c.mu is held.
func (c *h2Conn) startLocked(timeout time.Duration) {
	c.state = h2Announced
	var goAway [frameHeaderLen + 8]byte
	goAway[2], goAway[3] = 8, frameGoAway
	goAway[9], goAway[10], goAway[11], goAway[12] = 0x7f, 0xff, 0xff, 0xff // last stream 2^31-1, NO_ERROR
	ping := [frameHeaderLen]byte{2: 8, 3: framePing}
	c.inject = append(append(goAway[:], ping[:]...), c.opaque[:]...)
	c.pending.Store(true)
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timer = time.AfterFunc(timeout, func() { c.set.answered(c) })
	go func() {
		// Blocks while net/http writes (or the client does not read), until the
		// connection ends at the latest; net/http's next write sends the frames if
		// it comes first.
		c.wmu.Lock()
		defer c.wmu.Unlock()
		if c.ws.between() {
			c.injectLocked()
		}
	}()
}

// request records that the client has sent a request, or that the wait for one is
// over: a waiting connection starts its two-step GOAWAY, if the Server still
// drains; otherwise it serves on. c.set.mu is held.
func (c *h2Conn) request(draining bool, timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requested = true
	switch {
	case c.state != h2Waiting:
	case draining:
		c.startLocked(timeout)
	default:
		c.timer.Stop()
		c.state = h2Serving
	}
}

// answer records that the first step is over (PING answered or timed out,
// connection ended): frames not yet written are dropped, for net/http's GOAWAY must
// not come before them. It reports whether c was in the first step. c.set.mu is
// held.
func (c *h2Conn) answer() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != h2Announced && c.state != h2Waiting {
		return false
	}
	c.state = h2Answered
	c.timer.Stop()
	if !c.midway {
		c.inject = nil
		c.pending.Store(false)
	}
	return true
}

// tell moves an answered connection on to net/http's GOAWAY; false if c is not
// answered. c.set.mu is held.
func (c *h2Conn) tell() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != h2Answered {
		return false
	}
	c.state = h2Told
	return true
}

// h2Conns is the HTTP/2 side of a Server: it serves each HTTP/2 connection through
// an h2Conn and tells them to go away when the Server drains.
type h2Conns struct {
	s          *Server
	ackTimeout time.Duration

	mu    sync.Mutex
	conns map[*h2Conn]struct{}
}

// newH2Conns returns the HTTP/2 side of s, or nil when net/http does not serve
// HTTP/2 (GODEBUG=http2server=0).
func newH2Conns(s *Server) *h2Conns {
	h := &h2Conns{s: s, ackTimeout: goAwayAckTimeout, conns: map[*h2Conn]struct{}{}}
	if s.goAwayAckTimeout > 0 {
		h.ackTimeout = s.goAwayAckTimeout
	}
	if _, _, ok := h.newServer(); !ok {
		return nil
	}
	return h
}

// newServer returns a listener-less http.Server on which net/http has configured
// HTTP/2, and the function that serves a connection on it: net/http's
// "unencrypted_http2" TLSNextProto, which takes a connection whose client preface has
// been read.
func (h *h2Conns) newServer() (*http.Server, func(*http.Server, *tls.Conn, http.Handler), bool) {
	s := h.s
	srv := &http.Server{IdleTimeout: s.IdleTimeout, ReadTimeout: s.ReadTimeout, HTTP2: s.HTTP2}
	srv.Serve(failListener{}) // configures HTTP/2 on srv, then returns at once
	serve := srv.TLSNextProto["unencrypted_http2"]
	return srv, serve, serve != nil
}

// serveTLS is the Server's "h2" TLSNextProto: it serves tc, which negotiated "h2".
func (h *h2Conns) serveTLS(hs *http.Server, tc *tls.Conn, handler http.Handler) {
	c := &h2Conn{Conn: tc, preface: true}
	h.serve(hs, c, h2TLSConn{c}, handler)
}

// serveUnencrypted is the Server's "unencrypted_http2" TLSNextProto: net/http hands
// over an h2c connection (its preface read) inside a *tls.Conn, as it does to its
// own (http2unencryptedNetConnFromTLSConn).
func (h *h2Conns) serveUnencrypted(hs *http.Server, tc *tls.Conn, handler http.Handler) {
	u, ok := tc.NetConn().(interface{ UnencryptedNetConn() net.Conn })
	if !ok { // net/http's own handler says so too, and closes the connection
		if hs.ErrorLog != nil {
			hs.ErrorLog.Print("graceful: a TLS connection came as unencrypted HTTP/2")
		} else {
			log.Print("graceful: a TLS connection came as unencrypted HTTP/2")
		}
		tc.Close()
		return
	}
	c := &h2Conn{Conn: u.UnencryptedNetConn()}
	h.serve(hs, c, c, handler)
}

// serve serves c, as nc, on an HTTP/2 server of its own until it ends.
func (h *h2Conns) serve(hs *http.Server, c *h2Conn, nc net.Conn, handler http.Handler) {
	srv, serve, _ := h.newServer()
	c.set = h
	c.shutdown = func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		srv.Shutdown(ctx) // returns at once; net/http sends its GOAWAY beside
	}
	for i := range c.opaque {
		c.opaque[i] = byte(rand.Uint32())
	}
	h.add(c)
	defer h.remove(c)
	serve(hs, tls.Client(unencryptedConn{conn: nc}, nil), handler)
}

// unencryptedConn carries a connection to net/http's "unencrypted_http2"
// TLSNextProto inside a *tls.Conn, the way net/http does
// (unencryptedNetConnInTLSConn): only UnencryptedNetConn is called.
type unencryptedConn struct {
	net.Conn // nil
	conn     net.Conn
}

func (c unencryptedConn) UnencryptedNetConn() net.Conn { return c.conn }

// add tracks c; it is told to go away at once if the Server drains already.
func (h *h2Conns) add(c *h2Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns[c] = struct{}{}
	if h.s.drainer.draining.Load() {
		c.announce(h.ackTimeout)
	}
}

// remove stops tracking c, which has ended.
func (h *h2Conns) remove(c *h2Conn) {
	h.answered(c)
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// goAway starts the two-step GOAWAY on every connection: the Server drains. A
// connection answered in a drain that was taken back gets net/http's GOAWAY now.
func (h *h2Conns) goAway() {
	h.mu.Lock()
	var tell []*h2Conn
	for c := range h.conns {
		if !c.announce(h.ackTimeout) && c.tell() {
			tell = append(tell, c)
		}
	}
	h.mu.Unlock()
	for _, c := range tell {
		c.shutdown()
	}
}

// requested starts c's two-step GOAWAY if it was waiting for the client's first
// request.
func (h *h2Conns) requested(c *h2Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.request(h.s.drainer.draining.Load(), h.ackTimeout)
}

// answered ends c's first step; net/http then sends its GOAWAY, if the Server still
// drains.
func (h *h2Conns) answered(c *h2Conn) {
	h.mu.Lock()
	tell := c.answer() && h.s.drainer.draining.Load() && c.tell()
	h.mu.Unlock()
	if tell {
		c.shutdown()
	}
}
