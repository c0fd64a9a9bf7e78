// Package h3load is the load of the HTTP/3 upgrade tests (tests/quic) and of the
// benchmark's HTTP/3 comparison (tests/bench -http3): long-lived quic-go clients,
// each on its own UDP socket, sending requests that are never retried, and a tally
// of what they saw. A server answers GET / with a body that begins "pid=P"; the
// handover demo also sends its generation in X-Gen.
package h3load

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
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// RequestTimeout bounds every request of the load.
const RequestTimeout = 5 * time.Second

// Transport returns a client's own quic.Transport on its own UDP socket on
// 127.0.0.1; close with the returned function.
func Transport() (*quic.Transport, func(), error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	tr := &quic.Transport{Conn: pc}
	return tr, func() { tr.Close(); pc.Close() }, nil
}

// Dial opens an HTTP/3 connection (with 0-RTT if early and the TLS config holds a
// ticket that allows it).
func Dial(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, early bool) (*quic.Conn, *http3.ClientConn, error) {
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

// Answer is what a request got.
type Answer struct {
	Status int
	Gen    int // X-Gen (0 if absent)
	PID    int // from the body "pid=P ..." (0 if absent)
	Body   []byte
	// Sent says whether the request left the client (its headers were
	// written): a request that did not was never seen by a server.
	Sent bool
}

// Do sends one request (method http3.MethodGet0RTT sends in 0-RTT) and reads the
// whole answer.
func Do(ctx context.Context, cc *http3.ClientConn, method, url string) (Answer, error) {
	var a Answer
	trace := &httptrace.ClientTrace{WroteHeaders: func() { a.Sent = true }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, url, nil)
	if err != nil {
		return a, err
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	a.Status = resp.StatusCode
	a.Body, err = io.ReadAll(resp.Body)
	a.Gen, _ = strconv.Atoi(resp.Header.Get("X-Gen"))
	if rest, ok := strings.CutPrefix(string(a.Body), "pid="); ok {
		if f := strings.Fields(rest); len(f) > 0 {
			a.PID, _ = strconv.Atoi(f[0])
		}
	}
	return a, err
}

// CloseKind sorts why a client's connection ended, from the client's error.
type CloseKind int

// The ways a connection ends.
const (
	ClosedByClient CloseKind = iota // the client closed it (after GOAWAY, or at the end)
	ClosedByServer                  // the server closed it with H3_NO_ERROR (deadline)
	ClosedReset                     // a stateless reset
	ClosedIdle                      // an idle timeout (or a handshake timeout)
	ClosedOther                     // anything else
)

func (k CloseKind) String() string {
	return [...]string{"by client", "by server", "stateless reset", "idle timeout", "other"}[k]
}

// Classify says why conn ended, and the cause.
func Classify(conn *quic.Conn) (CloseKind, error) {
	cause := context.Cause(conn.Context())
	var appErr *quic.ApplicationError
	switch {
	case errors.As(cause, new(*quic.StatelessResetError)):
		return ClosedReset, cause
	case errors.As(cause, new(*quic.IdleTimeoutError)), errors.As(cause, new(*quic.HandshakeTimeoutError)):
		return ClosedIdle, cause
	case errors.As(cause, &appErr) && appErr.ErrorCode == quic.ApplicationErrorCode(http3.ErrCodeNoError):
		if appErr.Remote {
			return ClosedByServer, cause
		}
		return ClosedByClient, cause
	}
	return ClosedOther, cause
}

// Tally is what the clients saw. A request whose headers left the client and that
// got no 200 answer is failed.
type Tally struct {
	Sent, OK  int
	Failed    int
	Rejected  int // failed with H3_REQUEST_REJECTED (also counted in Failed)
	TimedOut  int // failed by RequestTimeout (also counted in Failed)
	NotSent   int // the connection went away before the request was sent
	Dials     int
	DialFails int
	Closes    map[CloseKind]int
	ByGen     map[int]int // answers by X-Gen
	ByPID     map[int]int // answers by PID
	// NewConns records, per connection, when it was dialed and who answered its
	// first request.
	NewConns []ConnStart
	Errs     []string // the first 20 errors
}

// ConnStart is a connection's first answer.
type ConnStart struct {
	At       time.Time
	Gen, PID int
}

// Config is the load.
type Config struct {
	Addr     net.Addr
	TLS      *tls.Config
	Clients  int           // long-lived clients
	Inflight int           // requests at once per round for the odd clients (the even ones send one)
	Rounds   int           // at most this many rounds per client
	Interval time.Duration // between rounds
}

// Load is a running load.
type Load struct {
	mu     sync.Mutex
	t      Tally
	wg     sync.WaitGroup
	closes []func()
}

// Run starts the clients; they stop when ctx ends or after cfg.Rounds rounds.
// Wait for them with Wait.
func Run(ctx context.Context, cfg Config) (*Load, error) {
	l := &Load{t: Tally{Closes: map[CloseKind]int{}, ByGen: map[int]int{}, ByPID: map[int]int{}}}
	for i := range cfg.Clients {
		tr, closeTr, err := Transport()
		if err != nil {
			l.Wait()
			return nil, err
		}
		l.closes = append(l.closes, closeTr)
		k := 1
		if i%2 == 1 {
			k = cfg.Inflight
		}
		l.wg.Go(func() { l.client(ctx, tr, cfg.Addr, cfg.TLS.Clone(), k, cfg.Rounds, cfg.Interval) })
	}
	return l, nil
}

// Wait waits until every client stopped, closes their sockets and returns the
// tally.
func (l *Load) Wait() Tally {
	l.wg.Wait()
	for _, c := range l.closes {
		c()
	}
	l.closes = nil
	return l.Tally()
}

// Tally returns a copy of the tally so far.
func (l *Load) Tally() Tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.t
	t.Closes, t.ByGen, t.ByPID = copyMap(t.Closes), copyMap(t.ByGen), copyMap(t.ByPID)
	t.NewConns = append([]ConnStart(nil), t.NewConns...)
	t.Errs = append([]string(nil), t.Errs...)
	return t
}

func copyMap[K comparable](m map[K]int) map[K]int {
	out := make(map[K]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// OKFrom returns how many requests generation gen answered.
func (l *Load) OKFrom(gen int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t.ByGen[gen]
}

// OKFromPID returns how many requests the process pid answered.
func (l *Load) OKFromPID(pid int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t.ByPID[pid]
}

func (l *Load) note(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
}

func (l *Load) fail(format string, args ...any) {
	if len(l.t.Errs) < 20 {
		l.t.Errs = append(l.t.Errs, fmt.Sprintf(format, args...))
	}
}

// loadConn is a client's connection.
type loadConn struct {
	conn   *quic.Conn
	cc     *http3.ClientConn
	dialed time.Time
	first  bool // no request answered on it yet
}

// client is one long-lived client, sending k requests at once each round.
func (l *Load) client(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, k, rounds int, interval time.Duration) {
	var c *loadConn
	defer func() { l.closeConn(c) }()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range rounds {
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

// dial opens a client's connection, or returns nil.
func (l *Load) dial(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config) *loadConn {
	dctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	dialed := time.Now()
	conn, cc, err := Dial(dctx, tr, addr, tlsConf, false)
	if err != nil {
		if ctx.Err() == nil {
			l.note(func() { l.t.DialFails++; l.fail("dial: %v", err) })
		}
		return nil
	}
	l.note(func() { l.t.Dials++ })
	return &loadConn{conn: conn, cc: cc, dialed: dialed, first: true}
}

// closeConn closes a client's connection and records how it ended.
func (l *Load) closeConn(c *loadConn) {
	if c == nil {
		return
	}
	c.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	<-c.conn.Context().Done()
	kind, cause := Classify(c.conn)
	l.note(func() {
		l.t.Closes[kind]++
		if kind == ClosedReset || kind == ClosedIdle || kind == ClosedOther {
			l.fail("connection closed: %v", cause)
		}
	})
}

// round sends k requests at once on c and tallies them. It reports false if one
// was not sent: the connection is going away.
func (l *Load) round(ctx context.Context, c *loadConn, url string, k int) bool {
	type result struct {
		a       Answer
		err     error
		timeout bool
	}
	res := make([]result, k)
	var wg sync.WaitGroup
	for i := range k {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, RequestTimeout)
			defer cancel()
			r := &res[i]
			r.a, r.err = Do(rctx, c.cc, http.MethodGet, url)
			r.timeout = r.err != nil && rctx.Err() != nil && ctx.Err() == nil
		})
	}
	wg.Wait()
	allSent := true
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range res {
		if !r.a.Sent {
			allSent = false
			if ctx.Err() == nil {
				l.t.NotSent++
			}
			continue
		}
		l.tally(ctx, c, r.a, r.err, r.timeout)
	}
	return allSent
}

// tally counts one sent request; l.mu is held.
func (l *Load) tally(ctx context.Context, c *loadConn, a Answer, err error, timeout bool) {
	l.t.Sent++
	var h3err *http3.Error
	switch {
	case err != nil && errors.As(err, &h3err) && h3err.ErrorCode == http3.ErrCodeRequestRejected:
		l.t.Failed++
		l.t.Rejected++
		l.fail("request rejected: %v", err)
	case timeout:
		l.t.Failed++
		l.t.TimedOut++
		l.fail("request timed out: %v", err)
	case err != nil && ctx.Err() != nil:
		l.t.Sent-- // cut by the end of the load, not by a server
	case err != nil:
		l.t.Failed++
		l.fail("request: %v", err)
	case a.Status != http.StatusOK || a.PID == 0:
		l.t.Failed++
		l.fail("answer: %d %q", a.Status, a.Body)
	default:
		l.t.OK++
		l.t.ByGen[a.Gen]++
		l.t.ByPID[a.PID]++
		if c.first {
			l.t.NewConns = append(l.t.NewConns, ConnStart{At: c.dialed, Gen: a.Gen, PID: a.PID})
			c.first = false
		}
	}
}
