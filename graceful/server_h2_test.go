//go:build linux

package graceful

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
)

// Every HTTP/2 connection of a draining Server is told to go away, for each way
// http.Server.Protocols can enable HTTP/2 (issue 8 found that unencrypted HTTP/2
// alone, or with HTTP/1, never was), in RFC 9113's two steps (issue 17): a GOAWAY
// with stream 2^31-1 and a PING, then, once the PING is answered, net/http's GOAWAY
// with the last stream it processed. The clients are real connections on loopback,
// speaking HTTP/2 frame by frame (h2conn below), so that nothing retries or hides a
// GOAWAY. The Servers' Drainers run on a fake clock: no keep-alive grace elapses,
// so an HTTP/2 connection can only end because net/http closes it after its GOAWAY,
// and a Shutdown that returns nil (not ErrDrainDeadline) proves it did.

// drainDeadline is the Shutdown deadline of these tests: shorter than waitBound, so
// that a connection never told to go away is seen force-closed at the deadline.
const drainDeadline = waitBound / 2

// h2Case is a Protocols combination under test.
type h2Case struct {
	name  string
	tls   bool
	h2    bool            // HTTP/2 is served
	proto *http.Protocols // nil: net/http's default
}

var h2Cases = []h2Case{
	{"TLS default (HTTP/1 and HTTP/2)", true, true, nil},
	{"TLS HTTP/1 only", true, false, protocols(true, false, false)},
	{"unencrypted HTTP/2 only", false, true, protocols(false, false, true)},
	{"HTTP/1 and unencrypted HTTP/2", false, true, protocols(true, false, true)},
}

func protocols(h1, h2, h2c bool) *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(h1)
	p.SetHTTP2(h2)
	p.SetUnencryptedHTTP2(h2c)
	return p
}

// useTestUpgrader makes a test Upgrader the process's one (the one Serve uses)
// until the test ends.
func useTestUpgrader(t *testing.T) *Upgrader {
	t.Helper()
	u := newTestUpgrader(t, Config{DrainTimeout: drainDeadline}, newFakeStarter(t))
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		t.Fatal("the test process already has an Upgrader")
	}
	singleton = u
	t.Cleanup(func() {
		singletonMu.Lock()
		singleton = nil
		singletonMu.Unlock()
	})
	return u
}

// holdHandler serves /hold: "first\n" at once, "last\n" once release is closed;
// and / : "ok".
func holdHandler(release <-chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "last\n")
	})
	mux.HandleFunc("/{$}", okHandler)
	mux.HandleFunc("/who", func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		tlsState := "none"
		if r.TLS != nil {
			tlsState = fmt.Sprintf("%v/%s", r.TLS.HandshakeComplete, r.TLS.NegotiatedProtocol)
		}
		fmt.Fprintf(w, "%s %s %s %v", r.Proto, tlsState, r.RemoteAddr, local)
	})
	return mux
}

// serveCase serves handler with tc's Protocols on a loopback listener (with TLS and
// a new certificate if tc says so), the Server's Drainer on clock, after the
// configure functions ran on the Server. pool trusts the certificate (nil without
// TLS). Serve must return http.ErrServerClosed once the test has drained the Server.
func serveCase(t *testing.T, tc h2Case, handler http.Handler, clock *fakeClock, configure ...func(*Server)) (s *Server, addr string, pool *x509.CertPool) {
	t.Helper()
	s = &Server{Server: http.Server{Handler: handler, Protocols: tc.proto}, KeepAliveGrace: testGrace}
	s.drainer.clock = clock
	for _, f := range configure {
		f(s)
	}
	ln := listenLoopback(t)
	errc := make(chan error, 1)
	if tc.tls {
		var cert tls.Certificate
		cert, pool = testcert.New(t)
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		go func() { errc <- s.ServeTLS(ln, "", "") }()
	} else {
		go func() { errc <- s.Serve(ln) }()
	}
	t.Cleanup(func() {
		s.Close()
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, ln.Addr().String(), pool
}

// TestServerHTTP2GoAway: Shutdown with a request in flight, for each Protocols
// combination (see checkGoAway and checkHTTP1OverTLS).
func TestServerHTTP2GoAway(t *testing.T) {
	useTestUpgrader(t)
	for _, tc := range h2Cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			clock := newFakeClock()
			s, addr, pool := serveCase(t, tc, holdHandler(release), clock)
			if tc.h2 {
				checkGoAway(t, s, addr, pool, release)
			} else {
				checkHTTP1OverTLS(t, s, addr, pool, clock, release)
			}
		})
	}
}

// checkGoAway: a stream in flight when Shutdown starts; the connection gets exactly
// two GOAWAY frames (NO_ERROR): the first with stream 2^31-1, then one that covers
// the stream, which completes; then net/http closes the connection and Shutdown
// returns nil, not at its deadline.
func checkGoAway(t *testing.T, s *Server, addr string, pool *x509.CertPool, release chan struct{}) {
	c := dialH2(t, addr, pool)
	if r := c.roundTrip(t, "/"); r.status != 200 || string(r.body) != "ok" {
		t.Fatalf("GET /: %d %q", r.status, r.body)
	}
	hold := c.get(t, "/hold")
	c.waitFor(t, "the first bytes of /hold", func() bool { return len(c.streams[hold].body) > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), drainDeadline)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	c.waitFor(t, "a GOAWAY (or the connection's end)", func() bool { return len(c.goaways) > 0 || c.err != nil })
	gs := c.goAways()
	if len(gs) == 0 {
		t.Fatalf("no GOAWAY: the connection ended (%v) when the drain deadline force-closed it; Shutdown: %v", c.readErr(), <-shut)
	}
	if g := gs[0]; g.code != 0 || g.last != maxStreamID || !slices.Equal(g.open, []uint32{hold}) {
		t.Errorf("first GOAWAY %+v; want NO_ERROR, last stream 2^31-1, stream %d open", g, hold)
	}
	c.waitFor(t, "the second GOAWAY (or the connection's end)", func() bool { return len(c.goaways) > 1 || c.err != nil })
	if gs := c.goAways(); len(gs) < 2 || gs[1].code != 0 || gs[1].last < hold {
		t.Errorf("GOAWAY frames %+v; want a second one, NO_ERROR, last stream >= %d", gs, hold)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a stream was in flight", err)
	default:
	}
	close(release)
	r := c.wait(t, hold)
	if r.status != 200 || string(r.body) != "first\nlast\n" || r.reset {
		t.Errorf("the stream in flight: %d %q (reset %v); want 200 \"first\\nlast\\n\"", r.status, r.body, r.reset)
	}
	c.waitFor(t, "the server to close the connection", func() bool { return c.err != nil })
	if err := c.readErr(); !errors.Is(err, io.EOF) {
		t.Errorf("the connection ended with %v, want EOF", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v, want nil (every connection closed before the deadline)", err)
	}
	if gs := c.goAways(); len(gs) != 2 {
		t.Errorf("%d GOAWAY frames, want 2: %+v", len(gs), gs)
	}
}

// checkHTTP1OverTLS: "h2" is not negotiated; a response in flight completes; a
// keep-alive connection's next request is answered with "Connection: close" and the
// connection closed; an idle one is closed after the keep-alive grace.
func checkHTTP1OverTLS(t *testing.T, s *Server, addr string, pool *x509.CertPool, clock *fakeClock, release chan struct{}) {
	dial := func() *client {
		tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Fatalf("negotiated %q, want http/1.1", p)
		}
		tc.SetDeadline(time.Now().Add(waitBound))
		return &client{Conn: tc, br: bufio.NewReader(tc)}
	}
	if tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}}); err == nil {
		tc.Close()
		t.Errorf("a TLS client offering only h2 was accepted")
	}
	busy, idle := dial(), dial()
	if resp, body := idle.get(t, "/"); resp.StatusCode != 200 || body != "ok" || closesConn(resp) {
		t.Fatalf("GET /: %d %q (close %v)", resp.StatusCode, body, resp.Close)
	}
	busy.send(t, "/hold")
	resp, err := http.ReadResponse(busy.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, len("first\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	// net/http may report a connection idle only after its client has read the
	// response: the grace is counted from then.
	eventually(t, "one connection idle and one active", func() bool {
		c := s.drainer.Counts()
		return c.Idle == 1 && c.Active == 1
	})

	ctx, cancel := context.WithTimeout(context.Background(), drainDeadline)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	<-s.drainer.Draining()
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(first)+string(rest) != "first\nlast\n" {
		t.Errorf("the response in flight: %v, %d %q", err, resp.StatusCode, string(first)+string(rest))
	}
	if resp, body := busy.get(t, "/"); resp.StatusCode != 200 || body != "ok" || !closesConn(resp) {
		t.Errorf("a request while draining: %d %q, close %v; want 200 with Connection: close", resp.StatusCode, body, resp.Close)
	}
	busy.expectClosed(t)
	clock.Advance(testGrace)
	idle.expectClosed(t)
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// eachH2Case runs f in a parallel subtest for each Protocols combination that serves
// HTTP/2, with a test Upgrader as the process's.
func eachH2Case(t *testing.T, f func(t *testing.T, tc h2Case)) {
	useTestUpgrader(t)
	for _, tc := range h2Cases {
		if !tc.h2 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f(t, tc)
		})
	}
}

// TestServerHTTP2RequestFields: served through the h2Conn that tells it to go away,
// an HTTP/2 request still carries what net/http gives it: r.Proto, r.TLS (over TLS,
// with the handshake complete and "h2" negotiated; nil for h2c), r.RemoteAddr and
// the local address in the context.
func TestServerHTTP2RequestFields(t *testing.T) {
	eachH2Case(t, func(t *testing.T, tc h2Case) {
		_, addr, pool := serveCase(t, tc, holdHandler(nil), newFakeClock())
		c := dialH2(t, addr, pool)
		tlsState := "none"
		if tc.tls {
			tlsState = "true/h2"
		}
		want := fmt.Sprintf("HTTP/2.0 %s %s %s", tlsState, c.LocalAddr(), c.RemoteAddr())
		if r := c.roundTrip(t, "/who"); r.status != 200 || string(r.body) != want {
			t.Errorf("GET /who: %d %q, want %q", r.status, r.body, want)
		}
	})
}

// TestServerHTTP2LateConnection: a connection accepted before the drain that starts
// HTTP/2 (TLS handshake, or h2c preface) only once the Server drains is told to go
// away too, in both steps, once it has sent its first request, which is answered.
func TestServerHTTP2LateConnection(t *testing.T) {
	eachH2Case(t, func(t *testing.T, tc h2Case) {
		s, addr, pool := serveCase(t, tc, holdHandler(nil), newFakeClock())
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		eventually(t, "the connection to be accepted", func() bool { return s.drainer.Counts().New == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), drainDeadline)
		defer cancel()
		shut := make(chan error, 1)
		go func() { shut <- s.Shutdown(ctx) }()
		<-s.drainer.Draining()

		h := newH2Conn(t, raw, pool)
		id := h.get(t, "/")
		h.waitFor(t, "two GOAWAY frames (or the connection's end)", func() bool { return len(h.goaways) > 1 || h.err != nil })
		g := h.goAways()
		if len(g) != 2 || g[0].code != 0 || g[0].last != maxStreamID || g[1].code != 0 {
			t.Fatalf("GOAWAY frames %+v, want two with NO_ERROR, the first with stream 2^31-1; the connection ended with %v; Shutdown: %v", g, h.readErr(), <-shut)
		}
		// The first GOAWAY waited for the request, so the second covers it.
		if r := h.wait(t, id); g[1].last < id || r.status != 200 || string(r.body) != "ok" {
			t.Errorf("the request: last stream %d, answered %d %q; want it covered and answered 200 \"ok\"", g[1].last, r.status, r.body)
		}
		h.Close() // as a client does once its streams are done
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

// TestServerHTTP2GoAwayTwoSteps: the drain's first GOAWAY (stream 2^31-1) comes with
// a PING right behind it; a stream the client opens after that GOAWAY but before it
// answers the PING (as a client does whose request crossed the GOAWAY on the wire)
// is processed and answered; net/http's GOAWAY, which covers it, comes only once the
// PING is answered. With a single GOAWAY (issue 17) the stream was above its last
// stream and never answered.
func TestServerHTTP2GoAwayTwoSteps(t *testing.T) {
	eachH2Case(t, func(t *testing.T, tc h2Case) {
		// The PING's ACK is the test's to send: the bound on the wait for it
		// must not end the first step first.
		c, shut := drainHoldingPings(t, tc, time.Hour)
		c.mu.Lock()
		gs, control, pings := slices.Clone(c.goaways), slices.Clone(c.control), slices.Clone(c.pings)
		c.mu.Unlock()
		if !slices.Equal(control, []string{"GOAWAY", "PING"}) || gs[0].code != 0 || gs[0].last != maxStreamID {
			t.Fatalf("control frames %q, GOAWAY frames %+v (connection: %v); want a GOAWAY (NO_ERROR, last stream 2^31-1), then a PING", control, gs, c.readErr())
		}
		ping := pings[0]
		late := c.get(t, "/") // opened after the first GOAWAY, before the ACK
		if err := c.write(t, h2frame(0x6, 0x1, 0, ping)); err != nil {
			t.Fatal(err)
		}
		c.waitFor(t, "the second GOAWAY (or the connection's end)", func() bool { return len(c.goaways) > 1 || c.err != nil })
		if gs := c.goAways(); len(gs) != 2 || gs[1].code != 0 || gs[1].last != late {
			t.Errorf("GOAWAY frames %+v; want a second one, NO_ERROR, last stream %d", gs, late)
		}
		if r := c.wait(t, late); r.status != 200 || string(r.body) != "ok" || r.reset {
			t.Errorf("the stream opened after the first GOAWAY: %d %q (reset %v); want 200 \"ok\"", r.status, r.body, r.reset)
		}
		c.waitFor(t, "the server to close the connection", func() bool { return c.err != nil })
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v, want nil", err)
		}
	})
}

// drainHoldingPings serves tc, with ackTimeout as the bound on the wait for a PING's
// ACK, connects a client that leaves PINGs to the test to acknowledge, makes a
// request, starts Shutdown, and returns once the client has received a PING (or its
// connection has ended). Shutdown's result comes on the channel.
func drainHoldingPings(t *testing.T, tc h2Case, ackTimeout time.Duration) (*h2conn, <-chan error) {
	t.Helper()
	s, addr, pool := serveCase(t, tc, holdHandler(nil), newFakeClock(), func(s *Server) { s.goAwayAckTimeout = ackTimeout })
	c := dialH2(t, addr, pool)
	c.mu.Lock()
	c.holdPings = true
	c.mu.Unlock()
	if r := c.roundTrip(t, "/"); r.status != 200 || string(r.body) != "ok" {
		t.Fatalf("GET /: %d %q", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainDeadline)
	t.Cleanup(cancel)
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	c.waitFor(t, "a GOAWAY and a PING (or the connection's end)", func() bool { return len(c.pings) > 0 || c.err != nil })
	return c, shut
}

// TestServerHTTP2GoAwayAckTimeout: a client that never answers the PING still gets
// net/http's GOAWAY once the wait for the ACK is over, covering the stream it opened
// meanwhile, which is answered; the drain then ends as usual.
func TestServerHTTP2GoAwayAckTimeout(t *testing.T) {
	eachH2Case(t, func(t *testing.T, tc h2Case) {
		c, shut := drainHoldingPings(t, tc, 50*time.Millisecond)
		late := c.get(t, "/")
		c.waitFor(t, "the second GOAWAY (or the connection's end)", func() bool { return len(c.goaways) > 1 || c.err != nil })
		gs := c.goAways()
		if len(gs) != 2 || gs[0].last != maxStreamID || gs[1].code != 0 {
			t.Fatalf("GOAWAY frames %+v; want two, NO_ERROR, the first with stream 2^31-1", gs)
		}
		// The stream reached the server before the bound was over (it is
		// covered), or after (it is not, and a client sends it again elsewhere).
		if r := c.wait(t, late); gs[1].last >= late && (r.status != 200 || string(r.body) != "ok") {
			t.Errorf("the stream opened after the first GOAWAY, covered by the second: %d %q", r.status, r.body)
		}
		c.waitFor(t, "the server to close the connection", func() bool { return c.err != nil })
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v, want nil", err)
		}
	})
}

// TestServerHTTP2ConnectionWithoutRequest: a connection that sends no request gets
// its first GOAWAY once the wait for a first request is over, and net/http's, with
// last stream 0, once it answers the PING; then it is closed and the drain ends.
func TestServerHTTP2ConnectionWithoutRequest(t *testing.T) {
	eachH2Case(t, func(t *testing.T, tc h2Case) {
		s, addr, pool := serveCase(t, tc, holdHandler(nil), newFakeClock(), func(s *Server) { s.goAwayAckTimeout = 50 * time.Millisecond })
		c := dialH2(t, addr, pool)
		eventually(t, "the connection to be accepted", func() bool { return s.drainer.Counts().Accepted == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), drainDeadline)
		defer cancel()
		shut := make(chan error, 1)
		go func() { shut <- s.Shutdown(ctx) }()
		c.waitFor(t, "two GOAWAY frames (or the connection's end)", func() bool { return len(c.goaways) > 1 || c.err != nil })
		if gs := c.goAways(); len(gs) != 2 || gs[0].last != maxStreamID || gs[1].last != 0 || gs[1].code != 0 {
			t.Errorf("GOAWAY frames %+v; want two, NO_ERROR: stream 2^31-1, then 0", gs)
		}
		c.waitFor(t, "the server to close the connection", func() bool { return c.err != nil })
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v, want nil", err)
		}
	})
}

// TestUpgraderDrainsEveryServer: the Upgrader's own drain (Stop, as on SIGTERM) tells
// the HTTP/2 connections of every Server of the process to go away.
func TestUpgraderDrainsEveryServer(t *testing.T) {
	u := useTestUpgrader(t)
	release := make(chan struct{})
	var conns []*h2conn
	var holds []uint32
	var names []string
	for _, tc := range h2Cases {
		if !tc.h2 {
			continue
		}
		_, addr, pool := serveCase(t, tc, holdHandler(release), newFakeClock())
		h := dialH2(t, addr, pool)
		id := h.get(t, "/hold")
		h.waitFor(t, "the first bytes of /hold", func() bool { return len(h.streams[id].body) > 0 })
		conns, holds, names = append(conns, h), append(holds, id), append(names, tc.name)
	}
	u.Stop()
	for i, h := range conns {
		h.waitFor(t, "a GOAWAY (or the connection's end)", func() bool { return len(h.goaways) > 0 || h.err != nil })
		if g := h.goAways(); len(g) == 0 || g[0].last != maxStreamID || !slices.Equal(g[0].open, []uint32{holds[i]}) {
			t.Errorf("%s: GOAWAY frames %+v, want one with stream 2^31-1 while stream %d was open", names[i], g, holds[i])
		}
	}
	close(release)
	for i, h := range conns {
		if r := h.wait(t, holds[i]); r.status != 200 || string(r.body) != "first\nlast\n" {
			t.Errorf("%s: the stream in flight: %d %q", names[i], r.status, r.body)
		}
		h.waitFor(t, "the server to close the connection", func() bool { return h.err != nil })
		if g := h.goAways(); len(g) != 2 || g[1].last < holds[i] {
			t.Errorf("%s: GOAWAY frames %+v, want 2, the second covering stream %d", names[i], g, holds[i])
		}
	}
	done := make(chan error, 1)
	go func() { done <- u.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Wait: %v, want nil (drained before the deadline)", err)
		}
	case <-time.After(waitBound):
		t.Fatal("Wait did not return")
	}
}

// h2conn is a bare HTTP/2 client connection (the tests' full client,
// tests/internal/h2, is out of this package's reach): GET requests use static-table
// indexes and literals; it acknowledges SETTINGS and PING (unless holdPings is set:
// then the test acknowledges them) and records every GOAWAY and PING, in order, and
// each stream's status, body and end. Response statuses are read from the first
// field of a header block, which net/http encodes as a static-table index.
type h2conn struct {
	net.Conn
	scheme string
	wmu    sync.Mutex
	next   uint32 // guarded by wmu

	mu        sync.Mutex
	changed   chan struct{}
	goaways   []h2goaway
	pings     [][]byte // the payloads of the PINGs received (not ACKs)
	control   []string // "GOAWAY" and "PING", as received
	holdPings bool     // PINGs are not acknowledged by the reader
	streams   map[uint32]*h2stream
	err       error // why the reader ended
}

type h2goaway struct {
	last, code uint32
	open       []uint32 // streams not ended when it arrived
}

type h2stream struct {
	status       int
	body         []byte
	ended, reset bool
}

// dialH2 connects to addr: over TLS (ALPN "h2") if pool is set, else h2c.
func dialH2(t *testing.T, addr string, pool *x509.CertPool) *h2conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return newH2Conn(t, c, pool)
}

// newH2Conn starts HTTP/2 on c: after a TLS handshake that must negotiate "h2" if
// pool is set.
func newH2Conn(t *testing.T, c net.Conn, pool *x509.CertPool) *h2conn {
	t.Helper()
	h := &h2conn{Conn: c, scheme: "http", next: 1, changed: make(chan struct{}), streams: map[uint32]*h2stream{}}
	t.Cleanup(func() { c.Close() })
	if pool != nil {
		tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}})
		tc.SetDeadline(time.Now().Add(waitBound))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		tc.SetDeadline(time.Time{})
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("negotiated %q, want h2", p)
		}
		h.Conn, h.scheme = tc, "https"
	}
	// The preface goes first: the reader may acknowledge the server's SETTINGS at once.
	h.write(t, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), h2frame(0x4, 0, 0, nil))
	go h.readLoop()
	return h
}

func h2frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

func (h *h2conn) write(t testing.TB, parts ...[]byte) error {
	h.SetWriteDeadline(time.Now().Add(waitBound))
	_, err := h.Write(slices.Concat(parts...))
	if err != nil && t != nil {
		t.Fatalf("write: %v", err)
	}
	return err
}

// get sends GET path on a new stream and returns its ID.
func (h *h2conn) get(t *testing.T, path string) uint32 {
	t.Helper()
	h.wmu.Lock()
	defer h.wmu.Unlock()
	id := h.next
	h.next += 2
	h.mu.Lock()
	h.streams[id] = &h2stream{}
	h.mu.Unlock()
	scheme := byte(0x86) // :scheme http
	if h.scheme == "https" {
		scheme = 0x87
	}
	authority := h.RemoteAddr().String()
	// :method GET, :scheme, then :path and :authority as literals without indexing
	// whose names are static indexes 4 and 1.
	block := append([]byte{0x82, scheme, 0x04, byte(len(path))}, path...)
	block = append(append(block, 0x01, byte(len(authority))), authority...)
	h.write(t, h2frame(0x1, 0x1|0x4, id, block)) // HEADERS, END_STREAM|END_HEADERS
	return id
}

// roundTrip sends GET path and waits for its response.
func (h *h2conn) roundTrip(t *testing.T, path string) h2stream {
	t.Helper()
	return h.wait(t, h.get(t, path))
}

// wait waits for stream id to end and returns it.
func (h *h2conn) wait(t *testing.T, id uint32) h2stream {
	t.Helper()
	h.waitFor(t, fmt.Sprintf("the end of stream %d", id), func() bool { return h.streams[id].ended })
	return h.stream(id)
}

// stream returns a copy of stream id's state.
func (h *h2conn) stream(id uint32) h2stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := *h.streams[id]
	s.body = slices.Clone(s.body)
	return s
}

// waitFor waits until cond, called with h.mu held, is true.
func (h *h2conn) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	bound := time.NewTimer(waitBound)
	defer bound.Stop()
	for {
		h.mu.Lock()
		ok, ch := cond(), h.changed
		h.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-bound.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (h *h2conn) goAways() []h2goaway {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.goaways)
}

func (h *h2conn) readErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// staticStatus maps the static-table indexes of :status to their values.
var staticStatus = map[byte]int{0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}

func (h *h2conn) readLoop() {
	err := h.read()
	h.mu.Lock()
	h.err = err
	for _, s := range h.streams {
		s.ended = true
	}
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

func (h *h2conn) read() error {
	br := bufio.NewReader(h.Conn)
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return err
		}
		typ, flags, id := hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:])&0x7fffffff
		p := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(br, p); err != nil {
			return err
		}
		switch typ {
		case 0x4: // SETTINGS
			if flags&0x1 == 0 {
				if err := h.write(nil, h2frame(0x4, 0x1, 0, nil)); err != nil {
					return err
				}
			}
			continue
		case 0x6: // PING
			if flags&0x1 != 0 {
				continue
			}
			h.mu.Lock()
			h.pings = append(h.pings, p)
			h.control = append(h.control, "PING")
			hold := h.holdPings
			close(h.changed)
			h.changed = make(chan struct{})
			h.mu.Unlock()
			if !hold {
				if err := h.write(nil, h2frame(0x6, 0x1, 0, p)); err != nil {
					return err
				}
			}
			continue
		case 0x9: // CONTINUATION: net/http's small responses fit in one frame
			return errors.New("unexpected CONTINUATION")
		}
		h.mu.Lock()
		s := h.streams[id]
		switch {
		case typ == 0x7 && len(p) >= 8: // GOAWAY
			g := h2goaway{last: binary.BigEndian.Uint32(p) & 0x7fffffff, code: binary.BigEndian.Uint32(p[4:])}
			for id, s := range h.streams {
				if !s.ended {
					g.open = append(g.open, id)
				}
			}
			slices.Sort(g.open)
			h.goaways = append(h.goaways, g)
			h.control = append(h.control, "GOAWAY")
			for id, s := range h.streams {
				s.ended = s.ended || id > g.last // not processed
			}
		case s == nil || s.ended:
		case typ == 0x1 && flags&0x28 == 0 && len(p) > 0: // HEADERS, neither PADDED nor PRIORITY
			if st, ok := staticStatus[p[0]]; ok && s.status == 0 {
				s.status = st
			} else if s.status == 0 {
				s.status = -1 // not decoded
			}
			s.ended = flags&0x1 != 0
		case typ == 0x0 && flags&0x8 == 0: // DATA, not PADDED
			s.body = append(s.body, p...)
			s.ended = flags&0x1 != 0
		case typ == 0x3: // RST_STREAM
			s.ended, s.reset = true, true
		}
		close(h.changed)
		h.changed = make(chan struct{})
		h.mu.Unlock()
	}
}
