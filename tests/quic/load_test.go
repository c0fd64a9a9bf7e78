package quictest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// The long-lived HTTP/3 clients of the tests, as the quic module's own tests run
// them (quic/h3_test.go), against real server processes: the generation that
// answered comes in X-Gen.

// clientTransport is a client's own quic.Transport on its own UDP socket.
func clientTransport(t testing.TB) *quic.Transport {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() {
		tr.Close()
		pc.Close()
	})
	return tr
}

// dialH3 opens an HTTP/3 connection (with 0-RTT if early and the TLS config holds
// a ticket that allows it).
func dialH3(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, early bool) (*quic.Conn, *http3.ClientConn, error) {
	var conn *quic.Conn
	var err error
	if early {
		conn, err = tr.DialEarly(ctx, addr, tlsConf, &quic.Config{})
	} else {
		conn, err = tr.Dial(ctx, addr, tlsConf, &quic.Config{})
	}
	if err != nil {
		return nil, nil, err
	}
	return conn, (&http3.Transport{}).NewClientConn(conn), nil
}

// get sends one GET and reads the whole answer. sent says whether the request
// left the client (its headers were written): a request that did not was never
// seen by a server.
func get(ctx context.Context, cc *http3.ClientConn, url string) (status int, gen int, body []byte, sent bool, err error) {
	return do(ctx, cc, http.MethodGet, url)
}

// do is get with another method (http3.MethodGet0RTT sends in 0-RTT).
func do(ctx context.Context, cc *http3.ClientConn, method, url string) (status int, gen int, body []byte, sent bool, err error) {
	trace := &httptrace.ClientTrace{WroteHeaders: func() { sent = true }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, url, nil)
	if err != nil {
		return 0, 0, nil, false, err
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return 0, 0, nil, sent, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	gen, _ = strconv.Atoi(resp.Header.Get("X-Gen"))
	return resp.StatusCode, gen, body, sent, err
}

// closeKind sorts why a client's connection ended, from the client's error.
type closeKind int

const (
	closedByClient closeKind = iota // the client closed it (after GOAWAY, or at the end)
	closedByServer                  // the server closed it with H3_NO_ERROR (deadline)
	closedReset                     // a stateless reset
	closedIdle                      // an idle timeout (or a handshake timeout)
	closedOther                     // anything else
)

func classifyClose(conn *quic.Conn) (closeKind, error) {
	cause := context.Cause(conn.Context())
	var appErr *quic.ApplicationError
	switch {
	case errors.As(cause, new(*quic.StatelessResetError)):
		return closedReset, cause
	case errors.As(cause, new(*quic.IdleTimeoutError)), errors.As(cause, new(*quic.HandshakeTimeoutError)):
		return closedIdle, cause
	case errors.As(cause, &appErr) && appErr.ErrorCode == quic.ApplicationErrorCode(http3.ErrCodeNoError):
		if appErr.Remote {
			return closedByServer, cause
		}
		return closedByClient, cause
	}
	return closedOther, cause
}

// load is the tally of long-lived clients, each sending a request every interval
// on its connection, never retried: a request whose headers left the client and
// that got no 200 answer is failed. A client that learns its connection is going
// away (GOAWAY) before it sends opens a new one.
type load struct {
	mu        sync.Mutex
	sent, ok  int
	failed    int
	rejected  int // failed with H3_REQUEST_REJECTED (also counted in failed)
	notSent   int // the connection went away before the request was sent
	dials     int
	dialFails int
	closes    map[closeKind]int
	byGen     map[int]int
	// newConns records, per connection, when it was dialed and which generation
	// answered its first request.
	newConns []connStart
	errs     []string
}

type connStart struct {
	at  time.Time
	gen int
}

func (l *load) note(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
}

func (l *load) fail(format string, args ...any) {
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

// runLoad starts n clients against addr, each sending at most max rounds of
// requests, one round every interval, until ctx ends: the even clients send one
// request a round, the odd ones inflight at once on their connection. wait returns
// the tally once they all stopped.
func runLoad(ctx context.Context, t testing.TB, addr net.Addr, tlsConf *tls.Config, n, inflight, max int, interval time.Duration) (l *load, wait func() *load) {
	l = &load{closes: map[closeKind]int{}, byGen: map[int]int{}}
	var wg sync.WaitGroup
	for i := range n {
		tr := clientTransport(t)
		k := 1
		if i%2 == 1 {
			k = inflight
		}
		wg.Go(func() { l.client(ctx, tr, addr, tlsConf.Clone(), k, max, interval) })
	}
	return l, func() *load { wg.Wait(); return l }
}

// loadConn is a load client's connection.
type loadConn struct {
	conn   *quic.Conn
	cc     *http3.ClientConn
	dialed time.Time
	first  bool // no request answered on it yet
}

// client is one long-lived client, sending k requests at once each round.
func (l *load) client(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, k, max int, interval time.Duration) {
	var c *loadConn
	defer func() { l.closeConn(c) }()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range max {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if c != nil && c.conn.Context().Err() != nil {
			l.closeConn(c)
			c = nil
		}
		if c == nil {
			if c = l.dial(ctx, tr, addr, tlsConf); c == nil {
				continue
			}
		}
		if !l.round(ctx, c, "https://"+addr.String()+"/", k) {
			if ctx.Err() != nil {
				return
			}
			// Told to go away before sending: the next requests go on a new
			// connection.
			l.closeConn(c)
			c = nil
		}
	}
}

// dial opens a load client's connection, or returns nil.
func (l *load) dial(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config) *loadConn {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dialed := time.Now()
	conn, cc, err := dialH3(dctx, tr, addr, tlsConf, false)
	if err != nil {
		if ctx.Err() == nil {
			l.note(func() { l.dialFails++; l.fail("dial: %v", err) })
		}
		return nil
	}
	l.note(func() { l.dials++ })
	return &loadConn{conn: conn, cc: cc, dialed: dialed, first: true}
}

// closeConn closes a load client's connection and records how it ended.
func (l *load) closeConn(c *loadConn) {
	if c == nil {
		return
	}
	c.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	<-c.conn.Context().Done()
	kind, cause := classifyClose(c.conn)
	l.note(func() {
		l.closes[kind]++
		if kind == closedReset || kind == closedIdle || kind == closedOther {
			l.fail("connection closed: %v", cause)
		}
	})
}

// round sends k requests at once on c and tallies them. It reports false if one
// was not sent: the connection is going away.
func (l *load) round(ctx context.Context, c *loadConn, url string, k int) bool {
	type result struct {
		status, gen int
		body        []byte
		sent        bool
		err         error
	}
	res := make([]result, k)
	var wg sync.WaitGroup
	for i := range k {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			r := &res[i]
			r.status, r.gen, r.body, r.sent, r.err = get(rctx, c.cc, url)
		})
	}
	wg.Wait()
	allSent := true
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range res {
		if !r.sent {
			allSent = false
			if ctx.Err() == nil {
				l.notSent++
			}
			continue
		}
		l.sent++
		var h3err *http3.Error
		switch {
		case r.err != nil && errors.As(r.err, &h3err) && h3err.ErrorCode == http3.ErrCodeRequestRejected:
			l.failed++
			l.rejected++
			l.fail("request rejected: %v", r.err)
		case r.err != nil && ctx.Err() != nil:
			l.sent-- // cut by the end of the test, not by a server
		case r.err != nil:
			l.failed++
			l.fail("request: %v", r.err)
		case r.status != http.StatusOK || !strings.HasPrefix(string(r.body), "pid="):
			l.failed++
			l.fail("answer: %d %q", r.status, r.body)
		default:
			l.ok++
			l.byGen[r.gen]++
			if c.first {
				l.newConns = append(l.newConns, connStart{at: c.dialed, gen: r.gen})
				c.first = false
			}
		}
	}
	return allSent
}

// okFrom returns how many requests generation gen answered.
func (l *load) okFrom(gen int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byGen[gen]
}

// waitFor polls cond every 10 ms until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
