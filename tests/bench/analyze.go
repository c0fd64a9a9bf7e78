package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/stats"
	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// analyze fills res from the load's records and the restarts.
func analyze(res *ApproachResult, lr *load.Result, runs []restartRun, o options) {
	recs := lr.Records
	res.Requests = len(recs)
	res.ElapsedS = round(lr.Elapsed.Seconds(), 3)
	if lr.Elapsed > 0 {
		res.RequestsPerS = round(float64(len(recs))/lr.Elapsed.Seconds(), 1)
	}
	res.DistinctPIDs = len(lr.PIDs())
	res.Failures = map[string]int{}
	for k, n := range lr.Failures() {
		res.Failures[k.String()] = n
		res.Failed += n
	}
	for _, f := range lr.FailureSamples(10) {
		res.FailureSamples = append(res.FailureSamples, f.String())
	}

	// Each restart: its times, and its window.
	type window struct{ from, to time.Duration }
	var windows []window
	var handover, drain, command []float64
	probeFails := map[string]int{}
	for _, rr := range runs {
		sig := rr.signal.Sub(lr.Started)
		r := RestartResult{AtMS: ms(sig), OldPID: rr.oldPID, NewPID: rr.newPID, HandoverMS: -1, ProbeMS: -1, LoadMS: -1, DrainMS: -1,
			CommandMS: ms(rr.cmdDur)}
		if rr.err != nil {
			r.Err = rr.err.Error()
		}
		res.ProbeRequests += rr.probeN
		for k, n := range rr.probeFail {
			probeFails[k.String()] += n
		}
		command = append(command, r.CommandMS)
		var firstNew time.Duration = -1
		if rr.newPID != 0 {
			res.RestartsDone++
			r.ProbeMS = ms(rr.probeAt.Sub(rr.signal))
			firstNew = rr.probeAt.Sub(lr.Started)
			// The load's first answer from the new PID.
			for _, rec := range recs {
				if int(rec.PID) == rr.newPID && rec.Kind == rawhttp.OK {
					if end := rec.Start + rec.Latency; end >= sig && (r.LoadMS < 0 || ms(end-sig) < r.LoadMS) {
						r.LoadMS = ms(end - sig)
					}
				}
			}
			r.HandoverMS = r.ProbeMS
			if r.LoadMS >= 0 && r.LoadMS < r.HandoverMS {
				r.HandoverMS = r.LoadMS
				firstNew = sig + time.Duration(r.LoadMS*float64(time.Millisecond))
			}
			handover = append(handover, r.HandoverMS)
		}
		end := firstNew
		if !rr.exitAt.IsZero() {
			d := rr.exitAt.Sub(rr.signal)
			r.DrainMS = ms(d)
			drain = append(drain, r.DrainMS)
			end = max(end, sig+d)
		}
		if end < 0 {
			end = rr.completed.Sub(lr.Started)
		}
		w := window{sig, end + o.window}
		r.WindowEndMS = ms(w.to)
		windows = append(windows, w)
		// The window's own requests.
		lo := sort.Search(len(recs), func(i int) bool { return recs[i].Start >= w.from })
		hi := sort.Search(len(recs), func(i int) bool { return recs[i].Start >= w.to })
		var lat []time.Duration
		for _, rec := range recs[lo:hi] {
			r.Requests++
			if rec.Kind != rawhttp.OK {
				r.Failed++
			} else if !rec.Slow {
				lat = append(lat, rec.Latency)
			}
		}
		r.P99 = pct(lat).P99
		res.Restarts = append(res.Restarts, r)
	}
	if len(probeFails) > 0 {
		res.ProbeFailures = probeFails
	}
	res.HandoverMS, res.DrainMS, res.CommandMS = dist(handover), dist(drain), dist(command)

	// Windows may overlap (a restart that took longer than the interval): merge
	// them to tell steady requests from the others.
	merged := slices.Clone(windows)
	sort.Slice(merged, func(i, j int) bool { return merged[i].from < merged[j].from })
	var spans []window
	for _, w := range merged {
		if n := len(spans); n > 0 && w.from <= spans[n-1].to {
			spans[n-1].to = max(spans[n-1].to, w.to)
			continue
		}
		spans = append(spans, w)
	}
	var all, steady, inWin, slow []time.Duration
	var maxAny time.Duration
	inside := 0
	j := 0
	for _, rec := range recs {
		for j < len(spans) && spans[j].to <= rec.Start {
			j++
		}
		win := j < len(spans) && rec.Start >= spans[j].from
		if win {
			inside++
			if rec.Kind != rawhttp.OK {
				res.FailedInWindow++
			}
		}
		maxAny = max(maxAny, rec.Latency)
		switch {
		case rec.Kind != rawhttp.OK:
		case rec.Slow:
			slow = append(slow, rec.Latency)
		default:
			all = append(all, rec.Latency)
			if win {
				inWin = append(inWin, rec.Latency)
			} else {
				steady = append(steady, rec.Latency)
			}
		}
	}
	L := &res.Latency
	L.All, L.Steady, L.Windows, L.Slow = pct(all), pct(steady), pct(inWin), pct(slow)
	L.SteadyRequestsOK = len(steady)
	L.MaxAnyRequest = ms(maxAny)
	if len(recs) > 0 {
		L.WindowCoverage = round(float64(inside)/float64(len(recs)), 3)
	}
	if L.Steady.P99 > 0 {
		L.WindowP99Ratio = round(L.Windows.P99/L.Steady.P99, 2)
	}
	for _, r := range res.Restarts {
		L.WorstWindowP99 = max(L.WorstWindowP99, r.P99)
		if L.Steady.P99 > 0 && r.P99 > 2*L.Steady.P99 {
			L.WindowsOver2x++
		}
	}
	res.Series = series(recs, lr.Elapsed)
}

// series bins the records over time for the picture: about 500 bins, each a
// multiple of 100 ms.
func series(recs []load.Record, elapsed time.Duration) Series {
	bin := max(100*time.Millisecond, (elapsed / 500).Round(100*time.Millisecond))
	n := int(elapsed/bin) + 1
	s := Series{BinMS: ms(bin), N: make([]int, n), P50: make([]float64, n), Max: make([]float64, n), Fail: make([]int, n)}
	lats := make([][]time.Duration, n)
	for _, rec := range recs {
		i := min(int(rec.Start/bin), n-1)
		switch {
		case rec.Kind != rawhttp.OK:
			s.Fail[i]++
		case !rec.Slow:
			lats[i] = append(lats[i], rec.Latency)
		}
	}
	for i, l := range lats {
		p := pct(l)
		s.N[i], s.P50[i], s.Max[i] = p.N, p.P50, p.Max
	}
	return s
}

// pct returns nearest-rank percentiles of ls (which it sorts), in milliseconds.
func pct(ls []time.Duration) Pct {
	p := Pct{N: len(ls)}
	if len(ls) == 0 {
		return p
	}
	slices.Sort(ls)
	rank := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(ls)))) - 1
		return ms(ls[max(0, min(i, len(ls)-1))])
	}
	p.P50, p.P99, p.P999, p.Max = rank(0.50), rank(0.99), rank(0.999), ms(ls[len(ls)-1])
	return p
}

// dist summarizes values in milliseconds.
func dist(vs []float64) Dist {
	d := Dist{N: len(vs)}
	if len(vs) == 0 {
		return d
	}
	vs = stats.Sorted(vs)
	d.Min, d.Median, d.P90, d.Max = vs[0], stats.Quantile(vs, 0.5), stats.Quantile(vs, 0.9), vs[len(vs)-1]
	return d
}

// ms converts d to milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 {
	return round(float64(d)/float64(time.Millisecond), 3)
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// fmtMS formats milliseconds for tables: 0.412 ms, 12.3 ms, 1,204 ms.
func fmtMS(v float64) string {
	switch {
	case v < 0:
		return "–"
	case v < 10:
		return fmt.Sprintf("%.2f ms", v)
	case v < 100:
		return fmt.Sprintf("%.1f ms", v)
	case v < 10000:
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.1f s", v/1000)
}
