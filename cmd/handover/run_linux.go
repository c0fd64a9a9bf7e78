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
	"syscall"
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
// master.Config, and the master runs.
func runMaster(args []string, stderr io.Writer) int {
	f, code := parseRunFlags(args, stderr)
	if f == nil {
		return code
	}
	if err := f.check(); err != nil {
		fmt.Fprintf(stderr, "handover run: %v\n", err)
		fmt.Fprintln(stderr, "usage: handover run [flags] -- PROG [ARGS...]   (see handover run -h)")
		return 2
	}
	cfg := f.config()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	code, err := master.Run(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "handover run: %v\n", err)
	}
	return code
}

// runFlags are the flags of handover run.
type runFlags struct {
	fl                               *flag.FlagSet
	listens                          listenFlags
	control, pidfile, stopSignal     string
	drain, upgrade, readyAfter       time.Duration
	prepare                          time.Duration
	restartDelay, restartMax, settle time.Duration
	maxDraining                      int
	sig                              syscall.Signal // stopSignal, parsed by check
}

// parseRunFlags parses handover run's flags. On -h it prints the usage; on a
// mistake, the error and a pointer to -h: then it returns nil and the exit code.
func parseRunFlags(args []string, stderr io.Writer) (*runFlags, int) {
	f := &runFlags{fl: flag.NewFlagSet("handover run", flag.ContinueOnError)}
	fl := f.fl
	fl.SetOutput(stderr)
	fl.Usage = func() {} // on a mistake, only the error and a pointer to -h
	fl.Var(&f.listens, "listen", "a socket for the program, `NAME=ADDR` (repeatable); ADDR is host:port, [v6]:port, unix:/path or udp:host:port")
	fl.StringVar(&f.control, "control", os.Getenv(controlEnv), "`path` of the control socket for handover reload/status (default $"+controlEnv+")")
	fl.StringVar(&f.pidfile, "pidfile", "", "write the master's PID to this `file` (atomically)")
	fl.DurationVar(&f.drain, "drain-timeout", master.DefaultDrainTimeout, "how long a child has after the stop signal before SIGKILL")
	fl.DurationVar(&f.upgrade, "upgrade-timeout", master.DefaultUpgradeTimeout, "how long a new child (start, restart, upgrade) may take to be ready")
	fl.DurationVar(&f.prepare, "prepare-timeout", master.DefaultPrepareTimeout, "how long a prepared child (handover prepare) waits for handover commit before it is aborted")
	fl.StringVar(&f.stopSignal, "stop-signal", "SIGTERM", "the `signal` that stops a child (the old one after an upgrade; every one when the master stops)")
	fl.DurationVar(&f.readyAfter, "ready-after", 0, "treat a child that has not sent READY=1 as ready after this long (0: READY=1 is required)")
	fl.DurationVar(&f.restartDelay, "restart-delay", master.DefaultRestartDelay, "wait before restarting a child that exited while serving; doubled after each failed restart")
	fl.DurationVar(&f.restartMax, "restart-delay-max", master.DefaultRestartDelayMax, "the most the restart delay grows to")
	fl.IntVar(&f.maxDraining, "max-draining", master.DefaultMaxDraining, "how many old children may drain at once; past it the oldest is killed at once (SIGKILL)")
	fl.DurationVar(&f.settle, "settle", 0, "how long a new child must serve before handover reload reports success (0: as soon as it is ready); if it dies meanwhile, reload exits 1")
	if err := fl.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stderr, runUsage)
			fl.PrintDefaults()
			return nil, 0
		}
		fmt.Fprintln(stderr, "see handover run -h")
		return nil, 2
	}
	return f, 0
}

// check says what is wrong with the flags, if anything.
func (f *runFlags) check() error {
	if f.fl.NArg() == 0 {
		return errors.New("no program to run: put it after the flags, e.g. handover run -listen http=127.0.0.1:8080 -- ./server")
	}
	if err := master.CheckListens(f.listens); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		zero bool
	}{{"-drain-timeout", f.drain, false}, {"-upgrade-timeout", f.upgrade, false}, {"-prepare-timeout", f.prepare, false}, {"-ready-after", f.readyAfter, true}, {"-restart-delay", f.restartDelay, false}, {"-restart-delay-max", f.restartMax, false}} {
		if d.v < 0 || d.v == 0 && !d.zero {
			return fmt.Errorf("%s %s: must be positive", d.name, d.v)
		}
	}
	switch {
	case f.settle < 0:
		return fmt.Errorf("-settle %s: must not be negative", f.settle)
	case f.maxDraining < 1:
		return fmt.Errorf("-max-draining %d: must be at least 1", f.maxDraining)
	case f.restartMax < f.restartDelay:
		return fmt.Errorf("-restart-delay-max %s is below -restart-delay %s", f.restartMax, f.restartDelay)
	case f.readyAfter >= f.upgrade:
		return fmt.Errorf("-ready-after %s is not below -upgrade-timeout %s: a child that does not notify would never be ready in time", f.readyAfter, f.upgrade)
	}
	var err error
	f.sig, err = master.ParseSignal(f.stopSignal)
	return err
}

// config is the master's Config the flags describe (check them first).
func (f *runFlags) config() master.Config {
	return master.Config{
		Prog:            f.fl.Arg(0),
		Args:            f.fl.Args()[1:],
		Listen:          f.listens,
		Control:         f.control,
		PIDFile:         f.pidfile,
		DrainTimeout:    f.drain,
		UpgradeTimeout:  f.upgrade,
		PrepareTimeout:  f.prepare,
		StopSignal:      f.sig,
		ReadyAfter:      f.readyAfter,
		RestartDelay:    f.restartDelay,
		RestartDelayMax: f.restartMax,
		MaxDraining:     f.maxDraining,
		Settle:          f.settle,
	}
}
