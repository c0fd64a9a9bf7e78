package tests

// HTTP/2 across an upgrade, for every way http.Server.Protocols enables it: the old
// generation tells each HTTP/2 connection to go away, in RFC 9113's two steps: a
// GOAWAY with stream 2^31-1 and a PING, then the GOAWAY with the last stream. Clients are
// tests/internal/h2, which shows every frame and never retries (net/http's Transport
// would silently move to a new connection), and, for HTTP/1, rawhttp.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
	"github.com/seed-a7250cfa/handover/tests/internal/h2"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// maxStreamID is the last-stream-id of a draining server's first GOAWAY (RFC 9113
// §6.8: "stop opening streams", none refused).
const maxStreamID = 1<<31 - 1

// h2Drain is the drain deadline of the HTTP/2 tests: the old generation must exit
// well before it, as soon as its last stream is done.
const h2Drain = 10 * time.Second

// h2Stream is the request held in flight across the upgrade: a first line at once,
// which shows that the old generation is handling it, and the last 1.5s later.
const h2Stream = "/stream?n=2&interval=1500"

// h2Get sends GET path on c and waits for the whole response.
func h2Get(t testing.TB, c *h2.Conn, path string) *h2.Response {
	t.Helper()
	s, err := c.Get(path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	r, err := s.Wait(10 * time.Second)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return r
}

// h2Lines checks that body is n lines, each from pid.
func h2Lines(body []byte, n, pid int) error {
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	if len(lines) != n {
		return fmt.Errorf("%d lines, want %d: %q", len(lines), n, body)
	}
	for _, l := range lines {
		if !strings.Contains(l, fmt.Sprintf("pid=%d ", pid)) {
			return fmt.Errorf("line %q is not from pid %d", l, pid)
		}
	}
	return nil
}

// TestHTTP2GoAway: for each Protocols combination of the demo, a client holds an
// HTTP/2 connection to the old generation with a stream in flight; on the upgrade the
// connection gets exactly two GOAWAY frames (NO_ERROR): the first, with stream
// 2^31-1, while the stream is open, and the second, which covers it; the stream completes with 200 from the old PID; a new connection reaches
// the new PID; the old generation closes the connection and exits before its drain
// deadline. With TLS and HTTP/1 only, "h2" is not negotiated, and keep-alive
// connections get "Connection: close" or are closed by the drain.
func TestHTTP2GoAway(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		tls  bool
		h2   bool
	}{
		{"TLS h1,h2 (default)", nil, true, true},
		{"TLS h1", []string{"-protocols", "h1"}, true, false},
		{"h2c", []string{"-protocols", "h2c"}, false, true},
		{"h1,h2c", []string{"-protocols", "h1,h2c"}, false, true},
		{"-h2c (h1,h2,h2c)", []string{"-h2c"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			spec := demoSpec{dir: dir, drain: h2Drain, args: tc.args}
			var pool *x509.CertPool
			if tc.tls {
				var cert, key string
				cert, key, pool = testcert.Files(t, dir)
				spec.args = append(slices.Clone(spec.args), "-tls-cert", cert, "-tls-key", key)
			}
			d := startDemoSpec(t, spec)
			if !tc.h2 {
				checkHTTP1Drain(t, d, pool)
				return
			}
			dial := func(addr string) (*h2.Conn, error) {
				if tc.tls {
					return h2.DialTLS(addr, &tls.Config{RootCAs: pool}, 5*time.Second)
				}
				return h2.Dial(addr, 5*time.Second)
			}
			checkGoAway(t, d, []string{d.addr}, dial)
			d.stop()
		})
	}
}

// checkGoAway holds a stream in flight on a connection to each of addrs (servers of
// the current generation of d) made with dial, upgrades d, and checks what each
// connection gets (see TestHTTP2GoAway).
func checkGoAway(t *testing.T, d *demo, addrs []string, dial func(addr string) (*h2.Conn, error)) {
	old := d.current()
	open := func(addr string) *h2.Conn {
		t.Helper()
		c, err := dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	type held struct {
		c *h2.Conn
		s *h2.Stream
	}
	var conns []held
	for _, addr := range addrs {
		c := open(addr)
		if r := h2Get(t, c, "/"); r.Status != 200 || r.PID() != old {
			t.Fatalf("%s: GET /: %d from %d, want 200 from %d", addr, r.Status, r.PID(), old)
		}
		s, err := c.Get(h2Stream)
		if err != nil {
			t.Fatal(err)
		}
		// Its first line has come: the old generation is handling it.
		if err := s.WaitData(1, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, held{c, s})
	}

	signalled := time.Now()
	deadline := signalled.Add(h2Drain) // before the old generation's own deadline
	_, cur := d.upgrade()
	for _, h := range conns {
		g, err := h.c.WaitGoAway(time.Until(deadline))
		if err != nil {
			t.Errorf("%s: no GOAWAY before the drain deadline (%v); connection: %v\n%s", h.c.RemoteAddr(), err, h.c.Err(), strings.Join(h.c.Trace(), "\n"))
			continue
		}
		t.Logf("%s: GOAWAY %v after SIGUSR2", h.c.RemoteAddr(), g.At.Sub(signalled).Round(time.Millisecond))
		if g.Code != h2.ErrCodeNo || g.LastStreamID != maxStreamID || !slices.Contains(g.Open, h.s.ID) {
			t.Errorf("%s: first GOAWAY %+v; want NO_ERROR, last-stream-id 2^31-1, stream %d open", h.c.RemoteAddr(), g, h.s.ID)
		}
	}
	// New connections reach the new generation.
	for _, addr := range addrs {
		c := open(addr)
		if r := h2Get(t, c, "/"); r.Status != 200 || r.PID() != cur {
			t.Errorf("%s: GET / on a new connection: %d from %d, want 200 from %d", addr, r.Status, r.PID(), cur)
		}
		c.Close()
	}
	for _, h := range conns {
		r, err := h.s.Wait(time.Until(deadline))
		switch {
		case err != nil:
			t.Errorf("%s: the stream in flight: %v", h.c.RemoteAddr(), err)
		case r.Status != 200 || r.PID() != old:
			t.Errorf("%s: the stream in flight: %d from %d; want 200 from %d", h.c.RemoteAddr(), r.Status, r.PID(), old)
		default:
			if err := h2Lines(r.Body, 2, old); err != nil {
				t.Errorf("%s: the stream in flight: %v", h.c.RemoteAddr(), err)
			}
		}
	}
	// Its streams done, the old generation closes the connections and exits, well
	// before its deadline.
	if err := waitGone(old, time.Until(deadline)); err != nil || time.Now().After(deadline) {
		t.Errorf("the old generation %d did not exit before its drain deadline: %v", old, err)
	} else {
		t.Logf("the old generation exited %v after SIGUSR2 (deadline %v)", time.Since(signalled).Round(time.Millisecond), h2Drain)
	}
	for _, h := range conns {
		if err := h.c.WaitClosed(5 * time.Second); err != io.EOF {
			t.Errorf("%s: the connection ended with %v, want EOF (closed by the old generation)", h.c.RemoteAddr(), err)
		}
		if gs := h.c.GoAways(); len(gs) != 2 || gs[1].Code != h2.ErrCodeNo || gs[1].LastStreamID < h.s.ID {
			t.Errorf("%s: GOAWAY frames %+v, want 2, the second NO_ERROR with last-stream-id >= %d:\n%s", h.c.RemoteAddr(), gs, h.s.ID, strings.Join(h.c.Trace(), "\n"))
		}
	}
}

// checkHTTP1Drain: a TLS server with HTTP/1 only does not negotiate "h2"; across an
// upgrade, responses in flight complete from the old PID, a keep-alive connection's
// next request is answered with "Connection: close", an idle one is closed by the
// drain, new connections reach the new PID, and the old generation exits before its
// deadline.
func checkHTTP1Drain(t *testing.T, d *demo, pool *x509.CertPool) {
	old := d.current()
	if c, err := h2.DialTLS(d.addr, &tls.Config{RootCAs: pool}, 5*time.Second); err == nil {
		c.Close()
		t.Fatal("an HTTP/2 client negotiated h2 with an HTTP/1-only server")
	}
	dial := func() (*tls.Conn, *rawhttp.Conn) {
		t.Helper()
		tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", d.addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Fatalf("negotiated %q, want http/1.1", p)
		}
		c := rawhttp.NewConn(tc)
		t.Cleanup(func() { c.Close() })
		if r, err := c.Do("GET", "/", nil, 5*time.Second); err != nil || r.PID() != old || r.Close {
			t.Fatalf("GET /: %v, from %d (close %v), want a keep-alive answer from %d", err, respPID(r), r != nil && r.Close, old)
		}
		return tc, c
	}
	// stream starts path on c and returns once its first line has arrived.
	stream := func(c *rawhttp.Conn, path string) <-chan inflight {
		first := make(chan struct{})
		done := make(chan inflight, 1)
		go func() {
			var lines []string
			resp, err := c.Stream("GET", path, nil, 10*time.Second, func(l []byte) error {
				if lines = append(lines, string(l)); len(lines) == 1 {
					close(first)
				}
				return nil
			})
			done <- inflight{resp: resp, lines: lines, err: err}
		}()
		select {
		case <-first:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not start", path)
		}
		return done
	}
	_, events := dial()  // a server-sent event stream: it ends when the drain starts
	_, slow := dial()    // a response that takes its time
	idleTLS, _ := dial() // an idle keep-alive connection
	eventsDone := stream(events, "/events?n=600&interval=100")
	slowDone := stream(slow, h2Stream)

	deadline := time.Now().Add(h2Drain)
	_, cur := d.upgrade()
	if ev := <-eventsDone; ev.err != nil || ev.resp.Status != 200 || ev.resp.PID() != old || !slices.Contains(ev.lines, "event: bye") {
		t.Fatalf("the event stream: %v, %d from %d, last lines %q; want it ended with a bye from %d", ev.err, statusOf(ev.resp), respPID(ev.resp), lastN(ev.lines, 4), old)
	}
	// The old generation drains (the event stream said so): its keep-alive
	// connection's next request is answered, with "Connection: close".
	if r, err := events.Do("GET", "/", nil, 5*time.Second); err != nil || r.PID() != old || !r.Close {
		t.Errorf("a request on a keep-alive connection while draining: %v, from %d (close %v); want Connection: close from %d", err, respPID(r), r != nil && r.Close, old)
	}
	if at, err := closedAt(idleTLS, time.Until(deadline)); at.IsZero() {
		t.Errorf("the idle keep-alive connection was not closed by the drain: %v", err)
	}
	if sl := <-slowDone; sl.err != nil || sl.resp.Status != 200 || sl.resp.PID() != old || h2Lines(sl.resp.Body, 2, old) != nil {
		t.Errorf("the response in flight: %v, %d from %d, %q; want 200 from %d", sl.err, statusOf(sl.resp), respPID(sl.resp), sl.lines, old)
	}
	tc, err := tls.Dial("tcp", d.addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := rawhttp.NewConn(tc).Do("GET", "/", rawhttp.CloseHeader(), 5*time.Second); err != nil || r.PID() != cur {
		t.Errorf("GET / on a new connection: %v, from %d, want %d", err, respPID(r), cur)
	}
	if err := waitGone(old, time.Until(deadline)); err != nil || time.Now().After(deadline) {
		t.Errorf("the old generation %d did not exit before its drain deadline: %v", old, err)
	}
	d.stop()
}

// TestHTTP2GoAwayTwoServers: a process with two graceful.Servers (h2c only; HTTP/1 and
// h2c): on an upgrade the Upgrader drains both, and each one's HTTP/2 connection gets
// its GOAWAY (as in TestHTTP2GoAway).
func TestHTTP2GoAwayTwoServers(t *testing.T) {
	other := freePort(t)
	d := startDemoSpec(t, demoSpec{program: proc.Binary(t, "./testdata/twoservers"), drain: h2Drain, args: []string{"-listen2", other}})
	checkGoAway(t, d, []string{d.addr, other}, func(addr string) (*h2.Conn, error) { return h2.Dial(addr, 5*time.Second) })
	d.stop()
}
