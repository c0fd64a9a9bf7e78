package main

import (
	"bytes"
	"encoding/json"
	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is everything one run measured; it is written as bench.json, and the
// tables and the picture are made from it alone.
type Report struct {
	RunHeader
	Config      Config           `json:"config"`
	Definitions []string         `json:"definitions"`
	Approaches  []ApproachResult `json:"approaches"`
}

// RunHeader says which command ran, when and where (the start of every report).
type RunHeader struct {
	Tool     string  `json:"tool"`
	Command  string  `json:"command"` // as a reader would run it again
	Started  string  `json:"started"`
	Finished string  `json:"finished"`
	Machine  Machine `json:"machine"`
}

// newHeader starts a report's header.
func newHeader(tool string, began time.Time, m Machine) RunHeader {
	return RunHeader{Tool: tool, Command: runinfo.CommandLine("."), Started: began.UTC().Format(time.RFC3339), Machine: m}
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int               `json:"cpus"`
	CPUModel  string            `json:"cpu_model"`
	MemoryMiB int               `json:"memory_mib"`
	Kernel    string            `json:"kernel"`
	OS        string            `json:"os"`
	Go        string            `json:"go"`
	Systemd   string            `json:"systemd"`
	Modules   map[string]string `json:"modules"` // the peers' module versions, as built
}

// Config is the load and the restart schedule.
type Config struct {
	Restarts         int     `json:"restarts"`
	Rounds           int     `json:"rounds"`
	IntervalMS       float64 `json:"interval_ms"`
	BaselineMS       float64 `json:"baseline_ms"`
	TailMS           float64 `json:"tail_ms"`
	WindowAfterMS    float64 `json:"window_after_ms"`
	GapMS            float64 `json:"gap_ms"`
	Concurrency      int     `json:"concurrency"`
	KeepAlive        float64 `json:"keepalive_fraction"`
	SlowEvery        int     `json:"slow_every"`
	SlowMS           int     `json:"slow_ms"`
	MaxRequests      int     `json:"max_requests"`
	RequestTimeoutMS float64 `json:"request_timeout_ms"`
	Address          string  `json:"address"`
}

// ApproachResult is one approach's run.
type ApproachResult struct {
	Name    string `json:"name"`
	Label   string `json:"label"`
	Server  string `json:"server"`
	Restart string `json:"restart"`
	Error   string `json:"error,omitempty"` // why the run was cut short

	Segments      []float64 `json:"rounds_at_ms"` // where each round starts on the approach's time line
	RestartsAsked int       `json:"restarts_asked"`
	RestartsDone  int       `json:"restarts_done"` // a new PID answered
	DistinctPIDs  int       `json:"distinct_pids"` // seen in X-Pid by the load
	Requests      int       `json:"requests"`
	ElapsedS      float64   `json:"elapsed_s"`
	RequestsPerS  float64   `json:"requests_per_s"`

	Failed         int            `json:"failed"`
	Failures       map[string]int `json:"failures"` // by kind: Refused, Reset, EOF, Timeout, Status (non-2xx), Other
	FailedInWindow int            `json:"failed_in_windows"`
	FailureSamples []string       `json:"failure_samples,omitempty"`

	Latency LatencyResult `json:"latency"`

	HandoverMS Dist `json:"handover_ms"` // signal → first response from the new PID
	DrainMS    Dist `json:"drain_ms"`    // signal → old PID exited
	CommandMS  Dist `json:"command_ms"`  // how long the restart command took (systemctl)

	ProbeRequests int            `json:"probe_requests"`
	ProbeFailures map[string]int `json:"probe_failures,omitempty"`

	Leaks Leaks `json:"leaks"`

	// CtlMS is how long a no-op `systemctl show` takes through nsenter (systemd
	// approaches): the share of the restart command's time that is only getting the
	// command to systemd.
	CtlMS Dist `json:"ctl_noop_ms"`
	// LoadAvg is /proc/loadavg before and after each round: other work on the
	// machine shows here.
	LoadAvg []string `json:"loadavg"`

	Restarts []RestartResult `json:"restarts"`
	Series   Series          `json:"series"`
	Notes    []string        `json:"notes,omitempty"`
}

// LatencyResult holds latency percentiles, in milliseconds, of successful fast
// requests (GET /; the /slow ones are in Slow).
type LatencyResult struct {
	All              Pct     `json:"all"`
	Steady           Pct     `json:"steady"`
	Windows          Pct     `json:"windows"`          // pooled over every restart window
	WorstWindowP99   float64 `json:"worst_window_p99"` // the highest p99 of one window
	WindowsOver2x    int     `json:"windows_over_2x"`  // windows whose p99 is above twice the steady p99
	WindowP99Ratio   float64 `json:"window_p99_ratio"` // Windows.P99 / Steady.P99
	Slow             Pct     `json:"slow"`
	MaxAnyRequest    float64 `json:"max_any_request"` // the longest request of any kind, failed ones included
	WindowCoverage   float64 `json:"window_coverage"` // share of the run's requests that started inside a window
	SteadyRequestsOK int     `json:"steady_requests"`
}

// Pct is a latency summary in milliseconds (nearest-rank percentiles).
type Pct struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// Dist summarizes a duration measured once per restart, in milliseconds.
type Dist struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Max    float64 `json:"max"`
}

// Leaks says whether anything was left behind.
type Leaks struct {
	OldRunning  []int    `json:"old_running"` // old generations still running at the end
	Zombies     []int    `json:"zombies"`     // server processes exited but not reaped
	AfterStop   []string `json:"after_stop"`  // children of the bench left after stopping the server
	NotExited   int      `json:"not_exited"`  // restarts whose old PID had not exited within -exit-timeout
	FDFirst     int      `json:"fd_first"`    // open descriptors of the first generation, idle, before the load
	FDLast      int      `json:"fd_last"`     // of the last generation, idle, after the load
	FDChanged   int      `json:"fd_changed"`  // rounds whose last generation had another count than its first
	FDLastNames []string `json:"fd_last_names,omitempty"`
}

// RestartResult is one restart.
type RestartResult struct {
	AtMS        float64 `json:"at_ms"` // signal, since the load started
	OldPID      int     `json:"old_pid"`
	NewPID      int     `json:"new_pid,omitempty"`
	HandoverMS  float64 `json:"handover_ms"`   // -1: no new PID answered
	ProbeMS     float64 `json:"probe_ms"`      // first answer from the new PID to the probe
	LoadMS      float64 `json:"load_ms"`       // first answer from the new PID to the load (-1: none)
	DrainMS     float64 `json:"drain_ms"`      // -1: did not exit within -exit-timeout
	CommandMS   float64 `json:"command_ms"`    // the restart command (a kill returns at once)
	WindowEndMS float64 `json:"window_end_ms"` // since the load started
	Requests    int     `json:"requests"`      // started within the window
	Failed      int     `json:"failed"`        // of those
	P99         float64 `json:"p99"`           // of the window's fast successful requests
	Err         string  `json:"error,omitempty"`
}

// Series is the load binned over time, for the picture: per bin, the count of
// successful fast requests, their median and maximum latency (ms), and the failed
// requests.
type Series struct {
	BinMS float64   `json:"bin_ms"`
	N     []int     `json:"n"`
	P50   []float64 `json:"p50"`
	Max   []float64 `json:"max"`
	Fail  []int     `json:"fail"`
}

func readReport(path string) (*Report, error) { return runinfo.ReadJSON[Report](path) }

// writeOutputs writes bench.json, bench.svg and bench.md into dir.
func writeOutputs(dir string, r *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := encodeJSON(r)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"bench.json": append(b, '\n'),
		"bench.svg":  []byte(svg(r)),
		"bench.md":   []byte(markdown(r)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// encodeJSON encodes v indented, but with arrays of numbers and small objects (a
// restart, say) on one line each, so that bench.json stays short and diffable.
func encodeJSON(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var w bytes.Buffer
	if err := pretty(&w, raw, 0); err != nil {
		return nil, err
	}
	w.WriteByte('\n')
	return w.Bytes(), nil
}

// pretty writes the compact JSON value raw, indented by depth.
func pretty(w *bytes.Buffer, raw json.RawMessage, depth int) error {
	if len(raw) == 0 || (raw[0] != '{' && raw[0] != '[') || len(raw) <= 300 || numberArray(raw) {
		w.Write(raw)
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	open, err := dec.Token()
	if err != nil {
		return err
	}
	isObj := open == json.Delim('{')
	pad := "\n" + strings.Repeat(" ", depth+1)
	w.WriteByte(raw[0])
	for i := 0; dec.More(); i++ {
		if i > 0 {
			w.WriteByte(',')
		}
		w.WriteString(pad)
		if isObj {
			key, err := dec.Token()
			if err != nil {
				return err
			}
			k, _ := json.Marshal(key)
			w.Write(k)
			w.WriteString(": ")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if err := pretty(w, v, depth+1); err != nil {
			return err
		}
	}
	w.WriteString("\n" + strings.Repeat(" ", depth))
	w.WriteByte(raw[len(raw)-1])
	return nil
}

// numberArray reports whether raw is an array of numbers.
func numberArray(raw json.RawMessage) bool {
	if raw[0] != '[' {
		return false
	}
	for _, c := range raw[1 : len(raw)-1] {
		if !strings.ContainsRune("0123456789.,-+eE", rune(c)) {
			return false
		}
	}
	return true
}
