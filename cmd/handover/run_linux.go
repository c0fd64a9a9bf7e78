//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/internal/master"
)

// shim runs the re-exec shim of `handover run` when this process is one (see
// master.Shim); it returns at once otherwise.
func shim() { master.Shim() }

// listenFlags collects repeated -listen NAME=ADDR flags.
type listenFlags []master.Listen

func (l *listenFlags) String() string {
	var parts []string
	for _, x := range *l {
		parts = append(parts, x.String())
	}
	return strings.Join(parts, " ")
}

func (l *listenFlags) Set(s string) error {
	x, err := master.ParseListen(s)
	if err != nil {
		// The flag package already names the flag and the value.
		return errors.New(strings.TrimPrefix(err.Error(), fmt.Sprintf("-listen %q: ", s)))
	}
	*l = append(*l, x)
	return nil
}

// runMaster is `handover run [flags] -- PROG [ARGS...]`: the flags become a
// master.Config.
func runMaster(args []string, stderr io.Writer) int {
	fl := flag.NewFlagSet("handover run", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {} // on a mistake, only the error and a pointer to -h

	var listens listenFlags
	fl.Var(&listens, "listen", "a socket for the program, `NAME=ADDR` (repeatable); ADDR is host:port, [v6]:port, unix:/path or udp:host:port")
	control := fl.String("control", os.Getenv("HANDOVER_CONTROL"), "`path` of the control socket for handover reload/status (default $HANDOVER_CONTROL)")
	pidfile := fl.String("pidfile", "", "write the master's PID to this `file` (atomically)")
	drain := fl.Duration("drain-timeout", master.DefaultDrainTimeout, "how long a child has after the stop signal before SIGKILL")
	upgrade := fl.Duration("upgrade-timeout", master.DefaultUpgradeTimeout, "how long a new child (start, restart, upgrade) may take to be ready")
	stopSignal := fl.String("stop-signal", "SIGTERM", "the `signal` that stops a child (the old one after an upgrade; every one when the master stops)")
	readyAfter := fl.Duration("ready-after", 0, "treat a child that has not sent READY=1 as ready after this long (0: READY=1 is required)")
	restartDelay := fl.Duration("restart-delay", master.DefaultRestartDelay, "wait before restarting a child that exited while serving; doubled after each failed restart")
	restartMax := fl.Duration("restart-delay-max", master.DefaultRestartDelayMax, "the most the restart delay grows to")
	maxDraining := fl.Int("max-draining", master.DefaultMaxDraining, "how many old children may drain at once; past it the oldest is killed at once (SIGKILL)")
	settle := fl.Duration("settle", 0, "how long a new child must serve before handover reload reports success (0: as soon as it is ready); if it dies meanwhile, reload exits 1")
	if err := fl.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stderr, runUsage)
			fl.PrintDefaults()
			return 0
		}
		fmt.Fprintln(stderr, "see handover run -h")
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "handover run: "+format+"\n", a...)
		fmt.Fprintln(stderr, "usage: handover run [flags] -- PROG [ARGS...]   (see handover run -h)")
		return 2
	}
	if fl.NArg() == 0 {
		return bad("no program to run: put it after the flags, e.g. handover run -listen http=127.0.0.1:8080 -- ./server")
	}
	if err := master.CheckListens(listens); err != nil {
		return bad("%v", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		zero bool
	}{{"-drain-timeout", *drain, false}, {"-upgrade-timeout", *upgrade, false}, {"-ready-after", *readyAfter, true}, {"-restart-delay", *restartDelay, false}, {"-restart-delay-max", *restartMax, false}} {
		if d.v < 0 || d.v == 0 && !d.zero {
			return bad("%s %s: must be positive", d.name, d.v)
		}
	}
	if *settle < 0 {
		return bad("-settle %s: must not be negative", *settle)
	}
	if *maxDraining < 1 {
		return bad("-max-draining %d: must be at least 1", *maxDraining)
	}
	if *restartMax < *restartDelay {
		return bad("-restart-delay-max %s is below -restart-delay %s", *restartMax, *restartDelay)
	}
	if *readyAfter >= *upgrade {
		return bad("-ready-after %s is not below -upgrade-timeout %s: a child that does not notify would never be ready in time", *readyAfter, *upgrade)
	}
	sig, err := master.ParseSignal(*stopSignal)
	if err != nil {
		return bad("%v", err)
	}
	cfg := master.Config{
		Prog:            fl.Arg(0),
		Args:            fl.Args()[1:],
		Listen:          listens,
		Control:         *control,
		PIDFile:         *pidfile,
		DrainTimeout:    *drain,
		UpgradeTimeout:  *upgrade,
		StopSignal:      sig,
		ReadyAfter:      *readyAfter,
		RestartDelay:    *restartDelay,
		RestartDelayMax: *restartMax,
		MaxDraining:     *maxDraining,
		Settle:          *settle,
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	code, err := master.Run(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "handover run: %v\n", err)
	}
	return code
}
