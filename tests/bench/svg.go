package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Layout of the picture, in pixels.
const (
	svgWidth    = 1000
	svgLeft     = 64
	svgRight    = 16
	svgHeader   = 74
	svgTitle    = 34
	svgPanel    = 120
	svgAxis     = 28
	svgPanelGap = 10
	yMinMS      = 0.05
	yMaxMS      = 10000
)

// svg draws the latency over time of every approach, one panel each, on one time
// axis and one logarithmic latency axis: per time bin the median and the maximum
// latency of successful GET / requests, failed requests as red bars from the top
// (taller for more), and each restart as a shaded window starting with a line at
// the signal.
func svg(r *Report) string {
	var ps []ApproachResult
	xmax := 1.0
	for _, a := range r.Approaches {
		if a.Requests == 0 {
			continue
		}
		ps = append(ps, a)
		xmax = math.Max(xmax, float64(len(a.Series.N))*a.Series.BinMS/1000)
	}
	xmax = math.Ceil(xmax/10) * 10
	plotW := float64(svgWidth - svgLeft - svgRight)
	height := svgHeader + len(ps)*(svgTitle+svgPanel+svgAxis+svgPanelGap) + 8
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">`+"\n",
		svgWidth, height, svgWidth, height)
	b.WriteString(`<rect width="100%" height="100%" fill="#ffffff"/>` + "\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="15" font-weight="bold">Latency under load while restarting: %d restarts per approach, in %d rounds (dashed lines)</text>`+"\n",
		svgLeft, r.Config.Restarts, max(r.Config.Rounds, 1))
	fmt.Fprintf(&b, `<text x="%d" y="38" fill="#444">%d clients, %.0f%% keep-alive, 1 in %d requests to /slow?ms=%d; successful GET / requests (log scale); %s; %s</text>`+"\n",
		svgLeft, r.Config.Concurrency, 100*r.Config.KeepAlive, r.Config.SlowEvery, r.Config.SlowMS, r.Machine.Go, html.EscapeString(firstWord(r.Machine.Systemd)))
	// Legend.
	lx, ly := float64(svgLeft), 58.0
	legend := func(draw string, label string, w float64) {
		b.WriteString(draw)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+22, ly+4, label)
		lx += w
	}
	legend(fmt.Sprintf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#1f4e9c" stroke-width="1.6"/>`, lx, ly, lx+18, ly), "median per bin", 120)
	legend(fmt.Sprintf(`<rect x="%.1f" y="%.1f" width="18" height="10" fill="#8db3e8"/>`, lx, ly-5), "median to max per bin", 175)
	legend(fmt.Sprintf(`<rect x="%.1f" y="%.1f" width="18" height="10" fill="#f59e0b" fill-opacity="0.18"/><line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#d97706" stroke-width="1"/>`, lx, ly-5, lx, ly-5, lx, ly+5), "restart: signal and window", 190)
	legend(fmt.Sprintf(`<rect x="%.1f" y="%.1f" width="18" height="10" fill="#dc2626"/>`, lx, ly-5), "failed requests (bar height ~ log count)", 260)

	yOf := func(v float64) float64 {
		v = math.Min(math.Max(v, yMinMS), yMaxMS)
		f := (math.Log10(v) - math.Log10(yMinMS)) / (math.Log10(yMaxMS) - math.Log10(yMinMS))
		return float64(svgPanel) * (1 - f)
	}
	xOf := func(sec float64) float64 { return plotW * sec / xmax }
	for i, a := range ps {
		top := float64(svgHeader + i*(svgTitle+svgPanel+svgAxis+svgPanelGap))
		L := a.Latency
		fmt.Fprintf(&b, `<g transform="translate(%d,%.1f)">`+"\n", svgLeft, top)
		fmt.Fprintf(&b, `<text x="0" y="14" font-size="13" font-weight="bold">%s</text>`+"\n", html.EscapeString(a.Label))
		failText := fmt.Sprintf("%d failed", a.Failed)
		fill := "#166534"
		if a.Failed > 0 {
			fill = "#b91c1c"
			var kinds []string
			for _, k := range []string{"Refused", "Reset", "EOF", "Timeout", "Status", "Other"} {
				if n := a.Failures[k]; n > 0 {
					kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
				}
			}
			failText += " (" + strings.Join(kinds, ", ") + ")"
		}
		fmt.Fprintf(&b, `<text x="0" y="29" fill="#444" font-size="10.5">%d requests, <tspan fill="%s" font-weight="bold">%s</tspan> · p99 steady %s, restarts %s · handover %s (max %s) · drain %s</text>`+"\n",
			a.Requests, fill, html.EscapeString(failText), fmtMS(L.Steady.P99), fmtMS(L.Windows.P99),
			fmtMS(a.HandoverMS.Median), fmtMS(a.HandoverMS.Max), fmtMS(a.DrainMS.Median))
		fmt.Fprintf(&b, `<g transform="translate(0,%d)">`+"\n", svgTitle)
		fmt.Fprintf(&b, `<rect width="%.1f" height="%d" fill="#fafafa" stroke="#bbb" stroke-width="0.8"/>`+"\n", plotW, svgPanel)
		// Restart windows and signals.
		for _, rr := range a.Restarts {
			x0, x1 := xOf(rr.AtMS/1000), xOf(rr.WindowEndMS/1000)
			fmt.Fprintf(&b, `<rect x="%.1f" width="%.1f" height="%d" fill="#f59e0b" fill-opacity="0.18"/>`, x0, math.Max(x1-x0, 0.5), svgPanel)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y2="%d" stroke="#d97706" stroke-width="0.7"/>`+"\n", x0, x0, svgPanel)
		}
		// Round boundaries.
		for _, at := range a.Segments[min(1, len(a.Segments)):] {
			x := xOf(at / 1000)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y2="%d" stroke="#555" stroke-width="1" stroke-dasharray="2,2"/>`+"\n", x, x, svgPanel)
		}
		// Latency grid.
		for _, t := range []float64{0.1, 1, 10, 100, 1000} {
			y := yOf(t)
			fmt.Fprintf(&b, `<line x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ccc" stroke-width="0.5" stroke-dasharray="3,3"/>`, plotW, y, y)
			fmt.Fprintf(&b, `<text x="-5" y="%.1f" text-anchor="end" fill="#444">%s</text>`+"\n", y+3.5, tickLabel(t))
		}
		// Per bin with successful requests: a bar from the median up to the maximum,
		// and a tick at the median.
		s := a.Series
		bw := math.Max(xOf(s.BinMS/1000), 1.5)
		var bars, ticks strings.Builder
		for j, n := range s.N {
			if n == 0 {
				continue
			}
			x := xOf((float64(j) + 0.5) * s.BinMS / 1000)
			y50, ymax := yOf(s.P50[j]), yOf(s.Max[j])
			fmt.Fprintf(&bars, "M%.1f %.1fV%.1f", x, y50, ymax)
			fmt.Fprintf(&ticks, "M%.1f %.1fh%.1f", x-bw/2, y50, bw)
		}
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#8db3e8" stroke-width="%.1f"/>`+"\n", bars.String(), math.Max(bw*0.6, 1))
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#1f4e9c" stroke-width="1.6"/>`+"\n", ticks.String())
		// Failures.
		for j, n := range s.Fail {
			if n == 0 {
				continue
			}
			h := math.Min(10+8*math.Log2(float64(n)), float64(svgPanel)/2)
			fmt.Fprintf(&b, `<rect x="%.1f" width="%.1f" height="%.1f" fill="#dc2626"><title>%d failed</title></rect>`+"\n",
				xOf(float64(j)*s.BinMS/1000), bw, h, n)
		}
		// Time axis.
		step := niceStep(xmax)
		for t := 0.0; t <= xmax+1e-9; t += step {
			x := xOf(t)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#888"/><text x="%.1f" y="%d" text-anchor="middle" fill="#444">%g s</text>`+"\n",
				x, x, svgPanel, svgPanel+4, x, svgPanel+16, t)
		}
		b.WriteString("</g></g>\n")
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func tickLabel(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%gs", ms/1000)
	}
	return fmt.Sprintf("%gms", ms)
}

// niceStep returns a tick step giving about ten ticks over [0, max].
func niceStep(max float64) float64 {
	raw := max / 10
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func firstWord(s string) string {
	f := strings.Fields(s)
	if len(f) >= 2 {
		return f[0] + " " + f[1]
	}
	return s
}
