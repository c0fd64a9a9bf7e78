// Package load is a bounded HTTP load generator for end-to-end upgrade tests.
//
// Workers send requests with rawhttp (so nothing is retried behind the
// test's back) and record the outcome of every single request. A run is
// always bounded both by a duration and by a total request count, and only
// loopback addresses are accepted.
//
// Typical use:
//
//	r, err := load.Start(load.Config{Addr: addr, MaxRequests: 200000, Duration: 30 * time.Second})
//	... trigger upgrades ...
//	res := r.Stop()
//	t.Log(res.Summary())
//	if n := res.FailureCount(); n > 0 { t.Errorf("%d failures: %v", n, res.FailureSamples(10)) }
package load

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// Defaults applied by Config for zero-valued fields.
const (
	DefaultConcurrency       = 16
	DefaultKeepAliveFraction = 0.5
	DefaultSlowEvery         = 10
	DefaultSlowMS            = 300
	DefaultDuration          = 30 * time.Second
	DefaultRequestTimeout    = 5 * time.Second
	// MaxRequestsLimit is the largest accepted Config.MaxRequests (about 32 MB of records).
	MaxRequestsLimit = 1_000_000
	// maxSamplesPerWorker bounds the stored error texts per worker.
	maxSamplesPerWorker = 1000
)

// Config describes a load run. Zero values select the defaults above.
type Config struct {
	// Addr is host:port on a loopback address (127.0.0.1, [::1], localhost). Required.
	Addr string
	// Concurrency is the number of workers (default 16).
	Concurrency int
	// KeepAliveFraction is the share of workers that keep one connection
	// open across requests, redialling only after Connection: close or an
	// error; the others dial per request and send Connection: close.
	// 0 means the default 0.5; use a negative value for no keep-alive
	// workers and 1 for all.
	KeepAliveFraction float64
	// SlowEvery makes every SlowEvery-th request of each worker go to
	// /slow?ms=SlowMS (default 10; negative disables slow requests).
	SlowEvery int
	// SlowMS is the server-side delay of slow requests (default 300).
	SlowMS int
	// Duration bounds the run's wall time for issuing requests (default 30s).
	// In-flight requests are allowed to finish (each within RequestTimeout).
	Duration time.Duration
	// MaxRequests is the hard cap on requests across all workers. Required,
	// 1..MaxRequestsLimit.
	MaxRequests int
	// RequestTimeout bounds one request including its dial (default 5s).
	RequestTimeout time.Duration
	// Path of normal requests (default "/").
	Path string
	// Method of every request, slow ones included (default GET), and Body, sent
	// with each (with its Content-Length). A POST is what no client may retry.
	Method string
	Body   []byte
}

func (c Config) withDefaults() (Config, error) {
	if err := rawhttp.CheckLoopback(c.Addr); err != nil {
		return c, fmt.Errorf("load: %w", err)
	}
	if c.MaxRequests <= 0 || c.MaxRequests > MaxRequestsLimit {
		return c, fmt.Errorf("load: MaxRequests must be in 1..%d, got %d", MaxRequestsLimit, c.MaxRequests)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.KeepAliveFraction == 0 {
		c.KeepAliveFraction = DefaultKeepAliveFraction
	}
	c.KeepAliveFraction = math.Max(0, math.Min(1, c.KeepAliveFraction))
	if c.SlowEvery == 0 {
		c.SlowEvery = DefaultSlowEvery
	}
	if c.SlowMS <= 0 {
		c.SlowMS = DefaultSlowMS
	}
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if c.Method == "" {
		c.Method = http.MethodGet
	}
	return c, nil
}

// Record is the compact outcome of one request.
type Record struct {
	Start     time.Duration // since the run started
	Latency   time.Duration // dial (if any) + request + full response
	PID       int32         // X-Pid of the response, 0 if none
	Status    uint16        // HTTP status, 0 if no response
	Worker    uint16        // worker index
	Kind      rawhttp.Kind  // OK, Refused, Reset, EOF, Timeout, Status or Other
	KeepAlive bool          // sent by a keep-alive worker
	Slow      bool          // sent to /slow
	Reused    bool          // sent on an already used connection
}

// Failure is a failed request with its error text.
type Failure struct {
	Record
	Err string
}

// String formats the failure for test logs.
func (f Failure) String() string {
	return fmt.Sprintf("t=%v worker=%d keepalive=%v reused=%v slow=%v %v status=%d: %s",
		f.Start.Round(time.Millisecond), f.Worker, f.KeepAlive, f.Reused, f.Slow, f.Kind, f.Status, f.Err)
}

// Ending says why a run stopped issuing requests.
type Ending uint8

// Why a run ended.
const (
	// Running: the run has not ended yet.
	Running Ending = iota
	// Stopped: Stop was called (or the parent context of Run was cancelled)
	// before either bound was reached: the load ran as long as the test wanted.
	Stopped
	// DurationElapsed: Config.Duration passed before Stop.
	DurationElapsed
	// RequestsExhausted: Config.MaxRequests were issued before Stop.
	RequestsExhausted
)

func (e Ending) String() string {
	switch e {
	case Running:
		return "running"
	case Stopped:
		return "stopped by the test"
	case DurationElapsed:
		return "ran out of time (Config.Duration)"
	case RequestsExhausted:
		return "ran out of requests (Config.MaxRequests)"
	}
	return fmt.Sprintf("Ending(%d)", uint8(e))
}

// Runner is a load run in progress, created by Start.
type Runner struct {
	cfg       Config
	start     time.Time
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	issued    atomic.Int64
	ok        atomic.Int64
	failed    atomic.Int64
	lastPID   atomic.Int64
	exhausted atomic.Bool
	answers   sync.Map // int32 PID -> *atomic.Int64: OK responses from it
	workers   []*worker
	once      sync.Once
	result    *Result
}

type worker struct {
	id        int
	keepAlive bool
	records   []Record
	failures  []Failure
}

// Start validates cfg and starts the workers. The run ends by itself when
// cfg.Duration has passed or cfg.MaxRequests have been issued; Stop ends it
// earlier.
func Start(cfg Config) (*Runner, error) {
	return start(context.Background(), cfg)
}

// Run runs a load to completion (duration, request cap, or ctx cancelled)
// and returns its result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	r, err := start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return r.Wait(), nil
}

func start(parent context.Context, cfg Config) (*Runner, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, cfg.Duration)
	r := &Runner{cfg: cfg, start: time.Now(), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	nKeep := int(math.Round(cfg.KeepAliveFraction * float64(cfg.Concurrency)))
	var wg sync.WaitGroup
	for i := 0; i < cfg.Concurrency; i++ {
		w := &worker{id: i, keepAlive: i < nKeep}
		r.workers = append(r.workers, w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(ctx, w)
		}()
	}
	go func() {
		wg.Wait()
		cancel()
		close(r.done)
	}()
	return r, nil
}

// Done is closed when all workers have finished.
func (r *Runner) Done() <-chan struct{} { return r.done }

// Progress returns live counters: requests completed OK, requests failed
// (any non-OK kind), and the X-Pid of the most recent OK response.
func (r *Runner) Progress() (ok, failed int64, lastPID int) {
	return r.ok.Load(), r.failed.Load(), int(r.lastPID.Load())
}

// Config returns the run's effective configuration (defaults applied).
func (r *Runner) Config() Config { return r.cfg }

// Answered returns how many OK responses carried X-Pid pid so far.
func (r *Runner) Answered(pid int) int64 {
	if c, ok := r.answers.Load(int32(pid)); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

// Stop stops issuing new requests, waits for in-flight ones (each bounded
// by RequestTimeout) and returns the result. It may be called repeatedly;
// Result.Ending tells whether the run was still going when it was first called.
func (r *Runner) Stop() *Result {
	r.cancel()
	return r.Wait()
}

// Wait waits for the run to end by itself and returns the result.
func (r *Runner) Wait() *Result {
	<-r.done
	r.once.Do(r.collect)
	return r.result
}

func (r *Runner) work(ctx context.Context, w *worker) {
	var conn *rawhttp.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	slowPath := fmt.Sprintf("/slow?ms=%d", r.cfg.SlowMS)
	for i := 1; ctx.Err() == nil; i++ {
		if r.issued.Add(1) > int64(r.cfg.MaxRequests) {
			r.exhausted.Store(true)
			break
		}
		rec := Record{Worker: uint16(w.id), KeepAlive: w.keepAlive}
		path := r.cfg.Path
		if r.cfg.SlowEvery > 0 && i%r.cfg.SlowEvery == 0 {
			path, rec.Slow = slowPath, true
		}
		t0 := time.Now()
		rec.Start = t0.Sub(r.start)
		deadline := t0.Add(r.cfg.RequestTimeout)

		var resp *rawhttp.Response
		var err error
		if conn != nil && !conn.Reusable() {
			conn.Close()
			conn = nil
		}
		if conn == nil {
			conn, err = rawhttp.Dial(r.cfg.Addr, r.cfg.RequestTimeout)
		} else {
			rec.Reused = true
		}
		if err == nil {
			var h http.Header
			if !w.keepAlive {
				h = rawhttp.CloseHeader()
			}
			resp, err = conn.Send(r.cfg.Method, path, h, r.cfg.Body, time.Until(deadline))
		}
		if !w.keepAlive && conn != nil {
			conn.Close()
			conn = nil
		}

		rec.Latency = time.Since(t0)
		rec.Kind = rawhttp.KindOf(resp, err)
		if resp != nil {
			rec.Status = uint16(resp.Status)
			rec.PID = int32(resp.PID())
		}
		w.records = append(w.records, rec)
		if rec.Kind == rawhttp.OK {
			c, ok := r.answers.Load(rec.PID)
			if !ok {
				c, _ = r.answers.LoadOrStore(rec.PID, new(atomic.Int64))
			}
			c.(*atomic.Int64).Add(1)
			r.ok.Add(1)
			r.lastPID.Store(int64(rec.PID))
			continue
		}
		r.failed.Add(1)
		if len(w.failures) < maxSamplesPerWorker {
			if err == nil {
				err = &rawhttp.StatusError{Code: resp.Status}
			}
			w.failures = append(w.failures, Failure{Record: rec, Err: err.Error()})
		}
	}
}

func (r *Runner) collect() {
	res := &Result{Config: r.cfg, Started: r.start, Elapsed: time.Since(r.start), Ending: r.ending()}
	n := 0
	for _, w := range r.workers {
		n += len(w.records)
	}
	res.Records = make([]Record, 0, n)
	for _, w := range r.workers {
		res.Records = append(res.Records, w.records...)
		res.failures = append(res.failures, w.failures...)
		w.records, w.failures = nil, nil
	}
	sort.SliceStable(res.Records, func(i, j int) bool { return res.Records[i].Start < res.Records[j].Start })
	sort.SliceStable(res.failures, func(i, j int) bool { return res.failures[i].Start < res.failures[j].Start })
	r.result = res
}

// ending says why the finished run ended: a bound reached first wins over a
// later Stop.
func (r *Runner) ending() Ending {
	switch {
	case r.exhausted.Load():
		return RequestsExhausted
	case errors.Is(r.ctx.Err(), context.DeadlineExceeded):
		return DurationElapsed // a later cancel does not change the context's error
	}
	return Stopped
}

// Result holds every request of a finished run, sorted by start time.
type Result struct {
	Config   Config        // the effective configuration (defaults applied)
	Started  time.Time     // wall-clock start of the run
	Elapsed  time.Duration // from start until the last worker finished
	Ending   Ending        // why the run ended
	Records  []Record      // one per request, sorted by Start
	failures []Failure     // error texts of the first failures of each worker
}

// Total returns the number of requests issued.
func (r *Result) Total() int { return len(r.Records) }

// Failures counts non-OK requests by kind. An empty map means no failures.
func (r *Result) Failures() map[rawhttp.Kind]int {
	m := map[rawhttp.Kind]int{}
	for _, rec := range r.Records {
		if rec.Kind != rawhttp.OK {
			m[rec.Kind]++
		}
	}
	return m
}

// FailureCount returns the number of non-OK requests.
func (r *Result) FailureCount() int {
	n := 0
	for _, rec := range r.Records {
		if rec.Kind != rawhttp.OK {
			n++
		}
	}
	return n
}

// FailureSamples returns the first n failures (by start time) with their
// error texts. Error texts are kept for up to the first 1000 failures of
// each worker, so n <= 1000 is exact.
func (r *Result) FailureSamples(n int) []Failure {
	if n > len(r.failures) {
		n = len(r.failures)
	}
	return append([]Failure(nil), r.failures[:max(n, 0)]...)
}

// PIDSeen describes one server process seen through X-Pid.
type PIDSeen struct {
	PID         int
	First, Last time.Duration // start times of the first and last request answered by PID
	Count       int           // requests answered (any status) by PID
}

// PIDs returns the distinct non-zero X-Pid values in first-seen order.
func (r *Result) PIDs() []PIDSeen {
	var out []PIDSeen
	idx := map[int32]int{}
	for _, rec := range r.Records {
		if rec.PID == 0 {
			continue
		}
		i, ok := idx[rec.PID]
		if !ok {
			i = len(out)
			idx[rec.PID] = i
			out = append(out, PIDSeen{PID: int(rec.PID), First: rec.Start})
		}
		out[i].Last = rec.Start
		out[i].Count++
	}
	return out
}

// Filter selects records; nil selects all.
type Filter func(Record) bool

// Window selects records that started in [from, to) relative to the run start.
func Window(from, to time.Duration) Filter {
	return func(r Record) bool { return r.Start >= from && r.Start < to }
}

// OnlyOK selects successful requests.
func OnlyOK(r Record) bool { return r.Kind == rawhttp.OK }

// Fast selects successful requests that were not sent to /slow.
func Fast(r Record) bool { return r.Kind == rawhttp.OK && !r.Slow }

// And selects records that every filter selects.
func And(fs ...Filter) Filter {
	return func(r Record) bool {
		for _, f := range fs {
			if f != nil && !f(r) {
				return false
			}
		}
		return true
	}
}

// Percentiles summarizes latencies (nearest-rank percentiles).
type Percentiles struct {
	N                   int
	P50, P99, P999, Max time.Duration
}

// String formats the percentiles for logs.
func (p Percentiles) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("n=%d p50=%v p99=%v p99.9=%v max=%v", p.N, r(p.P50), r(p.P99), r(p.P999), r(p.Max))
}

// Latencies returns latency percentiles over the records selected by f
// (all records if f is nil).
func (r *Result) Latencies(f Filter) Percentiles {
	var ls []time.Duration
	for _, rec := range r.Records {
		if f == nil || f(rec) {
			ls = append(ls, rec.Latency)
		}
	}
	return percentiles(ls)
}

func percentiles(ls []time.Duration) Percentiles {
	p := Percentiles{N: len(ls)}
	if len(ls) == 0 {
		return p
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i] < ls[j] })
	rank := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(ls)))) - 1
		return ls[max(0, min(i, len(ls)-1))]
	}
	p.P50, p.P99, p.P999, p.Max = rank(0.50), rank(0.99), rank(0.999), ls[len(ls)-1]
	return p
}

// Summary returns a multi-line human-readable summary for test logs.
func (r *Result) Summary() string {
	var b strings.Builder
	secs := r.Elapsed.Seconds()
	fmt.Fprintf(&b, "load %s: %d requests in %v (%.0f req/s), %d workers, keep-alive %.2f\n",
		r.Config.Addr, r.Total(), r.Elapsed.Round(time.Millisecond), float64(r.Total())/math.Max(secs, 1e-9),
		r.Config.Concurrency, r.Config.KeepAliveFraction)
	fails := r.Failures()
	if len(fails) == 0 {
		b.WriteString("  failures: none\n")
	} else {
		var parts []string
		for k := rawhttp.Kind(0); int(k) < rawhttp.NumKinds; k++ {
			if fails[k] > 0 {
				parts = append(parts, fmt.Sprintf("%v=%d", k, fails[k]))
			}
		}
		fmt.Fprintf(&b, "  failures: %s\n", strings.Join(parts, " "))
		for _, f := range r.FailureSamples(5) {
			fmt.Fprintf(&b, "    %v\n", f)
		}
	}
	for _, p := range r.PIDs() {
		fmt.Fprintf(&b, "  pid %d: %d responses, %v..%v\n", p.PID, p.Count,
			p.First.Round(time.Millisecond), p.Last.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  latency fast ok: %v\n", r.Latencies(Fast))
	fmt.Fprintf(&b, "  latency slow ok: %v", r.Latencies(And(OnlyOK, func(r Record) bool { return r.Slow })))
	return b.String()
}
