package load

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

func TestRunAllOK(t *testing.T) {
	var slowHits, newConns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			if r.URL.Query().Get("ms") != "1" {
				t.Errorf("slow request %q", r.URL)
			}
			slowHits.Add(1)
		}
		w.Header().Set("X-Pid", "1234")
		io.WriteString(w, "ok\n")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			newConns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	res, err := Run(context.Background(), Config{
		Addr: srv.Listener.Addr().String(), Concurrency: 4, MaxRequests: 300, SlowMS: 1, Duration: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Summary())
	if res.Total() != 300 || res.FailureCount() != 0 || len(res.Failures()) != 0 {
		t.Fatalf("total=%d failures=%v", res.Total(), res.Failures())
	}
	var ka, nonKA, slow, reused int64
	for i, rec := range res.Records {
		if i > 0 && rec.Start < res.Records[i-1].Start {
			t.Fatal("records not sorted by start")
		}
		if rec.Status != 200 || rec.PID != 1234 || rec.Latency <= 0 {
			t.Fatalf("bad record %+v", rec)
		}
		if rec.KeepAlive {
			ka++
		} else {
			nonKA++
		}
		if rec.Slow {
			slow++
		}
		if rec.Reused {
			reused++
			if !rec.KeepAlive {
				t.Fatalf("non-keep-alive record reused a connection: %+v", rec)
			}
		}
	}
	if ka == 0 || nonKA == 0 || reused == 0 {
		t.Fatalf("ka=%d nonKA=%d reused=%d", ka, nonKA, reused)
	}
	if slow != slowHits.Load() || slow < 300/10-4 {
		t.Fatalf("slow records %d, server saw %d", slow, slowHits.Load())
	}
	// 2 keep-alive workers dial once each; the others dial per request.
	if got, want := newConns.Load(), nonKA+2; got != want {
		t.Fatalf("server saw %d connections, want %d", got, want)
	}
	pids := res.PIDs()
	if len(pids) != 1 || pids[0].PID != 1234 || pids[0].Count != 300 {
		t.Fatalf("PIDs = %+v", pids)
	}
}

// dropServer answers requests on keep-alive connections but drops (closes
// without answering) every 5th request it reads. It reports how many it dropped.
func dropServer(t *testing.T) (addr string, dropped func() int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var seen, drops atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					closeReq := false
					for { // request head
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						if strings.EqualFold(strings.TrimSpace(line), "connection: close") {
							closeReq = true
						}
						if line == "\r\n" {
							break
						}
					}
					if seen.Add(1)%5 == 0 {
						drops.Add(1)
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Pid: 99\r\nContent-Length: 2\r\n\r\nok")
					if closeReq {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), drops.Load
}

// TestMethodAndBody: Config.Method and Body go with every request, slow ones too.
func TestMethodAndBody(t *testing.T) {
	var bad atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, err := io.ReadAll(r.Body); err != nil || r.Method != http.MethodPost || string(b) != "v=1" {
			bad.Add(1)
		}
		io.WriteString(w, "ok\n")
	}))
	defer srv.Close()
	res, err := Run(context.Background(), Config{
		Addr: srv.Listener.Addr().String(), Concurrency: 2, MaxRequests: 40, SlowEvery: 4, SlowMS: 1,
		Duration: 20 * time.Second, Method: http.MethodPost, Body: []byte("v=1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Total() != 40 || res.FailureCount() != 0 || bad.Load() != 0 {
		t.Fatalf("total=%d failures=%v, %d requests not POST v=1", res.Total(), res.Failures(), bad.Load())
	}
}

func TestFailuresCountedNotRetried(t *testing.T) {
	addr, dropped := dropServer(t)
	res, err := Run(context.Background(), Config{Addr: addr, Concurrency: 4, MaxRequests: 200, SlowEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Summary())
	f := res.Failures()
	if res.Total() != 200 || res.FailureCount() == 0 {
		t.Fatalf("total=%d failures=%v", res.Total(), f)
	}
	// Every dropped request is exactly one failure: nothing was retried.
	if got := int64(f[rawhttp.EOF] + f[rawhttp.Reset]); got != dropped() || got != int64(res.FailureCount()) {
		t.Fatalf("failures %v, server dropped %d", f, dropped())
	}
	s := res.FailureSamples(3)
	if len(s) != 3 || s[0].Err == "" || s[0].Start > s[1].Start {
		t.Fatalf("samples %v", s)
	}
}

func TestStatusFailures(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	res, err := Run(context.Background(), Config{Addr: srv.Listener.Addr().String(), Concurrency: 2, MaxRequests: 40, SlowEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	slow := 0
	for _, rec := range res.Records {
		if rec.Slow {
			slow++
		}
	}
	if f := res.Failures(); slow < 8 || len(f) != 1 || f[rawhttp.Status] != slow {
		t.Fatalf("failures %v, want Status=%d (the slow requests)", f, slow)
	}
	if s := res.FailureSamples(1); len(s) != 1 || s[0].Status != 503 || !strings.Contains(s[0].Err, "503") {
		t.Fatalf("samples %v", s)
	}
}

func TestRefusedBoundedByCount(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res, err := Run(context.Background(), Config{Addr: addr, MaxRequests: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.Total() != 100 || res.Failures()[rawhttp.Refused] != 100 {
		t.Fatalf("total=%d failures=%v", res.Total(), res.Failures())
	}
}

func TestBoundedByDuration(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	start := time.Now()
	res, err := Run(context.Background(), Config{
		Addr: srv.Listener.Addr().String(), Concurrency: 2, MaxRequests: MaxRequestsLimit,
		Duration: 200 * time.Millisecond, SlowMS: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 200*time.Millisecond+DefaultRequestTimeout {
		t.Fatalf("run took %v", d)
	}
	if res.Total() == 0 || res.Total() >= MaxRequestsLimit || res.FailureCount() != 0 {
		t.Fatalf("total=%d failures=%v", res.Total(), res.Failures())
	}
	if res.Ending != DurationElapsed {
		t.Fatalf("Ending = %v, want %v", res.Ending, DurationElapsed)
	}
}

// TestEndingOutlivesStop: a run that ran out (of time or of requests) says so even
// when the test calls Stop afterwards: the load did not cover the test's end.
func TestEndingOutlivesStop(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	r, err := Start(Config{Addr: addr, Concurrency: 2, MaxRequests: 30, Duration: time.Minute, SlowMS: 1})
	if err != nil {
		t.Fatal(err)
	}
	<-r.Done()
	if res := r.Stop(); res.Ending != RequestsExhausted || res.Total() != 30 {
		t.Fatalf("Ending = %v, total %d; want %v, 30", res.Ending, res.Total(), RequestsExhausted)
	}
	r, err = Start(Config{Addr: addr, Concurrency: 2, MaxRequests: MaxRequestsLimit, Duration: 100 * time.Millisecond, SlowMS: 1})
	if err != nil {
		t.Fatal(err)
	}
	<-r.Done()
	if res := r.Stop(); res.Ending != DurationElapsed {
		t.Fatalf("Ending = %v, want %v", res.Ending, DurationElapsed)
	}
}

func TestStartStop(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", "5")
	}))
	defer srv.Close()
	r, err := Start(Config{Addr: srv.Listener.Addr().String(), Concurrency: 3, MaxRequests: MaxRequestsLimit, Duration: time.Minute, SlowMS: 1})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ok, _, _ := r.Progress(); ok < 50; ok, _, _ = r.Progress() {
		if time.Now().After(deadline) {
			r.Stop()
			t.Fatalf("only %d requests after 10s", ok)
		}
		time.Sleep(time.Millisecond)
	}
	if _, _, pid := r.Progress(); pid != 5 {
		t.Fatalf("lastPID = %d", pid)
	}
	if n := r.Answered(5); n < 50 || r.Answered(6) != 0 {
		t.Fatalf("Answered(5) = %d, Answered(6) = %d", n, r.Answered(6))
	}
	stopAt := time.Now()
	res := r.Stop()
	if d := time.Since(stopAt); d > DefaultRequestTimeout {
		t.Fatalf("Stop took %v", d)
	}
	if res.Total() < 50 || res.FailureCount() != 0 || r.Stop() != res {
		t.Fatalf("total=%d failures=%v", res.Total(), res.Failures())
	}
	if res.Ending != Stopped {
		t.Fatalf("Ending = %v, want %v", res.Ending, Stopped)
	}
	select {
	case <-r.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{Addr: "192.0.2.1:80", MaxRequests: 1},
		{Addr: "example.com:80", MaxRequests: 1},
		{Addr: "127.0.0.1:80"},
		{Addr: "127.0.0.1:80", MaxRequests: MaxRequestsLimit + 1},
	} {
		if _, err := Start(c); err == nil {
			t.Errorf("Start(%+v) accepted", c)
		}
	}
}

func TestLatenciesAndPIDs(t *testing.T) {
	res := &Result{}
	for i := 1; i <= 1000; i++ {
		pid := int32(10)
		if i > 600 {
			pid = 20
		}
		res.Records = append(res.Records, Record{
			Start: time.Duration(i) * time.Millisecond, Latency: time.Duration(i) * time.Millisecond, PID: pid, Status: 200,
		})
	}
	p := res.Latencies(nil)
	if p.N != 1000 || p.P50 != 500*time.Millisecond || p.P99 != 990*time.Millisecond ||
		p.P999 != 999*time.Millisecond || p.Max != time.Second {
		t.Fatalf("percentiles %v", p)
	}
	if w := res.Latencies(Window(100*time.Millisecond, 200*time.Millisecond)); w.N != 100 || w.Max != 199*time.Millisecond {
		t.Fatalf("window %v", w)
	}
	pids := res.PIDs()
	if len(pids) != 2 || pids[0].PID != 10 || pids[0].Last != 600*time.Millisecond || pids[1].First != 601*time.Millisecond || pids[1].Count != 400 {
		t.Fatalf("PIDs %+v", pids)
	}
	if (Percentiles{}).String() == "" || res.Summary() == "" {
		t.Fatal("empty strings")
	}
}
