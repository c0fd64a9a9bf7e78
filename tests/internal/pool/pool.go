// Package pool is a client like a load balancer's connection pool, for the tests and
// the benchmark of issue 20: a fixed set of HTTP/1.1 keep-alive connections, each
// sending a request every period on its own connection (raw HTTP/1.1, package
// rawhttp: never retried). It records, per connection, every PID that answered, the
// failed requests, and the connections the server closed; with Redial, a connection
// the server closed (or that failed) is dialled again, and counted.
//
// A run is bounded in time (Config.Duration) and in requests (Config.MaxRequests);
// only loopback TCP addresses or unix sockets are dialled.
package pool

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// Config describes a pool.
type Config struct {
	// Addr is the server: host:port on a loopback address, or "unix:/path".
	Addr string
	// Conns is the number of connections (default 64).
	Conns int
	// Every is each connection's period (default 50ms).
	Every time.Duration
	// Timeout bounds one request (default 5s).
	Timeout time.Duration
	// Duration bounds the run (required); MaxRequests bounds its requests (required).
	Duration    time.Duration
	MaxRequests int
	// Redial dials a connection again after the server closed it or a request on it
	// failed (a pool does); otherwise that connection stops.
	Redial bool
}

// Conn is what one connection of the pool saw.
type Conn struct {
	Requests int // sent
	OK       int // answered with a 2xx, in full
	Failed   int // no complete 2xx response
	// Closed counts the times the server closed the connection: a response with
	// "Connection: close", or the connection found closed (EOF, reset).
	Closed  int
	Redials int
	// PIDs are the PIDs that answered (X-Pid), in order, each once per run of
	// consecutive answers.
	PIDs   []int
	Errors []string // the first errors, with the time since the start
}

// Pool is a running pool.
type Pool struct {
	cfg   Config
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []*Conn
	sent  int
}

// Start dials every connection and starts their requests. An error means a
// connection could not be dialled (nothing runs then).
func Start(cfg Config) (*Pool, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 64
	}
	if cfg.Every <= 0 {
		cfg.Every = 50 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Duration <= 0 || cfg.MaxRequests <= 0 {
		return nil, errors.New("pool: Duration and MaxRequests are required")
	}
	p := &Pool{cfg: cfg, start: time.Now(), stop: make(chan struct{})}
	var cs []*rawhttp.Conn
	for i := 0; i < cfg.Conns; i++ {
		c, err := p.dial()
		if err != nil {
			for _, c := range cs {
				c.Close()
			}
			return nil, fmt.Errorf("pool: dialling connection %d: %w", i, err)
		}
		cs = append(cs, c)
		p.conns = append(p.conns, &Conn{})
	}
	for i, c := range cs {
		p.wg.Add(1)
		// Spread the connections over the period.
		offset := cfg.Every * time.Duration(i) / time.Duration(cfg.Conns)
		go p.run(p.conns[i], c, offset)
	}
	return p, nil
}

func (p *Pool) dial() (*rawhttp.Conn, error) {
	if path, ok := strings.CutPrefix(p.cfg.Addr, "unix:"); ok {
		nc, err := net.DialTimeout("unix", path, p.cfg.Timeout)
		if err != nil {
			return nil, err
		}
		return rawhttp.NewConn(unixConn{nc}), nil
	}
	return rawhttp.Dial(p.cfg.Addr, p.cfg.Timeout)
}

// take counts one request against MaxRequests; false once the run is over.
func (p *Pool) take() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sent >= p.cfg.MaxRequests || time.Since(p.start) > p.cfg.Duration {
		return false
	}
	p.sent++
	return true
}

func (p *Pool) run(st *Conn, c *rawhttp.Conn, offset time.Duration) {
	defer p.wg.Done()
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	t := time.NewTimer(offset)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		t.Reset(p.cfg.Every)
		if c == nil {
			if !p.cfg.Redial {
				return
			}
			var err error
			if c, err = p.dial(); err != nil {
				p.note(st, func() { st.Failed++; st.addErr(p.start, "redial: "+err.Error()) })
				continue
			}
			p.note(st, func() { st.Redials++ })
		}
		if !p.take() {
			return
		}
		resp, err := c.Do(http.MethodGet, "/", nil, p.cfg.Timeout)
		k := rawhttp.KindOf(resp, err)
		p.note(st, func() {
			st.Requests++
			switch {
			case k == rawhttp.OK:
				st.OK++
				if pid := resp.PID(); len(st.PIDs) == 0 || st.PIDs[len(st.PIDs)-1] != pid {
					st.PIDs = append(st.PIDs, pid)
				}
			default:
				st.Failed++
				st.addErr(p.start, fmt.Sprintf("%v: %v", k, err))
			}
			if k == rawhttp.OK && resp.Close || k == rawhttp.EOF || k == rawhttp.Reset {
				st.Closed++
			}
		})
		if !c.Reusable() {
			c.Close()
			c = nil
		}
	}
}

func (p *Pool) note(st *Conn, f func()) {
	p.mu.Lock()
	f()
	p.mu.Unlock()
}

func (c *Conn) addErr(start time.Time, s string) {
	if len(c.Errors) < 5 {
		c.Errors = append(c.Errors, fmt.Sprintf("t=%v %s", time.Since(start).Round(time.Millisecond), s))
	}
}

// Wait waits until cond holds for every connection (what each saw so far), at most
// timeout.
func (p *Pool) Wait(cond func(c Conn) bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		all := true
		for _, c := range p.conns {
			all = all && cond(*c)
		}
		p.mu.Unlock()
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool: a condition did not hold for every connection within %v", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop stops the requests, waits for those in flight, and returns what each
// connection saw.
func (p *Pool) Stop() Result {
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	r := Result{Elapsed: time.Since(p.start)}
	for _, c := range p.conns {
		cc := *c
		cc.PIDs = append([]int(nil), c.PIDs...)
		cc.Errors = append([]string(nil), c.Errors...)
		r.Conns = append(r.Conns, cc)
	}
	return r
}

// Result is what a pool saw.
type Result struct {
	Elapsed time.Duration
	Conns   []Conn
}

// Totals sums the connections' counts.
func (r Result) Totals() (requests, ok, failed, closed, redials int) {
	for _, c := range r.Conns {
		requests += c.Requests
		ok += c.OK
		failed += c.Failed
		closed += c.Closed
		redials += c.Redials
	}
	return
}

// Summary is one line for logs.
func (r Result) Summary() string {
	req, ok, failed, closed, redials := r.Totals()
	return fmt.Sprintf("%d connections, %d requests in %v: %d ok, %d failed, %d closed by the server, %d redials",
		len(r.Conns), req, r.Elapsed.Round(time.Millisecond), ok, failed, closed, redials)
}

// Errors lists up to n errors, each with its connection.
func (r Result) Errors(n int) []string {
	var out []string
	for i, c := range r.Conns {
		for _, e := range c.Errors {
			if len(out) < n {
				out = append(out, fmt.Sprintf("conn %d: %s", i, e))
			}
		}
	}
	return out
}

// PIDsSeen returns every PID that answered, sorted.
func (r Result) PIDsSeen() []int {
	seen := map[int]bool{}
	for _, c := range r.Conns {
		for _, p := range c.PIDs {
			seen[p] = true
		}
	}
	var out []int
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// unixConn is a unix connection whose requests say "Host: localhost" (rawhttp names
// the host after the remote address).
type unixConn struct{ net.Conn }

func (unixConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
