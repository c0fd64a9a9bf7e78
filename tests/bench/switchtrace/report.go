package main

import (
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strings"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
)

// switchJSON is what this tool reads of the bench's switch.json.
type switchJSON struct {
	Command string `json:"command"`
	Config  struct {
		Rounds int `json:"rounds"`
	} `json:"config"`
	Approaches []struct {
		Name     string   `json:"name"`
		Label    string   `json:"label"`
		LoadAvg  []string `json:"loadavg"`
		Switches []struct {
			Round    int     `json:"round"`
			Index    int     `json:"i"`
			Old      int     `json:"old"`
			New      int     `json:"new"`
			SwitchMS float64 `json:"switch_ms"`
		} `json:"switches"`
	} `json:"approaches"`
}

func readSwitchJSON(path string) (*switchJSON, error) { return runinfo.ReadJSON[switchJSON](path) }

func (s *switchJSON) loadAvg() map[string][]string {
	out := map[string][]string{}
	for _, a := range s.Approaches {
		out[a.Name] = a.LoadAvg
	}
	return out
}

// switchRef is one switch of the bench, in the order the bench triggered them.
type switchRef struct {
	approach string
	old, new int
	switchMS float64
}

// chronological lists the switches in the order they happened: round by round,
// the approaches taking turns.
func (s *switchJSON) chronological() []switchRef {
	var out []switchRef
	for r := 1; r <= s.Config.Rounds; r++ {
		for _, a := range s.Approaches {
			for _, sw := range a.Switches {
				if sw.Round == r {
					out = append(out, switchRef{a.Name, sw.Old, sw.New, sw.SwitchMS})
				}
			}
		}
	}
	return out
}

// kindOf says which path an approach takes (APPROACH@VARIANT: APPROACH's).
func kindOf(approach string) string {
	approach, _, _ = strings.Cut(approach, "@")
	switch approach {
	case "handover-usr2":
		return "lib"
	case "handover-run":
		return "run"
	case "handover-ctl":
		return "ctl"
	case "handover-prep", "handover-prep-cgo":
		return "commit"
	}
	return "peer"
}

// paths are the markers on the way from the trigger to the first answer, in order.
// A marker found later than one after it in a switch is off that switch's path
// (e.g. the demo's Status call, made before Listen on main, beside serving since).
var paths = map[string][]string{
	"lib": append([]string{"kill", "signal delivered", "onSignal", "beginUpgrade", "startAttempt", "spawnChild", "startProcess", "checkPidfd",
		"forkExec", "clone", "execve", "exec", "ld.so done", "rtmain", "main"}, newGeneration...),
	"run": append([]string{"kill", "signal delivered", "mOnSignal", "mBeginUpgrade", "mStartCandidate", "mOpenBuild", "mDirect", "mSpawn",
		"forkExec", "clone", "execve", "exec", "ld.so done", "rtmain", "main", "execve#2", "exec#2", "ld.so done#2", "rtmain#2",
		"main#2"}, newGeneration...),
	"ctl": append([]string{"kill", "cli exec", "cli ld.so done", "cli rtmain", "cli main", "handleControl", "answerControl", "beginUpgrade",
		"startAttempt", "spawnChild", "startProcess", "checkPidfd", "forkExec", "clone", "execve", "exec", "ld.so done", "rtmain",
		"main"}, newGeneration...),
	"commit": {"kill", "cli exec", "cli ld.so done", "cli rtmain", "cli main", "handleControl", "answerControl", "commit", "goAhead",
		"handOver", "quiesce", "release", "accept loop", "accepted", "answered", "probe read"},
	"peer": {"kill", "signal delivered", "doUpgrade", "checkPidfd", "forkExec", "clone", "execve", "exec", "ld.so done", "rtmain", "main",
		"accept loop", "accepted", "answered", "probe read"},
}

// newGeneration are the markers of a new generation of the demo, from graceful.New
// to its first answer.
var newGeneration = []string{"New", "inherit", "readInit", "setUp", "startCarriers", "openControl", "status", "Listen", "serve",
	"accept loop", "accepted", "answered", "probe read"}

// offPath are markers off the way to the first answer (timed from the trigger).
var offPath = map[string][]string{
	"lib":    {"Ready", "onAttemptReady", "handOver", "handedOver", "startDrains", "old exit"},
	"run":    {"Ready", "mOnNotify", "mTakeOver", "mStopChild", "old exit"},
	"ctl":    {"Ready", "onAttemptReady", "handOver", "handedOver", "startDrains", "cli exit", "old exit"},
	"commit": {"handedOver", "startDrains", "cli exit", "old exit"},
	"peer":   {"peerReady", "old exit"},
}

// what describes the phase between two markers.
var what = map[string]string{
	"kill>signal delivered":         "kernel: the signal reaches the process",
	"signal delivered>onSignal":     "old: signal → the Upgrader's loop",
	"onSignal>beginUpgrade":         "old: refusal checks",
	"beginUpgrade>startAttempt":     "old: RELOADING=1, log line, carriers told",
	"startAttempt>spawnChild":       "old: the child's spec and environment, the attempt's goroutine (on main also: the history encoded, TLS keys and SaveState into sealed memfds)",
	"spawnChild>startProcess":       "old: spawnChild: check the executable, dup the sockets, socketpair, stderr pipe (on main also: the initial batch sent)",
	"startProcess>checkPidfd":       "old: os.StartProcess up to Go's pidfd check",
	"checkPidfd>forkExec":           "old: Go's one-time pidfd check (pidfd_open, waitid, pidfd_send_signal, a test clone and its wait)",
	"startProcess>forkExec":         "old: process start (syscall.StartProcess, or os.StartProcess with its pidfd check done before)",
	"forkExec>clone":                "old: syscall.forkExec up to clone",
	"clone>execve":                  "child between clone and execve (vfork: descriptors)",
	"execve>exec":                   "kernel: execve (maps the new binary)",
	"exec>ld.so done":               "dynamic loader, libc start (cgo binary)",
	"ld.so done>rtmain":             "Go runtime bootstrap (up to runtime.main)",
	"exec>rtmain":                   "Go runtime bootstrap (static binary)",
	"rtmain>main":                   "package inits (runtime.main → main.main)",
	"main>New":                      "main.main → graceful.New (flags, logger)",
	"New>inherit":                   "New: up to the inherited sockets",
	"inherit>readInit":              "New: fds.Inherit (environment, descriptors), the parent's channel, the machine",
	"readInit>setUp":                "New: read the parent's initial batch (history, keys and state memfds)",
	"inherit>setUp":                 "New: fds.Inherit (environment, descriptors), the machine",
	"setUp>startCarriers":           "New: executable, PID file check, sd_notify socket, watchdog",
	"startCarriers>openControl":     "New: TLS session-ticket keys, LoadState (the demo's JSON)",
	"openControl>status":            "New's rest (control socket, signals, log line, the loop's goroutine), main → Status",
	"openControl>Listen":            "New's rest (control socket, signals, log line, the loop's goroutine), main → Listen",
	"status>Listen":                 "Status: a round trip to the Upgrader's loop; main → Listen",
	"Listen>serve":                  "Listen (the inherited socket), Metrics, main → Serve",
	"serve>accept loop":             "Serve → the first accept",
	"main>accept loop":              "main.main → the first accept (the peer's set-up)",
	"accept loop>accepted":          "waiting for / taking the first connection",
	"accepted>answered":             "request read, answer written",
	"answered>probe read":           "the answer reaches the probe",
	"signal delivered>mOnSignal":    "master: signal → its loop",
	"mOnSignal>mBeginUpgrade":       "master: checks",
	"mBeginUpgrade>mStartCandidate": "master: RELOADING=1, record",
	"mStartCandidate>mOpenBuild":    "master: resolve the program",
	"mOpenBuild>mDirect":            "master: open the build, its #! line, fstat",
	"mDirect>mSpawn":                "master: look for the marks in the build (not for a reload of the same build), keep the build",
	"mOpenBuild>mSpawn":             "master: open and keep the build",
	"mSpawn>forkExec":               "master: pipe, environment, argv",
	"main>execve#2":                 "shim: main.main → Shim: LISTEN_PID, execve of the program",
	"execve#2>exec#2":               "kernel: execve of the program",
	"exec#2>ld.so done#2":           "dynamic loader, libc start (the program)",
	"ld.so done#2>rtmain#2":         "Go runtime bootstrap (the program)",
	"exec#2>rtmain#2":               "Go runtime bootstrap (the program, static)",
	"rtmain#2>main#2":               "package inits (the program)",
	"main#2>New":                    "main.main → graceful.New (flags, logger)",
	"signal delivered>doUpgrade":    "old: signal → tableflip's upgrade",
	"doUpgrade>forkExec":            "old: tableflip: environment, files, syscall.StartProcess (no pidfd check)",
	"doUpgrade>checkPidfd":          "old: tableflip: environment, files, up to a pidfd check",
	"signal delivered>checkPidfd":   "old: signal → os.StartProcess up to Go's pidfd check",
	"kill>cli exec":                 "the bench forks, the command's execve",
	"cli exec>cli ld.so done":       "the command: dynamic loader, libc start",
	"cli ld.so done>cli rtmain":     "the command: Go runtime bootstrap",
	"cli exec>cli rtmain":           "the command: Go runtime bootstrap (static)",
	"cli rtmain>cli main":           "the command: package inits",
	"cli main>handleControl":        "the command connects and asks; the control server takes the connection",
	"cli main>answerControl":        "the command connects and asks; the control server reads the request",
	"handleControl>answerControl":   "old: peer check, request read",
	"answerControl>beginUpgrade":    "old: to the Upgrader's loop",
	"answerControl>commit":          "old: to the Upgrader's loop",
	"commit>goAhead":                "old: the commit's log line (and RELOADING=1 under systemd)",
	"goAhead>handOver":              "old: the history with this upgrade in it encoded, the go-ahead to the attempt's goroutine, which starts the handover's",
	"handOver>quiesce":              "old: the history sent (after MAINPID= and BARRIER=1 under systemd)",
	"quiesce>release":               "old: stops accepting, sends \"main\"; new: wakes, reads the history and \"main\"",
	"release>accept loop":           "new: its accepting goroutines run (it yields to them)",
	"Ready>onAttemptReady":          "the new generation says ready; the old one's loop hears it",
	"onAttemptReady>handOver":       "old: this upgrade's record, the history encoded, the go-ahead",
	"handOver>handedOver":           "old: history and main sent (no systemd: no MAINPID/BARRIER)",
	"handedOver>startDrains":        "old: PID file, reserve sockets, log line, then it stops accepting",
	"startDrains>old exit":          "old: drain (idle: nothing in flight) and exit",
	"Ready>mOnNotify":               "the program's READY=1 reaches the master's loop (notify socket)",
	"mOnNotify>mTakeOver":           "master: the notification handled",
	"mTakeOver>mStopChild":          "master: records, then the stop signal to the old child",
	"mStopChild>old exit":           "old child: drain and exit",
	"startDrains>cli exit":          "the command hears the outcome and exits",
	"cli exit>old exit":             "old: drain and exit",
	"peerReady>old exit":            "old: drain and exit",
	"signal delivered>forkExec":     "old: signal → os.StartProcess, with its pidfd check",
	"signal delivered>startAttempt": "old: signal → the attempt (the loop, refusal checks, log line)",
	"answerControl>startAttempt":    "old: to the Upgrader's loop, refusal checks, log line",
	"mStartCandidate>mSpawn":        "master: resolve, open and keep the build",
}

// describe says what happens between two markers.
func describe(from, to string) string {
	if w, ok := what[from+">"+to]; ok {
		return w
	}
	return "(in these switches the markers between were not seen)"
}

// PhaseStat is one phase's times over the switches, in ms, and its page faults.
type PhaseStat struct {
	From   string  `json:"from"`
	To     string  `json:"to"`
	What   string  `json:"what,omitempty"`
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P10    float64 `json:"p10"`
	P90    float64 `json:"p90"`
	// FaultsNew and FaultsOld are the median counts of page faults in the phase,
	// of the new process and of the signalled one (the master under handover run).
	FaultsNew float64 `json:"faults_new_median"`
	FaultsOld float64 `json:"faults_old_median"`
}

func phaseStat(from, to string, ms []float64, faults [2][]float64) PhaseStat {
	s := statsOf(ms)
	return PhaseStat{From: from, To: to, N: s.N, Median: s.Median, P10: s.P10, P90: s.P90,
		FaultsNew: statsOf(faults[0]).Median, FaultsOld: statsOf(faults[1]).Median}
}

// ApproachTrace is one approach's breakdown.
type ApproachTrace struct {
	Name     string      `json:"name"`
	Label    string      `json:"label"`
	Total    PhaseStat   `json:"total"`
	Phases   []PhaseStat `json:"phases"`
	OffPath  []PhaseStat `json:"off_path"`       // from the trigger
	OffSteps []PhaseStat `json:"off_path_steps"` // between consecutive off-path markers
	Switches []markers   `json:"switches"`       // every switch's markers, ms since the trigger
}

// bucket is a summary row: the time between two markers, each given as the first
// of its names found in a switch (a program's markers after the shim's).
type bucket struct {
	name     string
	from, to []string
}

// buckets sum the path up into a few rows, the same for every approach.
var buckets = []bucket{
	{"old process: trigger → fork", []string{"kill"}, []string{"clone"}},
	{"  of which the command's start (handover reload)", []string{"kill"}, []string{"cli main"}},
	{"  of which Go's one-time pidfd check", []string{"checkPidfd"}, []string{"forkExec"}},
	{"fork → exec (clone, child, execve)", []string{"clone"}, []string{"exec"}},
	{"re-exec shim (handover run): exec → the program's exec", []string{"exec"}, []string{"exec#2"}},
	{"dynamic loader, libc", []string{"exec#2", "exec"}, []string{"ld.so done#2", "ld.so done"}},
	{"Go runtime bootstrap", []string{"ld.so done#2", "exec#2", "ld.so done", "exec"}, []string{"rtmain#2", "rtmain"}},
	{"package inits", []string{"rtmain#2", "rtmain"}, []string{"main#2", "main"}},
	{"main → first accept (graceful.New, Listen, Serve; a peer's set-up)", []string{"main#2", "main"}, []string{"accept loop"}},
	{"  of which graceful.New → Listen (and the demo's Status call, made before Listen on main)", []string{"New"}, []string{"Listen"}},
	{"a command's start, up to the control server taking its connection (handover reload, handover commit)", []string{"kill"}, []string{"handleControl"}},
	{"commit: old process, the commit → it stops accepting (go-ahead, handover)", []string{"commit"}, []string{"quiesce"}},
	{"commit: \"main\" sent → the prepared process, told, lets its listeners accept", []string{"quiesce"}, []string{"release"}},
	{"first accept → answer written", []string{"accept loop"}, []string{"answered"}},
	{"answer → the probe reads it", []string{"answered"}, []string{"probe read"}},
	{"total: trigger → first answer from the new PID", []string{"kill"}, []string{"probe read"}},
}

func firstOf(m markers, names []string) (float64, bool) {
	for _, n := range names {
		if v, ok := m[n]; ok {
			return v, true
		}
	}
	return 0, false
}

// summarize returns each bucket's times over the switches (nil when no switch has
// it).
func summarize(ms []markers) [][]float64 {
	out := make([][]float64, len(buckets))
	for i, b := range buckets {
		for _, m := range ms {
			from, ok1 := firstOf(m, b.from)
			to, ok2 := firstOf(m, b.to)
			if ok1 && ok2 && to >= from {
				out[i] = append(out[i], round3(to-from))
			}
		}
	}
	return out
}

// Report is the breakdown of a traced run.
type Report struct {
	Command    string              `json:"command"`
	Switch     string              `json:"switch_command"` // what ran under perf
	Static     bool                `json:"static"`
	LoadAvg    map[string][]string `json:"loadavg"`
	Unmatched  string              `json:"unmatched,omitempty"`
	Lost       string              `json:"lost,omitempty"` // events perf lost (perf report --stats)
	Approaches []ApproachTrace     `json:"approaches"`
}

// summaryMarkdown is the buckets side by side: median (n) per approach.
func (r *Report) summaryMarkdown() string {
	var b strings.Builder
	b.WriteString("| phase: median ms (n) |")
	sums := make([][][]float64, len(r.Approaches))
	for i, a := range r.Approaches {
		fmt.Fprintf(&b, " %s |", a.Label)
		sums[i] = summarize(a.Switches)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(r.Approaches)) + "\n")
	for k, bk := range buckets {
		name := strings.TrimSpace(bk.name)
		if strings.HasPrefix(bk.name, " ") {
			name = "↳ " + name
		}
		fmt.Fprintf(&b, "| %s |", name)
		for i := range r.Approaches {
			if vs := sums[i][k]; len(vs) > 0 {
				fmt.Fprintf(&b, " %.2f (%d) |", statsOf(vs).Median, len(vs))
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// breakdown matches the bench's switches with the triggers in the trace and sums
// up each approach's phases.
func breakdown(tr *trace, sw *switchJSON) (*Report, error) {
	bench := 0
	for pid, xs := range tr.execs {
		for _, x := range xs {
			if filepath.Base(x.file) == "bench" && (bench == 0 || x.t < tr.execs[bench][0].t) {
				bench = pid
			}
		}
	}
	if bench == 0 {
		return nil, fmt.Errorf("no bench process in the recording")
	}
	signals, commands := tr.triggers(bench)
	refs := sw.chronological()
	rep := &Report{}
	// Each switch, in order, takes the next trigger of its kind after the last one
	// matched.
	var trigs []trigger
	last := math.Inf(-1)
	for _, r := range refs {
		pool := &signals
		kind := kindOf(r.approach)
		if kind == "ctl" || kind == "commit" {
			pool = &commands
		}
		for len(*pool) > 0 && (*pool)[0].t <= last {
			*pool = (*pool)[1:]
		}
		if kind == "commit" && len(*pool) > 0 {
			*pool = (*pool)[1:] // the switch's `handover prepare`, untimed: its commit follows
		}
		if len(*pool) == 0 {
			rep.Unmatched = fmt.Sprintf("%d switches in switch.json, %d matched with a trigger in the trace", len(refs), len(trigs))
			break
		}
		trig := (*pool)[0]
		trig.commit = kind == "commit"
		trigs = append(trigs, trig)
		last = (*pool)[0].t
		*pool = (*pool)[1:]
	}
	byName := map[string][]markers{}
	faults := map[string][][2][]float64{}
	for i, trig := range trigs {
		until := trig.t + 10
		if i+1 < len(trigs) {
			until = trigs[i+1].t
		}
		m, f := tr.switchMarks(trig, until, refs[i].old, refs[i].new, refs[i].switchMS)
		byName[refs[i].approach] = append(byName[refs[i].approach], m)
		faults[refs[i].approach] = append(faults[refs[i].approach], f)
	}
	for _, a := range sw.Approaches {
		ms := byName[a.Name]
		at := ApproachTrace{Name: a.Name, Label: a.Label, Switches: ms}
		kind := kindOf(a.Name)
		for _, p := range phases(paths[kind], ms, faults[a.Name]) {
			ps := phaseStat(p.From, p.To, p.MS, p.Faults)
			ps.What = describe(p.From, p.To)
			at.Phases = append(at.Phases, ps)
		}
		var total [2][]float64
		for i, m := range ms {
			if v, ok := m["probe read"]; ok {
				for k := range total {
					total[k] = append(total[k], float64(countIn(faults[a.Name][i][k], 0, v)))
				}
			}
		}
		at.Total = phaseStat("kill", "probe read", values(ms, "probe read"), total)
		for _, n := range offPath[kind] {
			if v := values(ms, n); len(v) > 0 {
				at.OffPath = append(at.OffPath, phaseStat("kill", n, v, [2][]float64{}))
			}
		}
		for _, p := range phases(offPath[kind], ms, nil) {
			ps := phaseStat(p.From, p.To, p.MS, [2][]float64{})
			ps.What = describe(p.From, p.To)
			at.OffSteps = append(at.OffSteps, ps)
		}
		rep.Approaches = append(rep.Approaches, at)
	}
	return rep, nil
}

func values(ms []markers, name string) []float64 {
	var out []float64
	for _, m := range ms {
		if v, ok := m[name]; ok {
			out = append(out, v)
		}
	}
	return out
}

// markdown renders the breakdown.
func (r *Report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s`", r.Command)
	if r.Static {
		b.WriteString(" (servers built with CGO_ENABLED=0)")
	}
	fmt.Fprintf(&b, "; under perf: `%s`.\n\n", r.Switch)
	if r.Unmatched != "" {
		fmt.Fprintf(&b, "⚠ %s\n\n", r.Unmatched)
	}
	if r.Lost != "" {
		fmt.Fprintf(&b, "⚠ perf lost events (markers may be missing in some switches): %s\n\n", r.Lost)
	}
	b.WriteString("Summary: the phases below summed up per switch, then the median over the switches (so the rows need not add up to the total).\n\n")
	b.WriteString(r.summaryMarkdown())
	b.WriteString("\nTimes in ms (median, p10, p90 over the switches; n switches had both markers); faults: the median counts of page faults in the phase, of the new process / of the signalled one (the master under handover run). A row joins consecutive markers found in a switch; a marker missing in a switch (e.g. Go's pidfd check, done once per process) merges its two rows there.\n")
	for _, a := range r.Approaches {
		fmt.Fprintf(&b, "\n### %s\n\n", a.Label)
		if la := r.LoadAvg[a.Name]; len(la) > 0 {
			fmt.Fprintf(&b, "Load average (before → after each round): %s.\n\n", strings.Join(la, "; "))
		}
		b.WriteString("| from → to | what | median | p10 | p90 | n | faults new / old |\n|---|---|---|---|---|---|---|\n")
		for _, p := range a.Phases {
			fmt.Fprintf(&b, "| %s → %s | %s | %.2f | %.2f | %.2f | %d | %.0f / %.0f |\n", p.From, p.To, p.What, p.Median, p.P10, p.P90, p.N, p.FaultsNew, p.FaultsOld)
		}
		t := a.Total
		fmt.Fprintf(&b, "| **kill → probe read** | **the switch (the bench's measure)** | **%.2f** | %.2f | %.2f | %d | %.0f / %.0f |\n", t.Median, t.P10, t.P90, t.N, t.FaultsNew, t.FaultsOld)
		for _, p := range a.OffPath {
			fmt.Fprintf(&b, "| kill → %s | off the path | %.2f | %.2f | %.2f | %d | |\n", p.To, p.Median, p.P10, p.P90, p.N)
		}
		for _, p := range a.OffSteps {
			fmt.Fprintf(&b, "| %s → %s | off the path: %s | %.2f | %.2f | %.2f | %d | |\n", p.From, p.To, p.What, p.Median, p.P10, p.P90, p.N)
		}
	}
	return b.String()
}

// sortedKeys is for stable output of maps.
func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
