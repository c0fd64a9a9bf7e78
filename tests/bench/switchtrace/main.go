// Command switchtrace finds where the time of a switch goes: it runs the switch
// benchmark (tests/bench -switch) under `perf record`, with kernel tracepoints
// (syscalls, signals, fork, exec, exit) and function-entry uprobes on the server
// binaries (runtime.main, main.main, graceful.New, ..., no change to the code), and
// splits each switch, from the trigger to the probe's first answer from the new
// process, into phases: the old process's work before the fork, fork and exec, the
// dynamic loader, the Go runtime's start, package inits, the library's start-up,
// the first accept and the answer. It prints, per approach, the median, p10 and p90
// of every phase over all switches, and writes them with every switch's markers.
// A commit (-approaches handover-prep) is split from the `handover commit` command's
// start, through the old process's commit and handover, to the prepared process's
// first answer (the commit written on the socket, handover-prep-sock, leaves no
// trigger in the trace: the command's rows are what it takes off).
//
//	cd tests/bench && go run ./switchtrace -out results/switch/trace            # as root
//	cd tests/bench && go run ./switchtrace -static -out /tmp/static            # servers built with CGO_ENABLED=0
//	cd tests/bench && go run ./switchtrace -startup 30 -out results/switch/startup   # each binary's start-up alone
//
// It needs root, perf (linux-perf), tracefs with uprobe events, and the servers'
// binaries unstripped. The uprobes it adds (tracefs group hosw<pid>) are removed
// when it ends. -startup instead times, N times each, `BIN -h` for every server
// binary and for empty Go programs: exec → runtime.main → main.main → exit, and
// the package inits (GODEBUG=inittrace=1).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
)

type options struct {
	approaches string
	rounds     int
	upgrades   int
	every      time.Duration
	out        string
	keep       bool
	static     bool
	startup    int
	data       string
	variants   []string // NAME=DIR, passed to the bench as -switch-variant
	report     string
}

func main() {
	var o options
	flag.StringVar(&o.approaches, "approaches", "handover-usr2,handover-run,handover-ctl,tableflip,gracehttp,endless", "the switch approaches to trace (no systemd ones; handover-prep for a commit)")
	flag.IntVar(&o.rounds, "rounds", 2, "rounds (the approaches take turns)")
	flag.IntVar(&o.upgrades, "upgrades", 10, "switches per approach and round")
	flag.DurationVar(&o.every, "every", 200*time.Microsecond, "the probe dials a new connection this often")
	flag.StringVar(&o.out, "out", filepath.Join("results", "switch", "trace"), "output directory")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (binaries, perf.data)")
	flag.BoolVar(&o.static, "static", false, "build the servers with CGO_ENABLED=0 (static binaries: no dynamic loader)")
	flag.IntVar(&o.startup, "startup", 0, "instead: run each binary's start-up (BIN -h) this many times")
	flag.StringVar(&o.data, "data", "", "instead of recording: analyze this kept work directory again")
	flag.StringVar(&o.report, "report", "", "instead: write trace.md again from this trace.json (into -out)")
	flag.Func("variant", "`NAME=DIR`: servers of another build, for APPROACH@NAME in -approaches (as the bench's -switch-variant; probed too)", func(v string) error {
		if _, _, ok := strings.Cut(v, "="); !ok {
			return errors.New("want NAME=DIR")
		}
		o.variants = append(o.variants, v)
		return nil
	})
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected argument %q (flags only; see -help)", flag.Arg(0))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case o.report != "":
		err = rewrite(o)
	case o.startup > 0:
		err = runStartup(ctx, o)
	default:
		err = runTrace(ctx, o)
	}
	if err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "switchtrace: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s switchtrace: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// benchDir returns tests/bench (the working directory or above it).
func benchDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "servers", "tableflip")); err == nil {
			return d, nil
		}
		if _, err := os.Stat(filepath.Join(d, "tests", "bench", "servers")); err == nil {
			return filepath.Join(d, "tests", "bench"), nil
		}
	}
	return "", fmt.Errorf("run it in the handover repository's tests/bench (no servers/ above %s)", wd)
}

// buildAll builds the bench and the servers into work (servers in work/bin).
func buildAll(bench string, work string, static bool) error {
	repo := filepath.Dir(filepath.Dir(bench))
	bin := filepath.Join(work, "bin")
	env := os.Environ()
	if static {
		env = append(env, "CGO_ENABLED=0")
	}
	for _, b := range []struct {
		dir, out string
		pkgs     []string
		env      []string
	}{
		{bench, work + "/", []string{"."}, os.Environ()},
		{repo, bin + "/", []string{"./cmd/handover-demo", "./cmd/handover"}, env},
		{bench, bin + "/", []string{"./servers/handover-lean", "./servers/tableflip", "./servers/gracehttp", "./servers/endless"}, env},
	} {
		cmd := exec.Command("go", append([]string{"build", "-o", b.out}, b.pkgs...)...)
		cmd.Dir, cmd.Env = b.dir, b.env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %v in %s: %v\n%s", b.pkgs, b.dir, err, out)
		}
	}
	return nil
}

// serverBinaries are the binaries probed, by name.
func serverBinaries(bin string) map[string]string {
	out := map[string]string{}
	for _, n := range []string{"handover-demo", "handover", "tableflip", "gracehttp", "endless"} {
		out[n] = filepath.Join(bin, n)
	}
	return out
}

// perfEvents are the events recorded, with their kernel filters: the bench's own
// syscalls (its probe) are left out (comm bench), its signals are not.
func perfEvents() []string {
	ids := func(nrs []int) string {
		var f []string
		for _, n := range nrs {
			f = append(f, fmt.Sprintf("id == %d", n))
		}
		return strings.Join(f, " || ")
	}
	args := []string{
		"-e", "raw_syscalls:sys_enter", "--filter", `comm != "bench" && (` + ids(tracedSyscalls) + ")",
		"-e", "raw_syscalls:sys_exit", "--filter", `comm != "bench" && (` + ids(tracedExits) + ")",
		"-e", "signal:signal_generate", "--filter", "sig == 1 || sig == 12 || sig == 15",
		"-e", "signal:signal_deliver", "--filter", "sig == 1 || sig == 12 || sig == 15",
		"-e", "sched:sched_process_fork", "-e", "sched:sched_process_exec", "-e", "sched:sched_process_exit",
		"-e", "page-faults", "-c", "1",
	}
	return args
}

// recordSystemWide starts `perf record -a` of events into data and returns what
// stops it (SIGINT, then waits).
func recordSystemWide(data string, events []string) (stop func(), err error) {
	args := []string{"record", "-q", "-k", "mono", "-a", "-o", data}
	for _, e := range events {
		args = append(args, "-e", e)
	}
	cmd := exec.Command("perf", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// perf creates the file once its events are set up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := os.Stat(data); err == nil && st.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("perf record -a did not start within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	return func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}, nil
}

// runTrace records the switch benchmark under perf and analyzes it.
func runTrace(ctx context.Context, o options) error {
	bench, err := benchDir()
	if err != nil {
		return err
	}
	work := o.data
	group := fmt.Sprintf("hosw%d", os.Getpid())
	if work == "" {
		if work, err = os.MkdirTemp("", "switchtrace-"); err != nil {
			return err
		}
		if o.keep {
			logf("keeping the work directory %s", work)
		} else {
			defer os.RemoveAll(work)
		}
		if err := record(ctx, o, bench, work, group); err != nil {
			return err
		}
	} else if group, err = readGroup(work); err != nil {
		return err
	}
	return analyzeWork(o, work, group)
}

// record builds everything, adds the uprobes, and runs the bench under perf.
func record(ctx context.Context, o options, bench, work, group string) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("perf is not installed (apt-get install linux-perf)")
	}
	logf("building the bench and the servers into %s (static: %v)", work, o.static)
	if err := buildAll(bench, work, o.static); err != nil {
		return err
	}
	bins := serverBinaries(filepath.Join(work, "bin"))
	for _, v := range o.variants {
		name, dir, _ := strings.Cut(v, "=")
		for k, p := range serverBinaries(dir) {
			bins[name+"/"+k] = p
		}
	}
	up, err := addProbes(group, bins, switchProbes)
	if err != nil {
		return err
	}
	defer func() {
		if err := up.remove(); err != nil {
			logf("removing the uprobes: %v", err)
		}
	}()
	if len(up.missing) > 0 {
		logf("not probed (no such function: inlined or absent): %s", strings.Join(up.missing, ", "))
	}
	if err := os.WriteFile(filepath.Join(work, "group"), []byte(group), 0o644); err != nil {
		return err
	}
	// The uprobes in a system-wide session of their own: a per-task (inherited) uprobe
	// event misses now and then a process started by a process started by the
	// bench. They fire only in our binaries' processes anyway.
	stopProbes, err := recordSystemWide(filepath.Join(work, "probes.data"), up.events())
	if err != nil {
		return err
	}
	defer stopProbes()
	args := append([]string{"record", "-q", "-k", "mono", "-m", "4096", "-o", filepath.Join(work, "perf.data")}, perfEvents()...)
	args = append(args, "--", filepath.Join(work, "bench"), "-switch", "-switch-bin", filepath.Join(work, "bin"),
		"-repo", filepath.Dir(filepath.Dir(bench)), "-switch-approaches", o.approaches,
		"-switch-rounds", fmt.Sprint(o.rounds), "-switch-upgrades", fmt.Sprint(o.upgrades),
		"-switch-every", o.every.String(), "-out", filepath.Join(work, "switch"))
	for _, v := range o.variants {
		args = append(args, "-switch-variant", v)
	}
	logf("perf %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "perf", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	return cmd.Run()
}

func readGroup(work string) (string, error) {
	b, err := os.ReadFile(filepath.Join(work, "group"))
	return strings.TrimSpace(string(b)), err
}

// analyzeWork reads the recording and the bench's switch.json in work and writes
// the breakdown.
func analyzeWork(o options, work, group string) error {
	sw, err := readSwitchJSON(filepath.Join(work, "switch", "switch.json"))
	if err != nil {
		return err
	}
	logf("reading the recording (perf script)")
	var evs []event
	for _, data := range []string{"perf.data", "probes.data"} {
		e, err := script(filepath.Join(work, data), group)
		if err != nil {
			return err
		}
		evs = append(evs, e...)
	}
	logf("%d events", len(evs))
	rep, err := breakdown(newTrace(evs), sw)
	if err != nil {
		return err
	}
	rep.Command = runinfo.CommandLine("./switchtrace")
	rep.Lost = lostEvents(filepath.Join(work, "perf.data"))
	if l := lostEvents(filepath.Join(work, "probes.data")); l != "" {
		rep.Lost = strings.TrimPrefix(rep.Lost+"; uprobes: "+l, "; ")
	}
	rep.Static = o.static
	rep.Switch = sw.Command
	rep.LoadAvg = sw.loadAvg()
	md := rep.markdown()
	if err := writeOutputs(o.out, "trace", rep, md); err != nil {
		return err
	}
	for _, name := range []string{"switch.json", "switch.md"} {
		if b, err := os.ReadFile(filepath.Join(work, "switch", name)); err == nil {
			os.WriteFile(filepath.Join(o.out, name), b, 0o644)
		}
	}
	fmt.Print(md)
	logf("wrote %s", o.out)
	return nil
}

// writeOutputs writes v as NAME.json and md as NAME.md into dir.
func writeOutputs(dir, name string, v any, md string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".md"), []byte(md), 0o644)
}

// rewrite writes trace.md again from a trace.json.
func rewrite(o options) error {
	b, err := os.ReadFile(o.report)
	if err != nil {
		return err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("%s: %w", o.report, err)
	}
	md := rep.markdown()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	fmt.Print(md)
	return os.WriteFile(filepath.Join(o.out, "trace.md"), []byte(md), 0o644)
}

// script reads a recording through perf script (none if data does not exist).
func script(data, group string) ([]event, error) {
	if _, err := os.Stat(data); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	cmd := exec.Command("perf", "script", "-i", data, "-F", "comm,pid,tid,time,event,trace")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	evs, rerr := readEvents(out, group)
	if werr := cmd.Wait(); rerr == nil && werr != nil {
		rerr = fmt.Errorf("perf script -i %s: %w", data, werr)
	}
	return evs, rerr
}

// lostEvents returns what `perf report --stats` says perf lost, or "".
func lostEvents(data string) string {
	out, _ := exec.Command("perf", "report", "--stats", "-i", data).CombinedOutput()
	var lost []string
	for _, m := range lostRE.FindAllStringSubmatch(string(out), -1) {
		if m[2] != "0" {
			lost = append(lost, m[1]+" "+m[2])
		}
	}
	return strings.Join(lost, "; ")
}

var lostRE = regexp.MustCompile(`(?m)^\s*(LOST\w*) events:\s+(\d+)`)
