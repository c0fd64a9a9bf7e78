// Command bench measures what clients see while a server restarts under load:
// handover's demo on each of its restart paths, side by side with the peers, in one
// run with one load.
//
// Run it from this directory (as root: the systemd approaches run a real systemd 252
// as PID 1 of private namespaces, see tests/internal/sdns):
//
//	cd tests/bench && go run . -out results           # the full run, about 22 minutes on 2 cores
//	cd tests/bench && go run . -quick -out /tmp/quick # 10 restarts per approach, about 4 minutes
//	cd tests/bench && go run . -report results/bench.json   # tables and picture again from the JSON
//	cd tests/bench && go run . -tls -out /tmp/tls     # TLS resumption after upgrades (tlsbench.go), about 2 minutes
//	cd tests/bench && go run . -http3 -out /tmp/h3    # HTTP/3 over upgrades, handover against tableflip (h3bench.go), 1 to 3 minutes
//	cd tests/bench && go run . -switch              # switch time on idle servers (switch.go), into results/switch
//	cd tests/bench && go run . -pool                # a keep-alive pool across upgrades (poolbench.go), into results/pool
//
// For each approach it starts the server, puts it under the load of
// tests/internal/load (16 clients, half keep-alive, half a new connection per
// request, one request in ten to /slow?ms=300; a raw HTTP/1.1 client that never
// retries and records every request), and restarts it -restarts times, one restart
// every -interval. The approaches take turns in -rounds rounds (each round a fresh
// server with a share of the restarts), so that other work on the machine falls on
// all of them alike. It writes OUT/bench.json (every number), OUT/bench.svg (latency
// over time, one panel per approach) and OUT/bench.md (the tables), and prints the
// tables.
//
// The approaches:
//
//	handover-usr2      handover-demo, kill -USR2 (self-upgrade, no systemd)
//	handover-run       handover-demo under handover run (a master with a stable PID), kill -HUP to the master
//	handover-reload    handover-demo under systemd (deploy/handover-demo.service + .socket), systemctl reload
//	handover-restart   the same units, systemctl restart
//	tableflip          github.com/cloudflare/tableflip v1.2.3 + http.Server.Shutdown, kill -HUP
//	gracehttp          github.com/facebookgo/grace/gracehttp, kill -USR2
//	endless            github.com/fvbock/endless, kill -HUP
//	plain-restart      plain net/http on a systemd socket unit (Shutdown on SIGTERM), systemctl restart
//	naive              http.ListenAndServe, killed (SIGTERM) and started again
//
// The peers are the small servers in servers/, with the demo's endpoints (GET / with
// an X-Pid header, GET /slow?ms=N).
//
// With -switch (switch.go) it times only the switch, the way issue 18 measured it:
// each approach starts a fresh idle server per round (the approaches taking turns,
// -switch-rounds × -switch-upgrades), a probe dials a new connection every
// -switch-every (200 µs; raw HTTP/1.1, never retried, bounded in time and count),
// and the switch time runs from just before the trigger to the first response whose
// X-Pid is a new PID. Approaches: handover-usr2, handover-run, handover-reload
// (systemctl reload under systemd: run it under the systemd lock), handover-ctl
// (`handover reload -control PATH`, the command's start timed), tableflip,
// gracehttp, endless; APPROACH@NAME runs APPROACH with the servers of
// -switch-variant NAME=DIR (another build), turn by turn with the stock one. An
// approach's trigger is a function, and it may have an untimed preparation step (a
// two-phase upgrade's prepare). It writes switch.json and switch.md. The command
// ./switchtrace runs it under perf and splits each switch into phases.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// options are the command's flags.
type options struct {
	out            string
	restarts       int
	rounds         int
	interval       time.Duration
	baseline       time.Duration
	tail           time.Duration
	window         time.Duration
	gap            time.Duration
	concurrency    int
	keepAlive      float64
	slowEvery      int
	slowMS         int
	maxRequests    int
	requestTimeout time.Duration
	exitTimeout    time.Duration
	approaches     string
	quick          bool
	report         string
	repo           string
	keep           bool

	// The TLS benchmark (tlsbench.go).
	tls            bool
	tlsApproaches  string
	tlsClients     int
	tlsPause       time.Duration
	tlsUpgrades    int
	tlsWindow      time.Duration
	tlsCalibration time.Duration
	tlsKey         string

	// The HTTP/3 comparison (h3bench.go).
	http3      bool
	h3Clients  int
	h3Interval time.Duration
	h3Upgrades int
	h3Gap      time.Duration

	// The switch benchmark (switch.go).
	switchMode bool
	sw         switchOptions
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.out, "out", "results", "directory for bench.json, bench.svg and bench.md")
	flag.IntVar(&o.restarts, "restarts", 100, "restarts per approach")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds: the approaches take turns, each round a fresh server and a share of the restarts")
	flag.DurationVar(&o.interval, "interval", 1500*time.Millisecond, "time from one restart signal to the next (longer if a restart has not completed)")
	flag.DurationVar(&o.baseline, "baseline", 2*time.Second, "load without restarts before a round's first restart")
	flag.DurationVar(&o.tail, "tail", time.Second, "load without restarts after a round's last restart")
	flag.DurationVar(&o.window, "window", 500*time.Millisecond, "a restart window runs from the signal to this long after the restart completed (old process exited and new one answered)")
	flag.DurationVar(&o.gap, "gap", 250*time.Millisecond, "least time between a restart's completion and the next signal")
	flag.IntVar(&o.concurrency, "concurrency", load.DefaultConcurrency, "load clients")
	flag.Float64Var(&o.keepAlive, "keepalive", load.DefaultKeepAliveFraction, "share of clients that keep their connection (the others dial per request)")
	flag.IntVar(&o.slowEvery, "slow-every", load.DefaultSlowEvery, "every Nth request of a client goes to /slow")
	flag.IntVar(&o.slowMS, "slow-ms", load.DefaultSlowMS, "server-side delay of /slow requests, in ms")
	flag.IntVar(&o.maxRequests, "max-requests", load.MaxRequestsLimit, "cap on the requests of one approach's load")
	flag.DurationVar(&o.requestTimeout, "request-timeout", load.DefaultRequestTimeout, "bound on one request, dial included")
	flag.DurationVar(&o.exitTimeout, "exit-timeout", 40*time.Second, "how long to wait for an old process to exit after a restart signal")
	flag.StringVar(&o.approaches, "approaches", strings.Join(approachNames(), ","), "comma-separated approaches to run, in this order")
	flag.BoolVar(&o.quick, "quick", false, "a short run: 10 restarts in 2 rounds, unless -restarts or -rounds are given")
	flag.StringVar(&o.report, "report", "", "no run: read this bench.json (with -switch: switch.json) and write its tables (and picture) into -out again")
	flag.StringVar(&o.repo, "repo", "", "the handover repository (default: found above the working directory)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (binaries and server logs)")
	flag.BoolVar(&o.tls, "tls", false, "run the TLS benchmark instead: full versus resumed handshakes after upgrades (tls.json, tls.md in -out)")
	flag.StringVar(&o.tlsApproaches, "tls-approaches", "handover,tableflip,gracehttp", "with -tls: the servers, in this order")
	flag.IntVar(&o.tlsClients, "tls-clients", 64, "with -tls: TLS clients, each reconnecting with its latest ticket")
	flag.DurationVar(&o.tlsPause, "tls-pause", 100*time.Millisecond, "with -tls: a client's pause between one connection's end and the next")
	flag.IntVar(&o.tlsUpgrades, "tls-upgrades", 3, "with -tls: upgrades per server (each followed by a window)")
	flag.DurationVar(&o.tlsWindow, "tls-window", 10*time.Second, "with -tls: the window after each upgrade (and the steady window)")
	flag.DurationVar(&o.tlsCalibration, "tls-calibration", 3*time.Second, "with -tls: the window with clients that present no ticket")
	flag.StringVar(&o.tlsKey, "tls-key", "ecdsa", "with -tls: the certificate's key, ecdsa (P-256) or rsa (2048)")
	flag.BoolVar(&o.http3, "http3", false, "run the HTTP/3 comparison instead: handover's HTTP/3 demo and tableflip + quic-go under long-lived HTTP/3 clients over upgrades (http3.json, http3.md in -out)")
	flag.IntVar(&o.h3Clients, "http3-clients", 16, "with -http3: long-lived HTTP/3 clients")
	flag.DurationVar(&o.h3Interval, "http3-interval", 20*time.Millisecond, "with -http3: a client's pause between two rounds of requests")
	flag.IntVar(&o.h3Upgrades, "http3-upgrades", 5, "with -http3: upgrades per server")
	flag.DurationVar(&o.h3Gap, "http3-gap", time.Second, "with -http3: time between the old process's exit and the next upgrade")
	flag.BoolVar(&o.switchMode, "switch", false, "run the switch benchmark instead: trigger → first answer from the new PID on idle servers (switch.json, switch.md in -out, default results/switch)")
	flag.StringVar(&o.sw.approaches, "switch-approaches", strings.Join(switchApproachNames(), ","), "with -switch: the approaches, in this order")
	flag.IntVar(&o.sw.rounds, "switch-rounds", 3, "with -switch: rounds; each approach starts a fresh server per round, the approaches taking turns")
	flag.IntVar(&o.sw.upgrades, "switch-upgrades", 20, "with -switch: switches per approach and round")
	flag.DurationVar(&o.sw.every, "switch-every", 200*time.Microsecond, "with -switch: the probe dials a new connection this often")
	flag.DurationVar(&o.sw.lead, "switch-lead", 20*time.Millisecond, "with -switch: the probe runs this long before the trigger")
	flag.DurationVar(&o.sw.gap, "switch-gap", 100*time.Millisecond, "with -switch: idle time between the old process's exit and the next switch")
	flag.DurationVar(&o.sw.timeout, "switch-timeout", 10*time.Second, "with -switch: bound on one switch (trigger → an answer from the new PID), and on the wait for the old PID to exit")
	flag.DurationVar(&o.sw.reqTimeout, "switch-request-timeout", 2*time.Second, "with -switch: bound on one probe request, dial included")
	flag.IntVar(&o.sw.maxInFlight, "switch-max-in-flight", 64, "with -switch: at most this many probe requests at once (a slot is skipped otherwise)")
	flag.StringVar(&o.sw.bin, "switch-bin", "", "with -switch: use the servers built in this `directory` (handover-demo, handover, tableflip, gracehttp, endless; e.g. an instrumented build) instead of building them")
	flag.Func("server-env", "with -switch: add `NAME=VALUE` to the environment of the servers the bench starts itself, not under systemd (repeatable; e.g. GODEBUG=inittrace=1)", func(v string) error {
		o.sw.env = append(o.sw.env, v)
		return nil
	})
	flag.Func("switch-variant", "with -switch: `NAME=DIR`, servers of another build in the absolute directory DIR (all five binaries); APPROACH@NAME in -switch-approaches runs APPROACH with them (repeatable)", func(v string) error {
		name, dir, ok := strings.Cut(v, "=")
		if !ok || name == "" || strings.ContainsAny(name, "@,") {
			return fmt.Errorf("want NAME=DIR, NAME without @ or commas")
		}
		if o.sw.variants == nil {
			o.sw.variants = map[string]string{}
		}
		o.sw.variants[name] = dir
		return nil
	})
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["restarts"] {
			o.restarts = 10
		}
		if !set["rounds"] {
			o.rounds = 2
		}
		if !set["switch-rounds"] {
			o.sw.rounds = 2
		}
		if !set["switch-upgrades"] {
			o.sw.upgrades = 5
		}
	}
	if o.switchMode && !set["out"] {
		o.out = filepath.Join("results", "switch")
	}
	return o
}

func main() {
	o := parseFlags()
	if flag.NArg() > 0 {
		fatalf("unexpected argument %q (flags only; see -help)", flag.Arg(0))
	}
	if o.switchMode {
		runSwitchMain(o)
		return
	}
	if poolOpts.on {
		runPoolMain(o) // poolbench.go
		return
	}
	if o.tls {
		runCommand(func(ctx context.Context) error { return runTLS(ctx, o) })
		return
	}
	if o.http3 {
		runCommand(func(ctx context.Context) error { return runH3(ctx, o) })
		return
	}
	if o.report != "" {
		rep, err := readReport(o.report)
		if err != nil {
			fatalf("%v", err)
		}
		if err := writeOutputs(o.out, rep); err != nil {
			fatalf("%v", err)
		}
		fmt.Print(markdown(rep))
		return
	}
	if err := checkOptions(o); err != nil {
		fatalf("%v", err)
	}
	runCommand(func(ctx context.Context) error {
		rep, err := run(ctx, o)
		if rep != nil {
			if werr := writeOutputs(o.out, rep); werr != nil {
				return errors.Join(err, werr)
			}
			fmt.Print(markdown(rep))
			fmt.Fprintf(os.Stderr, "bench: wrote %s, %s and %s\n", filepath.Join(o.out, "bench.json"),
				filepath.Join(o.out, "bench.svg"), filepath.Join(o.out, "bench.md"))
		}
		return err
	})
}

// runCommand runs f as a child subreaper that passes no descriptor it inherited on
// to the servers (their fd counts would compare unlike processes), under a context
// that SIGINT and SIGTERM cancel; then it checks that no child is left, and exits
// on any error.
func runCommand(f func(ctx context.Context) error) {
	if err := proc.SetSubreaper(); err != nil {
		fatalf("%v", err)
	}
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := f(ctx)
	stop()
	if lerr := proc.LeakCheck(); lerr != nil {
		err = errors.Join(err, lerr)
	}
	if err != nil {
		fatalf("%v", err)
	}
}

// runSwitchMain runs the switch benchmark (-switch) and exits on failure; with
// -report it writes switch.md again from a switch.json.
func runSwitchMain(o options) {
	if o.report != "" {
		rep, err := readSwitchReport(o.report)
		if err == nil {
			err = writeSwitchOutputs(o.out, rep)
		}
		if err != nil {
			fatalf("%v", err)
		}
		fmt.Print(switchMarkdown(rep))
		return
	}
	if err := checkSwitchOptions(o.sw); err != nil {
		fatalf("%v", err)
	}
	runCommand(func(ctx context.Context) error {
		rep, err := runSwitch(ctx, o)
		if rep != nil {
			if werr := writeSwitchOutputs(o.out, rep); werr != nil {
				return errors.Join(err, werr)
			}
			fmt.Print(switchMarkdown(rep))
			fmt.Fprintf(os.Stderr, "bench: wrote %s and %s\n", filepath.Join(o.out, "switch.json"), filepath.Join(o.out, "switch.md"))
		}
		return err
	})
}

func checkOptions(o options) error {
	switch {
	case o.restarts < 1 || o.restarts > 10000:
		return fmt.Errorf("-restarts %d: want 1..10000", o.restarts)
	case o.rounds < 1 || o.rounds > o.restarts:
		return fmt.Errorf("-rounds %d: want 1..%d (-restarts)", o.rounds, o.restarts)
	case o.interval < 100*time.Millisecond:
		return fmt.Errorf("-interval %v: want at least 100ms", o.interval)
	case o.concurrency < 1 || o.concurrency > 1024:
		return fmt.Errorf("-concurrency %d: want 1..1024", o.concurrency)
	case o.maxRequests < 1 || o.maxRequests > load.MaxRequestsLimit:
		return fmt.Errorf("-max-requests %d: want 1..%d", o.maxRequests, load.MaxRequestsLimit)
	case o.window < 0 || o.gap < 0 || o.baseline < 0 || o.tail < 0:
		return errors.New("-window, -gap, -baseline and -tail cannot be negative")
	}
	for _, n := range splitList(o.approaches) {
		if _, ok := approachByName(n); !ok {
			return fmt.Errorf("-approaches: unknown approach %q (known: %s)", n, strings.Join(approachNames(), ", "))
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}

// findRepo returns the handover repository: dir if set, else the first directory
// above the working directory holding deploy/handover-demo.service and go.mod.
func findRepo(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		_, e1 := os.Stat(filepath.Join(d, "deploy", "handover-demo.service"))
		_, e2 := os.Stat(filepath.Join(d, "go.mod"))
		if e1 == nil && e2 == nil {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no handover repository (deploy/handover-demo.service) above %s; use -repo", wd)
		}
	}
}
