package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

func TestPct(t *testing.T) {
	var ls []time.Duration
	for i := 1; i <= 1000; i++ {
		ls = append(ls, time.Duration(1001-i)*time.Millisecond)
	}
	p := pct(ls)
	want := Pct{N: 1000, P50: 500, P99: 990, P999: 999, Max: 1000}
	if p != want {
		t.Errorf("pct = %+v, want %+v", p, want)
	}
	if p := pct(nil); p != (Pct{}) {
		t.Errorf("pct(nil) = %+v", p)
	}
	d := dist([]float64{5, 1, 3})
	if d != (Dist{N: 3, Min: 1, Median: 3, P90: 5, Max: 5}) {
		t.Errorf("dist = %+v", d)
	}
}

// synthetic builds a load result of fast requests every 10 ms for 10 s, answered by
// PID 100 until 4 s and by PID 200 from 4.05 s, with latencies of 1 ms, and 5 ms
// (plus one failure) between 4 s and 4.5 s.
func synthetic() (*load.Result, []restartRun) {
	start := time.Now()
	var recs []load.Record
	for at := time.Duration(0); at < 10*time.Second; at += 10 * time.Millisecond {
		r := load.Record{Start: at, Latency: time.Millisecond, PID: 100, Kind: rawhttp.OK, Status: 200}
		if at >= 4050*time.Millisecond {
			r.PID = 200
		}
		if at >= 4*time.Second && at < 4500*time.Millisecond {
			r.Latency = 5 * time.Millisecond
		}
		if at == 4200*time.Millisecond {
			r.Kind, r.Status, r.PID, r.Latency = rawhttp.Reset, 0, 0, 2*time.Millisecond
		}
		recs = append(recs, r)
	}
	lr := &load.Result{Started: start, Elapsed: 10 * time.Second, Records: recs}
	rr := restartRun{
		signal:  start.Add(4 * time.Second),
		oldPID:  100,
		newPID:  200,
		probeAt: start.Add(4060 * time.Millisecond), // the load saw PID 200 at 4.051 s
		exitAt:  start.Add(4300 * time.Millisecond),
		cmdDur:  time.Millisecond,
		probeN:  7,
	}
	rr.completed = rr.exitAt
	return lr, []restartRun{rr}
}

func TestAnalyze(t *testing.T) {
	lr, runs := synthetic()
	var res ApproachResult
	analyze(&res, lr, runs, options{window: 500 * time.Millisecond})
	if res.Requests != 1000 || res.Failed != 1 || res.Failures["Reset"] != 1 || res.FailedInWindow != 1 {
		t.Errorf("requests %d failed %d %v in windows %d", res.Requests, res.Failed, res.Failures, res.FailedInWindow)
	}
	if res.DistinctPIDs != 2 || res.RestartsDone != 1 {
		t.Errorf("PIDs %d, restarts done %d", res.DistinctPIDs, res.RestartsDone)
	}
	r := res.Restarts[0]
	// The load's first answer from 200 ended at 4.050 s + 5 ms, before the probe's.
	if r.LoadMS != 55 || r.ProbeMS != 60 || r.HandoverMS != 55 || r.DrainMS != 300 {
		t.Errorf("restart %+v", r)
	}
	// Window: 4 s to 4.3 s (exit) + 500 ms.
	if r.AtMS != 4000 || r.WindowEndMS != 4800 || r.Requests != 80 || r.Failed != 1 || r.P99 != 5 {
		t.Errorf("window %+v", r)
	}
	L := res.Latency
	if L.Windows.N != 79 || L.Steady.N != 920 || L.Steady.P99 != 1 || L.Windows.P99 != 5 || L.WindowP99Ratio != 5 || L.WindowsOver2x != 1 {
		t.Errorf("latency %+v", L)
	}
	if res.HandoverMS.Median != 55 || res.DrainMS.Max != 300 || res.ProbeRequests != 7 {
		t.Errorf("handover %+v drain %+v probes %d", res.HandoverMS, res.DrainMS, res.ProbeRequests)
	}
	s := res.Series
	if s.BinMS != 100 || len(s.N) != 101 || s.N[0] != 10 || s.Fail[42] != 1 || s.N[42] != 9 || s.Max[41] != 5 {
		t.Errorf("series: bin %v, %d bins, n[0]=%d fail[42]=%d n[42]=%d max[41]=%v", s.BinMS, len(s.N), s.N[0], s.Fail[42], s.N[42], s.Max[41])
	}
}

func sampleReport() *Report {
	lr, runs := synthetic()
	a := ApproachResult{Name: "handover-usr2", Label: "handover: SIGUSR2 <&>", RestartsAsked: 1}
	analyze(&a, lr, runs, options{window: 500 * time.Millisecond})
	b := ApproachResult{Name: "naive", Label: "naive", RestartsAsked: 1, Error: "not run: no root"}
	return &Report{RunHeader: RunHeader{Command: "cd tests/bench && go run .", Machine: Machine{CPUs: 2, Modules: map[string]string{"github.com/cloudflare/tableflip": "v1.2.3"}}},
		Config: Config{Restarts: 1, Concurrency: 16, KeepAlive: 0.5, SlowEvery: 10, SlowMS: 300}, Approaches: []ApproachResult{a, b}}
}

func TestSVGWellFormed(t *testing.T) {
	out := svg(sampleReport())
	dec := xml.NewDecoder(strings.NewReader(out))
	elems := map[string]int{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			elems[se.Name.Local]++
		}
	}
	if elems["svg"] != 1 || elems["path"] < 2 || !strings.Contains(out, "handover: SIGUSR2 &lt;&amp;&gt;") {
		t.Errorf("unexpected picture: %v", elems)
	}
	if strings.Contains(out, ">naive<") {
		t.Errorf("an approach that did not run got a panel")
	}
}

func TestEncodeJSON(t *testing.T) {
	rep := sampleReport()
	b, err := encodeJSON(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*rep, back) {
		t.Errorf("the JSON does not read back the same")
	}
	if !strings.Contains(string(b), `"n": [10,10,`) {
		t.Errorf("numbers arrays are not on one line:\n%.600s", b)
	}
}

func TestMarkdown(t *testing.T) {
	md := markdown(sampleReport())
	for _, want := range []string{
		"| handover: SIGUSR2 <&> | 1/1 (2) | 1000 | **1** | 0 / 1 / 0 / 0 / 0 / 0 | 1.00 ms | 5.00 ms (5.0×) |",
		"| naive | not measured: not run: no root |",
		"**missed**: 1 failed, 1/1 restarts",
		"github.com/cloudflare/tableflip v1.2.3",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestAdaptUnit(t *testing.T) {
	in := "[Unit]\nDescription=x\n\n[Service]\nExecStart=/usr/local/bin/handover-demo -listen 127.0.0.1:8080\n"
	got := adaptUnit(in, "/b", "127.0.0.1:9", "/l.log", startLimitOff)
	want := "[Unit]\nDefaultDependencies=no\nStartLimitIntervalSec=0\nDescription=x\n\n[Service]\n" +
		"StandardOutput=append:/l.log\nStandardError=append:/l.log\nExecStart=/b/handover-demo -listen 127.0.0.1:9\n"
	if got != want {
		t.Errorf("adaptUnit:\n%s\nwant:\n%s", got, want)
	}
}

func TestCmdTB(t *testing.T) {
	var logs []string
	tb := newCmdTB("x", func(f string, a ...any) { logs = append(logs, f) })
	var order []int
	tb.Cleanup(func() { order = append(order, 1) })
	tb.Cleanup(func() { order = append(order, 2) })
	tb.Errorf("boom")
	if !tb.Failed() || tb.Name() != "x" {
		t.Errorf("Failed %v Name %q", tb.Failed(), tb.Name())
	}
	tb.runCleanups()
	tb.runCleanups()
	if !reflect.DeepEqual(order, []int{2, 1}) {
		t.Errorf("cleanups ran %v", order)
	}
	defer func() {
		if _, ok := recover().(tbAbort); !ok {
			t.Errorf("Fatalf did not panic with tbAbort")
		}
	}()
	tb.Fatalf("stop")
}

func TestResultMergesRounds(t *testing.T) {
	var segs []segment
	for i := 0; i < 2; i++ {
		lr, runs := synthetic()
		segs = append(segs, segment{lr: lr, runs: runs, loadavg: "0.1 → 0.2", leaks: Leaks{FDFirst: 8, FDLast: 8 + i}, samples: []string{"x"}})
	}
	segs = append(segs, segment{err: "boom"})
	a := approach{Name: "n", Label: "l"}
	res := result(a, segs, options{restarts: 2, window: 500 * time.Millisecond})
	if res.Requests != 2000 || res.Failed != 2 || res.DistinctPIDs != 4 || res.RestartsDone != 2 {
		t.Errorf("requests %d failed %d PIDs %d restarts %d", res.Requests, res.Failed, res.DistinctPIDs, res.RestartsDone)
	}
	if !reflect.DeepEqual(res.Segments, []float64{0, 10000}) || res.Restarts[1].AtMS != 14000 || res.Restarts[1].HandoverMS != 55 {
		t.Errorf("rounds at %v, second restart %+v", res.Segments, res.Restarts[1])
	}
	if res.Leaks.FDFirst != 8 || res.Leaks.FDLast != 9 || res.Leaks.FDChanged != 1 || len(res.LoadAvg) != 3 {
		t.Errorf("leaks %+v loadavg %v", res.Leaks, res.LoadAvg)
	}
	if res.Error != "round 3: boom" || len(res.FailureSamples) != 2 || res.ElapsedS != 20 {
		t.Errorf("error %q samples %v elapsed %v", res.Error, res.FailureSamples, res.ElapsedS)
	}
}
