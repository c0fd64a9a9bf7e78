package main

import (
	"fmt"
	"slices"
	"strings"
)

// markdown renders the report's tables.
func markdown(r *Report) string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "Command: `%s` (started %s, finished %s).\n\n", r.Command, r.Started, r.Finished)
	b.WriteString("| machine | |\n|---|---|\n")
	fmt.Fprintf(&b, "| CPU | %d × %s |\n", m.CPUs, orDash(m.CPUModel))
	fmt.Fprintf(&b, "| memory | %d MiB |\n", m.MemoryMiB)
	fmt.Fprintf(&b, "| kernel | %s |\n", orDash(m.Kernel))
	fmt.Fprintf(&b, "| OS | %s |\n", orDash(m.OS))
	fmt.Fprintf(&b, "| Go | %s |\n", m.Go)
	fmt.Fprintf(&b, "| systemd | %s |\n", m.Systemd)
	var mods []string
	for p, v := range m.Modules {
		mods = append(mods, p+" "+v)
	}
	slices.Sort(mods)
	fmt.Fprintf(&b, "| peers | %s |\n\n", orDash(strings.Join(mods, ", ")))

	c := r.Config
	fmt.Fprintf(&b, "Load: %d clients (%.0f%% keep-alive, the others a new connection per request), one request in %d to `/slow?ms=%d`; "+
		"%d restarts per approach in %d rounds (the approaches take turns; each round a fresh server), one every %.0f ms at most; "+
		"restart window: signal → %.0f ms after the restart completed. PIDs seen: one per generation, restarts + rounds.\n\n",
		c.Concurrency, 100*c.KeepAlive, c.SlowEvery, c.SlowMS, c.Restarts, max(c.Rounds, 1), c.IntervalMS, c.WindowAfterMS)

	b.WriteString("| approach | restarts (PIDs seen) | requests | failed | refused / reset / EOF / timeout / non-2xx / other | p99 steady | p99 restart windows | max | handover median / max | drain median / max | leaked: running, zombies | fds first → last |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, a := range r.Approaches {
		if a.Requests == 0 {
			fmt.Fprintf(&b, "| %s | %s | | | | | | | | | | |\n", a.Label, "not measured: "+mdEscape(a.Error))
			continue
		}
		f := a.Failures
		L := a.Latency
		restarts := fmt.Sprintf("%d/%d (%d)", a.RestartsDone, a.RestartsAsked, a.DistinctPIDs)
		if a.Error != "" {
			restarts += " ⚠"
		}
		fds := fmt.Sprintf("%d → %d", a.Leaks.FDFirst, a.Leaks.FDLast)
		if a.Leaks.FDChanged > 0 {
			fds += fmt.Sprintf(" (%d rounds differ)", a.Leaks.FDChanged)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | **%d** | %d / %d / %d / %d / %d / %d | %s | %s (%.1f×) | %s | %s / %s | %s / %s | %d, %d | %s |\n",
			a.Label, restarts, a.Requests, a.Failed,
			f["Refused"], f["Reset"], f["EOF"], f["Timeout"], f["Status"], f["Other"],
			fmtMS(L.Steady.P99), fmtMS(L.Windows.P99), L.WindowP99Ratio, fmtMS(L.All.Max),
			fmtMS(a.HandoverMS.Median), fmtMS(a.HandoverMS.Max), fmtMS(a.DrainMS.Median), fmtMS(a.DrainMS.Max),
			len(a.Leaks.OldRunning)+len(a.Leaks.AfterStop), len(a.Leaks.Zombies), fds)
	}
	b.WriteString("\nLatencies are of successful `GET /` requests; max is the longest of them. Failures are counted over every request, `/slow` included.\n\n")

	b.WriteString("| approach | req/s | failed in windows | p50 steady / windows | p99.9 steady / windows | worst window p99 | windows with p99 > 2× steady | requests in windows | /slow p99 | restart command median | probe requests | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, a := range r.Approaches {
		if a.Requests == 0 {
			continue
		}
		L := a.Latency
		var notes []string
		if a.Error != "" {
			notes = append(notes, "error: "+a.Error)
		}
		if a.Leaks.NotExited > 0 {
			notes = append(notes, fmt.Sprintf("%d old PIDs not exited within the exit timeout", a.Leaks.NotExited))
		}
		if l := maxLoad(a.LoadAvg); l >= 0 {
			notes = append(notes, fmt.Sprintf("1-min load average ≤ %.2f", l))
		}
		for _, n := range a.Notes {
			if !strings.HasPrefix(n, "MainPID") {
				notes = append(notes, n)
			}
		}
		cmd := fmtMS(a.CommandMS.Median)
		if a.CtlMS.N > 0 {
			cmd += fmt.Sprintf(" (no-op systemctl: %s)", fmtMS(a.CtlMS.Median))
		}
		fmt.Fprintf(&b, "| %s | %.0f | %d | %s / %s | %s / %s | %s | %d of %d | %.0f%% | %s | %s | %d | %s |\n",
			a.Label, a.RequestsPerS, a.FailedInWindow,
			fmtMS(L.Steady.P50), fmtMS(L.Windows.P50), fmtMS(L.Steady.P999), fmtMS(L.Windows.P999),
			fmtMS(L.WorstWindowP99), L.WindowsOver2x, len(a.Restarts), 100*L.WindowCoverage,
			fmtMS(L.Slow.P99), cmd, a.ProbeRequests, mdEscape(strings.Join(notes, "; ")))
	}

	// The targets, for handover's paths.
	var hs []ApproachResult
	for _, a := range r.Approaches {
		if strings.HasPrefix(a.Name, "handover-") && a.Requests > 0 {
			hs = append(hs, a)
		}
	}
	if len(hs) > 0 {
		b.WriteString("\n| target (handover) |")
		for _, a := range hs {
			fmt.Fprintf(&b, " %s |", a.Label)
		}
		b.WriteString("\n|---|" + strings.Repeat("---|", len(hs)) + "\n")
		row := func(name string, f func(a ApproachResult) string) {
			fmt.Fprintf(&b, "| %s |", name)
			for _, a := range hs {
				fmt.Fprintf(&b, " %s |", f(a))
			}
			b.WriteString("\n")
		}
		row(fmt.Sprintf("0 failed requests over %d restarts", r.Config.Restarts), func(a ApproachResult) string {
			return verdict(a.Failed == 0 && a.RestartsDone == a.RestartsAsked, fmt.Sprintf("%d failed, %d/%d restarts", a.Failed, a.RestartsDone, a.RestartsAsked))
		})
		row("p99 in each restart window ≤ 2× steady p99", func(a ApproachResult) string {
			L := a.Latency
			return verdict(L.WindowP99Ratio <= 2 && L.WindowsOver2x == 0, fmt.Sprintf("%d of %d windows above 2× (worst %s vs %s steady); pooled %.2f× (%s)",
				L.WindowsOver2x, len(a.Restarts), fmtMS(L.WorstWindowP99), fmtMS(L.Steady.P99), L.WindowP99Ratio, fmtMS(L.Windows.P99)))
		})
		row("handover time < 50 ms", func(a ApproachResult) string {
			return verdict(a.HandoverMS.N > 0 && a.HandoverMS.Max < 50, fmt.Sprintf("median %s, p90 %s, max %s",
				fmtMS(a.HandoverMS.Median), fmtMS(a.HandoverMS.P90), fmtMS(a.HandoverMS.Max)))
		})
		row("nothing leaked", func(a ApproachResult) string {
			ok := len(a.Leaks.OldRunning) == 0 && len(a.Leaks.Zombies) == 0 && len(a.Leaks.AfterStop) == 0 && a.Leaks.NotExited == 0 &&
				a.Leaks.FDChanged == 0 && a.Leaks.FDFirst == a.Leaks.FDLast
			return verdict(ok, fmt.Sprintf("%d running, %d zombies, fds %d → %d in each round", len(a.Leaks.OldRunning), len(a.Leaks.Zombies), a.Leaks.FDFirst, a.Leaks.FDLast))
		})
	}
	return b.String()
}

func verdict(ok bool, detail string) string {
	if ok {
		return "met: " + detail
	}
	return "**missed**: " + detail
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// maxLoad returns the highest 1-minute load average in readings such as
// "0.47 0.86 1.64 → 0.36 0.80 1.59", or -1 if there is none.
func maxLoad(readings []string) float64 {
	m := -1.0
	for _, r := range readings {
		for _, part := range strings.Split(r, "→") {
			var v float64
			if _, err := fmt.Sscanf(strings.TrimSpace(part), "%g", &v); err == nil {
				m = max(m, v)
			}
		}
	}
	return m
}
