package graceful

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Bounds of the history a generation keeps and hands on.
const (
	historyKept   = 20       // records kept and handed on
	historyShown  = 10       // records Status shows
	historyBytes  = 48 << 10 // what one handover message may carry
	stderrKept    = 2 << 10  // of a failed build's stderr, in a record
	quantileKeeps = 100      // handover and drain times kept for the summaries
)

// history is what a generation knows of its line's upgrades: the last records and
// running totals, which outlive the records.
type history struct {
	Records []Upgrade `json:"records"`
	// Totals by outcome, since the line's first generation.
	Outcomes map[string]int `json:"outcomes"`
	// The last handover and drain times, for the summaries, and their sums.
	HandoverTimes []float64 `json:"handover_times"`
	DrainTimes    []float64 `json:"drain_times"`
	HandoverSum   float64   `json:"handover_sum"`
	HandoverCount int       `json:"handover_count"`
	DrainSum      float64   `json:"drain_sum"`
	DrainCount    int       `json:"drain_count"`
}

// clone returns a copy of h that shares nothing with it.
func (h *history) clone() history {
	c := *h
	c.Records = append([]Upgrade(nil), h.Records...)
	c.Outcomes = copyCounts(h.Outcomes)
	c.HandoverTimes = append([]float64(nil), h.HandoverTimes...)
	c.DrainTimes = append([]float64(nil), h.DrainTimes...)
	return c
}

// add records r.
func (h *history) add(r Upgrade) {
	if r.Stderr != "" && len(r.Stderr) > stderrKept {
		r.Stderr = "..." + r.Stderr[len(r.Stderr)-stderrKept:]
	}
	h.Records = append(h.Records, r)
	if len(h.Records) > historyKept {
		h.Records = h.Records[len(h.Records)-historyKept:]
	}
	if h.Outcomes == nil {
		h.Outcomes = map[string]int{}
	}
	h.Outcomes[r.Outcome]++
	if r.Outcome == "ok" {
		h.HandoverTimes = keepLast(append(h.HandoverTimes, r.HandoverSeconds), quantileKeeps)
		h.HandoverSum += r.HandoverSeconds
		h.HandoverCount++
	}
}

// last returns the newest record from pid to to, or nil.
func (h *history) last(from, to int) *Upgrade {
	for i := len(h.Records) - 1; i >= 0; i-- {
		if r := &h.Records[i]; r.From == from && r.To == to {
			return r
		}
	}
	return nil
}

// died marks the upgrade to pid as died (the old generation serves again).
func (h *history) died(from, to int, status string) {
	if r := h.last(from, to); r != nil && r.Outcome == "ok" {
		r.Outcome, r.Reason, r.Error = "died", "died", "the new generation exited after taking over: "+status
		h.Outcomes["ok"]--
		h.Outcomes["died"]++
	}
}

// drainStats is how a drain went, sent to the successor in "drained".
type drainStats struct {
	From, To      int
	Seconds       float64
	Closed        int
	Forced        int
	HandedOver    int
	RequestsAfter uint64
	Killed        string // why the drain was cut short: "deadline", "max_draining"; "" if not
}

// drained records the drain of the generation that handed over from, to to.
func (h *history) drained(d drainStats) {
	r := h.last(d.From, d.To)
	if r == nil || r.Drained {
		return
	}
	r.Drained = true
	r.DrainSeconds, r.ConnsClosed, r.ConnsForced, r.RequestsAfter = d.Seconds, d.Closed, d.Forced, d.RequestsAfter
	r.DrainKilled = d.Killed
	r.ConnsHandedOver = d.HandedOver
	h.DrainTimes = keepLast(append(h.DrainTimes, d.Seconds), quantileKeeps)
	h.DrainSum += d.Seconds
	h.DrainCount++
}

// encode returns h as one line of JSON of at most historyBytes, dropping the oldest
// records if need be.
func (h *history) encode() string {
	c := *h
	for {
		b, err := json.Marshal(c)
		if err == nil && (len(b) <= historyBytes || len(c.Records) == 0) {
			return string(b)
		}
		c.Records = c.Records[1:]
	}
}

func decodeHistory(s string) (history, error) {
	var h history
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return history{}, fmt.Errorf("history from the previous generation: %w", err)
	}
	if h.Outcomes == nil {
		h.Outcomes = map[string]int{}
	}
	return h, nil
}

// shown returns the last records for Status, newest last.
func (h *history) shown() []Upgrade {
	rs := h.Records
	if len(rs) > historyShown {
		rs = rs[len(rs)-historyShown:]
	}
	return append([]Upgrade(nil), rs...)
}

func keepLast(s []float64, n int) []float64 {
	if len(s) > n {
		return append([]float64(nil), s[len(s)-n:]...)
	}
	return s
}

func copyCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func writeMetrics(w io.Writer, h history, st Status, above int) {
	var b strings.Builder
	fmt.Fprintf(&b, "# HELP handover_generation The serving generation's number (1 for the first process of the line).\n")
	fmt.Fprintf(&b, "# TYPE handover_generation gauge\nhandover_generation %d\n", st.Generation)
	fmt.Fprintf(&b, "# HELP handover_upgrades_total Upgrades of the line, by outcome.\n# TYPE handover_upgrades_total counter\n")
	outcomes := []string{"ok", "failed", "abandoned", "died"}
	for o := range h.Outcomes {
		if !contains(outcomes, o) {
			outcomes = append(outcomes, o)
		}
	}
	for _, o := range outcomes {
		fmt.Fprintf(&b, "handover_upgrades_total{outcome=%q} %d\n", o, h.Outcomes[o])
	}
	summary(&b, "handover_handover_seconds", "Time from an upgrade's request to the new generation taking over.", h.HandoverTimes, h.HandoverSum, h.HandoverCount)
	summary(&b, "handover_drain_seconds", "Time old generations took to drain after handing over.", h.DrainTimes, h.DrainSum, h.DrainCount)
	fmt.Fprintf(&b, "# HELP handover_connections Open connections of the process's servers, by state.\n# TYPE handover_connections gauge\n")
	c := st.Connections
	for _, kv := range []struct {
		k string
		v int
	}{{"new", c.New}, {"active", c.Active}, {"idle", c.Idle}, {"hijacked", c.Hijacked}} {
		fmt.Fprintf(&b, "handover_connections{state=%q} %d\n", kv.k, kv.v)
	}
	fmt.Fprintf(&b, "# HELP handover_connections_accepted_total Connections accepted by this process.\n# TYPE handover_connections_accepted_total counter\nhandover_connections_accepted_total %d\n", c.Accepted)
	writeConnMetrics(&b, c)
	fmt.Fprintf(&b, "# HELP handover_draining_generations Older generations still draining.\n# TYPE handover_draining_generations gauge\nhandover_draining_generations %d\n", above)
	io.WriteString(w, b.String())
}

// summary writes a Prometheus summary over the kept values: quantiles of the last
// ones, sum and count of all.
func summary(b *strings.Builder, name, help string, kept []float64, sum float64, count int) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s summary\n", name, help, name)
	s := append([]float64(nil), kept...)
	sort.Float64s(s)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		v := "NaN"
		if len(s) > 0 {
			i := int(q*float64(len(s)-1) + 0.5)
			v = fmt.Sprintf("%g", s[i])
		}
		fmt.Fprintf(b, "%s{quantile=\"%g\"} %s\n", name, q, v)
	}
	fmt.Fprintf(b, "%s_sum %g\n%s_count %d\n", name, sum, name, count)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
