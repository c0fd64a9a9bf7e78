package main

import (
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/stats"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// pacedProbe is the switch probe: it sends GET / on a new connection every `every`
// (raw HTTP/1.1, Connection: close, never retried) and records who answered, until
// it is stopped, its deadline passes or it has sent max requests. A slot is
// skipped (and counted) when maxInFlight requests are still waiting for their
// answers, or when the pacer itself fell behind by more than a period: the probe
// never sends a burst to catch up.
type pacedProbe struct {
	addr        string
	every       time.Duration
	timeout     time.Duration // bound on one request, dial included
	maxInFlight int
	max         int
	// isNew says whether an X-Pid belongs to the new generation; the first OK
	// answer from one closes found.
	isNew func(pid int) bool

	found     chan struct{}
	foundOnce sync.Once

	mu      sync.Mutex
	samples []probeSample
	skipped int
}

// probeSample is one request of the probe.
type probeSample struct {
	Sent time.Time // just before the dial
	Done time.Time // the response read in full, or the error
	PID  int       // X-Pid of a response, 0 without one
	Kind rawhttp.Kind
}

func newPacedProbe(addr string, every, timeout time.Duration, maxInFlight, max int, isNew func(int) bool) *pacedProbe {
	return &pacedProbe{addr: addr, every: every, timeout: timeout, maxInFlight: maxInFlight, max: max, isNew: isNew,
		found: make(chan struct{})}
}

// run paces the requests until stop is closed, deadline passes or max requests
// have been sent, then waits for the requests in flight (each bounded by the
// probe's timeout).
func (p *pacedProbe) run(stop <-chan struct{}, deadline time.Time) {
	sem := make(chan struct{}, p.maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	// The runtime's timers sleep at least a millisecond when nothing else wakes
	// the scheduler; nanosleep on a thread of its own keeps the pace (within the
	// kernel's timer slack) without spinning.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	next := time.Now()
	for sent := 0; sent < p.max; {
		select {
		case <-stop:
			return
		default:
		}
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		if d := next.Sub(now); d > 0 {
			ts := unix.NsecToTimespec(int64(d))
			unix.Nanosleep(&ts, nil)
			continue
		}
		if late := now.Sub(next); late >= p.every {
			n := int(late / p.every)
			p.skip(n)
			next = next.Add(time.Duration(n) * p.every)
		}
		next = next.Add(p.every)
		select {
		case sem <- struct{}{}:
		default:
			p.skip(1)
			continue
		}
		sent++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s := probeSample{Sent: time.Now()}
			resp, err := rawhttp.Get(p.addr, "/", p.timeout)
			s.Done, s.Kind = time.Now(), rawhttp.KindOf(resp, err)
			if resp != nil {
				s.PID = resp.PID()
			}
			p.record(s)
		}()
	}
}

func (p *pacedProbe) skip(n int) {
	p.mu.Lock()
	p.skipped += n
	p.mu.Unlock()
}

func (p *pacedProbe) record(s probeSample) {
	p.mu.Lock()
	p.samples = append(p.samples, s)
	p.mu.Unlock()
	if s.Kind == rawhttp.OK && s.PID != 0 && p.isNew(s.PID) {
		p.foundOnce.Do(func() { close(p.found) })
	}
}

// result returns the samples, in the order their requests were sent, and the
// skipped slots. Call it after run has returned.
func (p *pacedProbe) result() ([]probeSample, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := slices.Clone(p.samples)
	slices.SortStableFunc(s, func(a, b probeSample) int { return a.Sent.Compare(b.Sent) })
	return s, p.skipped
}

// probeTally is what the probe saw around one switch.
type probeTally struct {
	Requests int            // sent
	Failures map[string]int // by kind (Refused, Reset, EOF, Timeout, Status, Other)
	// First is the time from the trigger to the first response (read in full) from
	// a new PID; negative when none came.
	First  time.Duration
	NewPID int
	// OldAfter counts answers from an old PID to requests sent after the trigger;
	// OldLast is the trigger to the last such answer (the old generation still
	// accepting), 0 if none.
	OldAfter int
	OldLast  time.Duration
	// Before counts answers to requests sent before the trigger (the warm-up).
	Before int
}

// tallyProbe summarizes samples around a trigger at t0: isNew tells a new
// generation's PID from an old one's.
func tallyProbe(samples []probeSample, t0 time.Time, isNew func(int) bool) probeTally {
	t := probeTally{Requests: len(samples), Failures: map[string]int{}, First: -1}
	for _, s := range samples {
		if s.Kind != rawhttp.OK {
			t.Failures[s.Kind.String()]++
			continue
		}
		if s.Sent.Before(t0) {
			t.Before++
		}
		switch {
		case s.PID == 0:
		case isNew(s.PID):
			if d := s.Done.Sub(t0); t.First < 0 || d < t.First {
				t.First, t.NewPID = d, s.PID
			}
		case !s.Sent.Before(t0):
			t.OldAfter++
			t.OldLast = max(t.OldLast, s.Done.Sub(t0))
		}
	}
	return t
}

// Spread summarizes values measured once per switch, in milliseconds
// (nearest-rank percentiles).
type Spread struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	P10    float64 `json:"p10"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Max    float64 `json:"max"`
}

// spread summarizes vs (not modified).
func spread(vs []float64) Spread {
	s := Spread{N: len(vs)}
	if len(vs) == 0 {
		return s
	}
	vs = stats.Sorted(vs)
	s.Min, s.P10, s.Median, s.P90, s.Max = vs[0], stats.Quantile(vs, 0.1), stats.Quantile(vs, 0.5), stats.Quantile(vs, 0.9), vs[len(vs)-1]
	return s
}
