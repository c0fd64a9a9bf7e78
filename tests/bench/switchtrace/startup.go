package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
)

// The start-up comparison (-startup N): every server binary, built with cgo (the
// default here: dynamically linked) and without (CGO_ENABLED=0: static), and two
// empty Go programs, each run N times as `BIN -h`, interleaved, under perf: exec →
// dynamic loader done → runtime.main → main.main → exit_group, and their package
// inits (GODEBUG=inittrace=1, run apart: its printing slows the start).

// emptyPrograms are the baselines: nothing, and an HTTP server's imports.
var emptyPrograms = map[string]string{
	"empty":         "package main\n\nfunc main() {}\n",
	"empty-nethttp": "package main\n\nimport _ \"net/http\"\n\nfunc main() {}\n",
}

// StartupRow is one binary's start-up.
type StartupRow struct {
	Binary   string      `json:"binary"`
	Variant  string      `json:"variant"` // cgo or static
	Bytes    int64       `json:"bytes"`
	Dynamic  bool        `json:"dynamic"`
	Phases   []PhaseStat `json:"phases"`
	Total    PhaseStat   `json:"total"`   // exec → exit_group
	Inits    int         `json:"inits"`   // packages with an init, from inittrace
	InitMS   float64     `json:"init_ms"` // their clock time summed (median over runs)
	TopInits []string    `json:"top_inits"`
}

// StartupReport is the -startup output.
type StartupReport struct {
	Command string       `json:"command"`
	Runs    int          `json:"runs"`
	LoadAvg []string     `json:"loadavg"` // before, after
	Rows    []StartupRow `json:"rows"`
}

var startupPath = []string{"exec", "ld.so done", "rtmain", "main", "exit_group"}

func runStartup(ctx context.Context, o options) error {
	bench, err := benchDir()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "switchtrace-startup-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("keeping the work directory %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	bins := map[string]string{} // "variant/name" → path
	for _, v := range []string{"cgo", "static"} {
		dir := filepath.Join(work, v)
		if err := buildAll(bench, dir, v == "static"); err != nil {
			return err
		}
		for n, p := range serverBinaries(filepath.Join(dir, "bin")) {
			bins[v+"/"+n] = p
		}
		for n, src := range emptyPrograms {
			p, err := buildEmpty(filepath.Join(dir, n), src, v == "static")
			if err != nil {
				return err
			}
			bins[v+"/"+n] = p
		}
	}
	rep := &StartupReport{Command: runinfo.CommandLine("./switchtrace"), Runs: o.startup, LoadAvg: []string{runinfo.LoadAvg()}}
	rows, err := recordStartup(ctx, work, bins, o.startup)
	if err != nil {
		return err
	}
	rep.LoadAvg = append(rep.LoadAvg, runinfo.LoadAvg())
	for i := range rows {
		inits, ms, top := initTrace(ctx, bins[rows[i].Variant+"/"+rows[i].Binary], 5)
		rows[i].Inits, rows[i].InitMS, rows[i].TopInits = inits, ms, top
	}
	rep.Rows = rows
	md := rep.markdown()
	if err := writeOutputs(o.out, "startup", rep, md); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

func buildEmpty(dir, src string, static bool) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module empty\n\ngo 1.26\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(dir))
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir, cmd.Env = dir, os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", dir, err, b)
	}
	return out, nil
}

// recordStartup runs every binary runs times (`BIN -h`, interleaved) under perf
// and returns each one's phases.
func recordStartup(ctx context.Context, work string, bins map[string]string, runs int) ([]StartupRow, error) {
	group := fmt.Sprintf("hosw%d", os.Getpid())
	probeBins := map[string]string{}
	keys := sortedKeys(bins)
	for _, k := range keys {
		probeBins[sanitize(k)] = bins[k]
	}
	up, err := addProbes(group, probeBins, func(string) []probeSpec { return startupProbes })
	if err != nil {
		return nil, err
	}
	defer up.remove()
	var script strings.Builder
	fmt.Fprintf(&script, "i=0\nwhile [ $i -lt %d ]; do\n", runs)
	for _, k := range keys {
		fmt.Fprintf(&script, "  %s -h >/dev/null 2>&1\n", bins[k])
	}
	script.WriteString("  i=$((i+1))\ndone\n")
	data := filepath.Join(work, "startup.data")
	args := []string{"record", "-q", "-k", "mono", "-o", data,
		"-e", "raw_syscalls:sys_enter", "--filter", fmt.Sprintf(`comm != "sh" && (id == %d || id == %d)`, sysRseq, sysExitGroup),
		"-e", "sched:sched_process_exec", "-e", "page-faults", "-c", "1"}
	for _, e := range up.events() {
		args = append(args, "-e", e)
	}
	args = append(args, "--", "/bin/sh", "-c", script.String())
	logf("perf record: %d binaries × %d runs", len(keys), runs)
	cmd := exec.CommandContext(ctx, "perf", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, err
	}
	out, err := exec.Command("perf", "script", "-i", data, "-F", "comm,pid,tid,time,event,trace").Output()
	if err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	evs, err := readEvents(bytes.NewReader(out), group)
	if err != nil {
		return nil, err
	}
	tr := newTrace(evs)
	byBin := map[string][]markers{}
	faults := map[string][][2][]float64{}
	for pid, xs := range tr.execs {
		for _, x := range xs {
			for _, k := range keys {
				if x.file == bins[k] {
					byBin[k] = append(byBin[k], tr.startMarks(pid, x))
					f := tr.faults(pid, x.t, x.t+10)
					for i := range f {
						f[i] = round3((f[i] - x.t) * 1000)
					}
					faults[k] = append(faults[k], [2][]float64{f})
				}
			}
		}
	}
	var rows []StartupRow
	for _, k := range keys {
		v, name, _ := strings.Cut(k, "/")
		row := StartupRow{Binary: name, Variant: v}
		if st, err := os.Stat(bins[k]); err == nil {
			row.Bytes = st.Size()
		}
		row.Dynamic = isDynamic(bins[k])
		for _, p := range phases(startupPath, byBin[k], faults[k]) {
			row.Phases = append(row.Phases, phaseStat(p.From, p.To, p.MS, p.Faults))
		}
		var total [2][]float64
		for i, m := range byBin[k] {
			if v, ok := m["exit_group"]; ok {
				total[0] = append(total[0], float64(countIn(faults[k][i][0], 0, v)))
			}
		}
		row.Total = phaseStat("exec", "exit_group", values(byBin[k], "exit_group"), total)
		rows = append(rows, row)
	}
	return rows, nil
}

// startMarks are one run's markers, in ms since its exec.
func (tr *trace) startMarks(pid int, x event) markers {
	m := markers{"exec": 0}
	at := func(name string, e *event) {
		if e != nil {
			m[name] = round3((e.t - x.t) * 1000)
		}
	}
	end := x.t + 10
	at("ld.so done", tr.first(pid, x.t, end, func(e *event) bool { return e.tid == pid && e.kind == evEnter && e.nr == sysRseq }))
	at("rtmain", tr.first(pid, x.t, end, func(e *event) bool { return e.kind == evProbe && shortOf(e.probe) == "rtmain" }))
	at("main", tr.first(pid, x.t, end, func(e *event) bool { return e.kind == evProbe && shortOf(e.probe) == "main" }))
	at("exit_group", tr.first(pid, x.t, end, func(e *event) bool { return e.kind == evEnter && e.nr == sysExitGroup }))
	return m
}

func isDynamic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

var initLine = regexp.MustCompile(`^init (\S+) @[\d.]+ ms, ([\d.]+) ms clock`)

// initTrace runs path -h runs times with GODEBUG=inittrace=1 and returns the
// number of packages with inits, the median of their summed clock time (ms), and
// the five slowest (by median).
func initTrace(ctx context.Context, path string, runs int) (int, float64, []string) {
	var totals []float64
	per := map[string][]float64{}
	n := 0
	for i := 0; i < runs; i++ {
		cmd := exec.CommandContext(ctx, path, "-h")
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return 0, 0, nil
			}
		}
		sum := 0.0
		n = 0
		sc := bufio.NewScanner(&stderr)
		for sc.Scan() {
			m := initLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			v, _ := strconv.ParseFloat(m[2], 64)
			sum += v
			n++
			per[m[1]] = append(per[m[1]], v)
		}
		totals = append(totals, sum)
	}
	type pkg struct {
		name string
		ms   float64
	}
	var ps []pkg
	for name, vs := range per {
		ps = append(ps, pkg{name, statsOf(vs).Median})
	}
	slices.SortFunc(ps, func(a, b pkg) int {
		if a.ms != b.ms {
			if a.ms > b.ms {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	var top []string
	for _, p := range ps[:min(5, len(ps))] {
		top = append(top, fmt.Sprintf("%s %.3f", p.name, p.ms))
	}
	return n, round3(statsOf(totals).Median), top
}

func (r *StartupReport) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s`; %d runs of each binary (`BIN -h`), interleaved; load average %s.\n\n", r.Command, r.Runs, strings.Join(r.LoadAvg, " → "))
	b.WriteString("Medians in ms (p10–p90) [median page faults]. Package inits: GODEBUG=inittrace=1, clock time summed over the packages (median of 5 runs), the slowest packages.\n\n")
	b.WriteString("| binary | build | size | exec → ld.so done | → runtime.main | → main.main (inits) | → exit | exec → exit | inits: packages, ms | slowest inits (ms) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		cell := func(from, to string) string {
			for _, p := range row.Phases {
				if p.From == from && p.To == to {
					return fmt.Sprintf("%.2f (%.2f–%.2f) [%.0f]", p.Median, p.P10, p.P90, p.FaultsNew)
				}
			}
			return "–"
		}
		build := row.Variant
		if row.Dynamic {
			build += ", dynamic"
		} else {
			build += ", static"
		}
		rt := cell("ld.so done", "rtmain")
		if !row.Dynamic {
			rt = cell("exec", "rtmain")
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f MB | %s | %s | %s | %s | %.2f (%.2f–%.2f) [%.0f] | %d, %.2f | %s |\n", row.Binary, build,
			float64(row.Bytes)/1e6, cell("exec", "ld.so done"), rt, cell("rtmain", "main"), cell("main", "exit_group"),
			row.Total.Median, row.Total.P10, row.Total.P90, row.Total.FaultsNew, row.Inits, row.InitMS, strings.Join(row.TopInits, ", "))
	}
	return b.String()
}

// startupProbes mark the runtime's and main's start.
var startupProbes = []probeSpec{{"runtime.main", "rtmain"}, {"main.main", "main"}}
