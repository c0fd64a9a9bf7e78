package main

import (
	"fmt"
	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SwitchReport is everything a -switch run measured; it is written as switch.json.
type SwitchReport struct {
	RunHeader
	Config      SwitchConfig   `json:"config"`
	Definitions []string       `json:"definitions"`
	Approaches  []SwitchResult `json:"approaches"`
}

// SwitchConfig is the probe and the schedule of a -switch run.
type SwitchConfig struct {
	Rounds           int     `json:"rounds"`
	Upgrades         int     `json:"upgrades_per_round"`
	EveryUS          float64 `json:"probe_every_us"`
	LeadMS           float64 `json:"probe_lead_ms"`
	GapMS            float64 `json:"gap_ms"`
	TimeoutMS        float64 `json:"switch_timeout_ms"`
	RequestTimeoutMS float64 `json:"request_timeout_ms"`
	MaxInFlight      int     `json:"max_in_flight"`
}

// SwitchResult is one approach's switches.
type SwitchResult struct {
	Name    string `json:"name"`
	Label   string `json:"label"`
	Server  string `json:"server"`
	Trigger string `json:"trigger"`
	Error   string `json:"error,omitempty"`

	// SwitchMS: trigger → the first response from the new PID.
	SwitchMS Spread `json:"switch_ms"`
	// CommandMS: how long the trigger took to return (a kill returns at once).
	CommandMS Spread `json:"command_ms"`
	// ExitMS: trigger → the old PID's exit.
	ExitMS Spread `json:"exit_ms"`
	// OldLastMS: trigger → the last answer from the old PID (to a request sent
	// after the trigger).
	OldLastMS Spread `json:"old_last_ms"`
	// HolderCPU: the CPU the process that holds the sockets without serving
	// (handover run's master) took while the probe ran, in percent of one CPU; for
	// approaches that have one.
	HolderCPU Spread `json:"holder_cpu_pct,omitzero"`

	Requests int            `json:"probe_requests"`
	Skipped  int            `json:"probe_skipped"`
	Failures map[string]int `json:"probe_failures"`
	LoadAvg  []string       `json:"loadavg"` // before → after each round
	Switches []switchRun    `json:"switches"`
}

// switchRun is one switch.
type switchRun struct {
	Round     int            `json:"round"`
	Index     int            `json:"i"`
	OldPID    int            `json:"old"`
	NewPID    int            `json:"new,omitempty"`
	SwitchMS  float64        `json:"switch_ms"` // -1: no new PID answered
	CommandMS float64        `json:"command_ms"`
	ExitMS    float64        `json:"exit_ms"` // -1: the old PID did not exit in time
	OldLastMS float64        `json:"old_last_ms"`
	HolderCPU *float64       `json:"holder_cpu_pct,omitempty"` // see SwitchResult.HolderCPU
	OldAfter  int            `json:"old_after"`                // answers from the old PID to requests sent after the trigger
	Requests  int            `json:"requests"`
	Skipped   int            `json:"skipped,omitempty"`
	Failures  map[string]int `json:"failures,omitempty"`
	LoadAvg   string         `json:"loadavg"` // before the switch
	Err       string         `json:"error,omitempty"`
}

func switchConfigOf(o switchOptions) SwitchConfig {
	return SwitchConfig{Rounds: o.rounds, Upgrades: o.upgrades, EveryUS: float64(o.every) / float64(time.Microsecond),
		LeadMS: ms(o.lead), GapMS: ms(o.gap), TimeoutMS: ms(o.timeout), RequestTimeoutMS: ms(o.reqTimeout), MaxInFlight: o.maxInFlight}
}

func switchDefinitions(o switchOptions) []string {
	return []string{
		fmt.Sprintf("server: idle (no load but the probe); a fresh server per approach and round; the approaches take turns, %d rounds of %d switches each", o.rounds, o.upgrades),
		fmt.Sprintf("probe: GET / on a new connection every %v (raw HTTP/1.1, Connection: close, never retried; at most %d in flight; a slot is skipped, and counted, rather than sent late when the prober itself was not scheduled in time), from %v before the trigger until the new PID answers (at most %v)",
			o.every, o.maxInFlight, o.lead, o.timeout),
		"switch time: from just before the trigger (the kill, or the start of the command) to the first response read in full whose X-Pid is not a PID seen before",
		"command: how long the trigger took to return (a kill returns at once; systemctl reload returns once handover reload has its answer)",
		"exit: from the trigger to the old PID's exit (pidfd), waited for up to " + o.timeout.String() + "; the next switch starts " + o.gap.String() + " after it (or after that wait: an old process that did not exit no longer accepts, and stopping the server ends it)",
		"statistics: nearest-rank percentiles over every switch of the approach (all rounds pooled)",
		"holder CPU (handover run): the CPU time of every thread of the master (/proc/PID/task/*/schedstat) from the probe's start to its end, over that time, in percent of one CPU",
	}
}

// switchResultOf pools an approach's switches.
func switchResultOf(a switchApproach, runs []switchRun, loadavg, errs []string) SwitchResult {
	res := SwitchResult{Name: a.Name, Label: a.Label, Server: a.Server, Trigger: a.Trigger, Failures: map[string]int{},
		LoadAvg: loadavg, Switches: runs, Error: strings.Join(errs, "; ")}
	var sw, cmd, exit, last, hold []float64
	for _, r := range runs {
		if r.HolderCPU != nil {
			hold = append(hold, *r.HolderCPU)
		}
		res.Requests += r.Requests
		res.Skipped += r.Skipped
		for k, n := range r.Failures {
			res.Failures[k] += n
		}
		if r.SwitchMS >= 0 {
			sw = append(sw, r.SwitchMS)
			last = append(last, r.OldLastMS)
		}
		cmd = append(cmd, r.CommandMS)
		if r.ExitMS >= 0 {
			exit = append(exit, r.ExitMS)
		}
	}
	res.SwitchMS, res.CommandMS, res.ExitMS, res.OldLastMS, res.HolderCPU = spread(sw), spread(cmd), spread(exit), spread(last), spread(hold)
	return res
}

func (r SwitchResult) oneLine() string {
	s := fmt.Sprintf("%d switches: median %.2f ms (p10 %.2f, p90 %.2f, min %.2f, max %.2f), %d probe requests, %d failed",
		r.SwitchMS.N, r.SwitchMS.Median, r.SwitchMS.P10, r.SwitchMS.P90, r.SwitchMS.Min, r.SwitchMS.Max, r.Requests, sumCounts(r.Failures))
	if r.Error != "" {
		s += "; error: " + r.Error
	}
	return s
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// switchMarkdown renders the report's table.
func switchMarkdown(r *SwitchReport) string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "Command: `%s` (started %s, finished %s).\n\n", r.Command, r.Started, r.Finished)
	fmt.Fprintf(&b, "Machine: %d × %s, %s, %s, %s.\n\n", m.CPUs, orDash(m.CPUModel), orDash(m.Kernel), m.Go, m.Systemd)
	c := r.Config
	fmt.Fprintf(&b, "Idle servers, a probe dialling every %.0f µs; %d rounds × %d switches per approach, the approaches taking turns. "+
		"Switch: trigger → first response from the new PID.\n\n", c.EveryUS, c.Rounds, c.Upgrades)
	b.WriteString("| approach | n | median | p10 | p90 | min | max | trigger returns (median) | old PID exits (median) | probe requests (failed; share of the slots sent) | load average (1 min) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, a := range r.Approaches {
		if a.SwitchMS.N == 0 {
			fmt.Fprintf(&b, "| %s | 0 | not measured: %s | | | | | | | | |\n", a.Label, mdEscape(a.Error))
			continue
		}
		s := a.SwitchMS
		label := a.Label
		if a.Error != "" {
			label += " ⚠"
		}
		fmt.Fprintf(&b, "| %s | %d | **%s** | %s | %s | %s | %s | %s | %s | %d (%d; %.0f%%) | %s |\n", label, s.N,
			fmtMS(s.Median), fmtMS(s.P10), fmtMS(s.P90), fmtMS(s.Min), fmtMS(s.Max),
			fmtMS(a.CommandMS.Median), fmtMS(a.ExitMS.Median), a.Requests, sumCounts(a.Failures),
			100*float64(a.Requests)/float64(max(1, a.Requests+a.Skipped)), loadRange(a.LoadAvg))
	}
	for _, a := range r.Approaches {
		if h := a.HolderCPU; h.N > 0 {
			fmt.Fprintf(&b, "\n%s: the process that holds the sockets without serving took %.1f%% of a CPU while the probe ran (median of %d switches; p10 %.1f%%, p90 %.1f%%).\n",
				a.Label, h.Median, h.N, h.P10, h.P90)
		}
		if a.Error != "" && a.SwitchMS.N > 0 {
			fmt.Fprintf(&b, "\n⚠ %s: %s\n", a.Label, mdEscape(a.Error))
		}
		if n := sumCounts(a.Failures); n > 0 {
			var kinds []string
			for k, v := range a.Failures {
				kinds = append(kinds, fmt.Sprintf("%s %d", k, v))
			}
			slices.Sort(kinds)
			fmt.Fprintf(&b, "\n%s: %d probe requests failed (%s).\n", a.Label, n, strings.Join(kinds, ", "))
		}
	}
	return b.String()
}

// loadRange is the lowest and highest 1-minute load average of "a b c → d e f"
// entries.
func loadRange(entries []string) string {
	var vs []float64
	for _, e := range entries {
		for _, part := range strings.Split(e, "→") {
			var v float64
			if _, err := fmt.Sscan(strings.TrimSpace(part), &v); err == nil {
				vs = append(vs, v)
			}
		}
	}
	if len(vs) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f–%.2f", slices.Min(vs), slices.Max(vs))
}

func readSwitchReport(path string) (*SwitchReport, error) {
	return runinfo.ReadJSON[SwitchReport](path)
}

// writeSwitchOutputs writes switch.json and switch.md into dir.
func writeSwitchOutputs(dir string, r *SwitchReport) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := encodeJSON(r)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "switch.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "switch.md"), []byte(switchMarkdown(r)), 0o644)
}
