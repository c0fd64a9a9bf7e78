package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

func TestSpread(t *testing.T) {
	var vs []float64
	for i := 20; i >= 1; i-- {
		vs = append(vs, float64(i))
	}
	got := spread(vs)
	want := Spread{N: 20, Min: 1, P10: 2, Median: 10, P90: 18, Max: 20}
	if got != want {
		t.Errorf("spread = %+v, want %+v", got, want)
	}
	if vs[0] != 20 {
		t.Errorf("spread sorted its argument")
	}
	if got := spread([]float64{7}); got != (Spread{N: 1, Min: 7, P10: 7, Median: 7, P90: 7, Max: 7}) {
		t.Errorf("spread of one = %+v", got)
	}
	if got := spread(nil); got != (Spread{}) {
		t.Errorf("spread(nil) = %+v", got)
	}
}

func TestTallyProbe(t *testing.T) {
	t0 := time.Now()
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms*1000) * time.Microsecond) }
	old := map[int]bool{100: true}
	isNew := func(p int) bool { return !old[p] }
	samples := []probeSample{
		{Sent: at(-2), Done: at(-1.9), PID: 100, Kind: rawhttp.OK},  // warm-up
		{Sent: at(-0.2), Done: at(0.3), PID: 100, Kind: rawhttp.OK}, // sent before: not "old after"
		{Sent: at(1), Done: at(1.2), PID: 100, Kind: rawhttp.OK},
		{Sent: at(2), Done: at(2.5), Kind: rawhttp.EOF},
		{Sent: at(3), Done: at(9), PID: 200, Kind: rawhttp.OK}, // sent first, answered last
		{Sent: at(4), Done: at(4.1), PID: 100, Kind: rawhttp.OK},
		{Sent: at(5), Done: at(5.4), PID: 200, Kind: rawhttp.OK}, // the first answer from 200
		{Sent: at(6), Done: at(6.1), PID: 200, Kind: rawhttp.Status},
		{Sent: at(7), Done: at(7.1), Kind: rawhttp.OK}, // no X-Pid: neither old nor new
	}
	got := tallyProbe(samples, t0, isNew)
	want := probeTally{Requests: 9, Failures: map[string]int{"EOF": 1, "Status": 1}, First: 5400 * time.Microsecond,
		NewPID: 200, OldAfter: 2, OldLast: 4100 * time.Microsecond, Before: 2}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("tally = %+v\nwant    %+v", got, want)
	}
	none := tallyProbe(samples[:3], t0, isNew)
	if none.First >= 0 || none.NewPID != 0 || none.OldAfter != 1 {
		t.Errorf("without a new PID: %+v", none)
	}
}

// pidServer answers GET / with the X-Pid it is told, as the servers do.
func pidServer(t *testing.T, pid *atomic.Int64, block <-chan struct{}) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if block != nil {
			<-block
		}
		w.Header().Set("X-Pid", strconv.FormatInt(pid.Load(), 10))
		w.Write([]byte("ok\n"))
	}))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// TestPacedProbeFindsNewPID: the probe stops at the first answer from a new PID and
// that answer comes after the switch.
func TestPacedProbeFindsNewPID(t *testing.T) {
	var pid atomic.Int64
	pid.Store(100)
	addr := pidServer(t, &pid, nil)
	isNew := func(p int) bool { return p != 100 }
	p := newPacedProbe(addr, 200*time.Microsecond, 2*time.Second, 16, 100000, isNew)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { p.run(stop, time.Now().Add(10*time.Second)); close(done) }()
	time.Sleep(30 * time.Millisecond)
	switched := time.Now()
	pid.Store(200)
	select {
	case <-p.found:
	case <-time.After(10 * time.Second):
		t.Fatal("the probe did not report the new PID")
	}
	close(stop)
	<-done
	samples, _ := p.result()
	tally := tallyProbe(samples, switched, isNew)
	if tally.NewPID != 200 || tally.First < 0 || tally.Before == 0 || len(tally.Failures) != 0 {
		t.Errorf("tally %+v", tally)
	}
	for i := 1; i < len(samples); i++ {
		if samples[i].Sent.Before(samples[i-1].Sent) {
			t.Fatalf("samples not in the order sent at %d", i)
		}
	}
	// Stopped at the first new answer: at most the requests in flight then (16)
	// came after it.
	after := 0
	for _, s := range samples {
		if s.Sent.After(switched.Add(tally.First)) {
			after++
		}
	}
	if after > 16 {
		t.Errorf("%d requests sent after the new PID answered", after)
	}
}

// TestPacedProbeBounds: the probe sends at most max requests and never has more
// than maxInFlight waiting; the slots it could not use are counted as skipped.
func TestPacedProbeBounds(t *testing.T) {
	var pid atomic.Int64
	pid.Store(100)
	never := func(int) bool { return false }

	p := newPacedProbe(pidServer(t, &pid, nil), 200*time.Microsecond, 2*time.Second, 8, 25, never)
	p.run(make(chan struct{}), time.Now().Add(10*time.Second)) // returns after max requests
	if samples, _ := p.result(); len(samples) != 25 {
		t.Errorf("max 25: %d requests", len(samples))
	}

	release := make(chan struct{})
	p = newPacedProbe(pidServer(t, &pid, release), 200*time.Microsecond, 5*time.Second, 2, 1000, never)
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	p.run(make(chan struct{}), time.Now().Add(50*time.Millisecond))
	samples, skipped := p.result()
	if len(samples) != 2 || skipped < 10 {
		t.Errorf("max in flight 2 against a server that answers after 100 ms: %d requests, %d skipped", len(samples), skipped)
	}
	for _, s := range samples {
		if s.Kind != rawhttp.OK || s.PID != 100 {
			t.Errorf("sample %+v", s)
		}
	}
}

func TestSwitchMarkdown(t *testing.T) {
	runs := []switchRun{
		{Round: 1, Index: 1, OldPID: 1, NewPID: 2, SwitchMS: 20, CommandMS: 0.1, ExitMS: 30, Requests: 100, Failures: map[string]int{"EOF": 2}},
		{Round: 1, Index: 2, OldPID: 2, NewPID: 3, SwitchMS: 10, CommandMS: 0.1, ExitMS: 25, Requests: 90},
		{Round: 1, Index: 3, OldPID: 3, SwitchMS: -1, CommandMS: 0.1, ExitMS: -1, Requests: 5000, Err: "no answer"},
	}
	a := switchApproach{Name: "x", Label: "X <1>"}
	res := switchResultOf(a, runs, []string{"0.50 0.40 0.30 → 1.20 0.50 0.30"}, []string{"round 1: boom"})
	if res.SwitchMS.N != 2 || res.SwitchMS.Median != 10 || res.ExitMS.Max != 30 || res.CommandMS.N != 3 ||
		res.Requests != 5190 || res.Failures["EOF"] != 2 {
		t.Errorf("result %+v", res)
	}
	md := switchMarkdown(&SwitchReport{RunHeader: RunHeader{Command: "cd tests/bench && go run . -switch"}, Config: SwitchConfig{EveryUS: 200, Rounds: 1, Upgrades: 3},
		Approaches: []SwitchResult{res, {Label: "Y", Error: "not run: no root"}}})
	for _, want := range []string{
		"| X <1> ⚠ | 2 | **10.0 ms** | 10.0 ms | 20.0 ms | 10.0 ms | 20.0 ms | 0.10 ms | 25.0 ms | 5190 (2; 100%) | 0.50–1.20 |",
		"| Y | 0 | not measured: not run: no root |",
		"X <1>: 2 probe requests failed (EOF 2).",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestCheckSwitchOptions(t *testing.T) {
	ok := switchOptions{approaches: "handover-usr2,tableflip", rounds: 3, upgrades: 20, every: 200 * time.Microsecond,
		lead: 20 * time.Millisecond, gap: 100 * time.Millisecond, timeout: 10 * time.Second, reqTimeout: 2 * time.Second, maxInFlight: 64}
	if err := checkSwitchOptions(ok); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
	dir := t.TempDir()
	for _, b := range []string{"handover-demo", "handover", "tableflip", "gracehttp", "endless"} {
		if err := os.WriteFile(filepath.Join(dir, b), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v := ok
	v.approaches, v.variants = "handover-usr2,handover-usr2@static", map[string]string{"static": dir}
	if err := checkSwitchOptions(v); err != nil {
		t.Errorf("a variant refused: %v", err)
	}
	if a, found := v.approach("handover-usr2@static"); !found || a.Label != "handover: SIGUSR2 (no systemd) [static]" {
		t.Errorf("variant approach %+v %v", a, found)
	}
	for _, bad := range []func(o *switchOptions){
		func(o *switchOptions) { o.approaches = "handover-usr2,nope" },
		func(o *switchOptions) { o.approaches = "handover-usr2@nope" },
		func(o *switchOptions) { o.variants = map[string]string{"x": "relative/dir"} },
		func(o *switchOptions) { o.variants = map[string]string{"x": t.TempDir()} },
		func(o *switchOptions) { o.rounds = 0 },
		func(o *switchOptions) { o.every = time.Microsecond },
		func(o *switchOptions) { o.gap = -1 },
	} {
		o := ok
		bad(&o)
		if err := checkSwitchOptions(o); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
}

func TestSwitchApproaches(t *testing.T) {
	seen := map[string]bool{}
	for _, a := range switchApproaches {
		if seen[a.Name] || a.Name == "" || a.Label == "" || a.Trigger == "" || a.new == nil {
			t.Errorf("approach %+v: duplicate or incomplete", a)
		}
		seen[a.Name] = true
	}
	for _, n := range []string{"handover-usr2", "handover-run", "handover-reload", "handover-ctl", "tableflip", "gracehttp", "endless"} {
		if !seen[n] {
			t.Errorf("no switch approach %s", n)
		}
	}
}
