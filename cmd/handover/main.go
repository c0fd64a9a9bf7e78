// Command handover is the operator's tool for services built with handover, and the
// master that runs any server with a stable PID.
//
//	handover run [flags] -- PROG [ARGS...]
//	    Hold the sockets and run PROG as a child; keep this PID while children are
//	    upgraded (SIGHUP, SIGUSR2, handover reload), restarted after a crash, or
//	    stopped (SIGTERM: the child drains, the master exits with its status). PROG,
//	    in any language, gets the sockets as systemd passes them: fds 3 and up,
//	    LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID (its own PID; a program built with
//	    handover's library is started without it, directly), and a NOTIFY_SOCKET for
//	    READY=1. For containers (as PID 1 it reaps every zombie and forwards SIGINT
//	    and SIGQUIT), PID-tracking supervisors and systemd (Type=notify, a stable
//	    MAINPID). See handover run -h for the flags.
//	handover reload [-control PATH] [-timeout D]
//	    Ask the service to upgrade to the binary now on disk and wait for the outcome.
//	    Exits 0 and prints the new PID when the new generation has taken over; exits 1
//	    with the reason when the upgrade failed (the old generation keeps serving).
//	    This is what a unit's ExecReload= runs, so that `systemctl reload` fails when
//	    the upgrade does.
//	handover status [-control PATH] [-json]
//	    Print the serving process's PID, generation, state, listeners and connections
//	    (under handover run: the master's PID, the serving child and the build it
//	    runs, restarts), a prepared generation, and the last 10 upgrades, one line
//	    each.
//	handover prepare [-control PATH] [-timeout D]
//	    The first step of a two-phase upgrade: start the new generation (the binary
//	    now on disk), which inherits the sockets, loads the state and the TLS keys and
//	    runs its start-up up to Ready, then waits without accepting; the old one
//	    serves alone. Exits 0 and prints the new PID once it is ready and waiting;
//	    exits 1 with the reason if it failed (the old generation serves on).
//	handover commit [-control PATH] [-timeout D] [-at TIME]
//	    Make the prepared generation serve: it starts accepting, the old one stops
//	    accepting and drains (under systemd MAINPID=, BARRIER=1 and the watchdog move
//	    now). Exits 0 once the switch is made. Nothing starts at this moment: the
//	    switch itself takes well under a millisecond. With -at (an RFC 3339 time, or
//	    @UNIX_SECONDS, within the hour) it connects first and sends the commit at
//	    that moment: the instances of a fleet switch together, whatever the
//	    orchestrator's own delays (within the hosts' clock sync).
//	handover abort [-control PATH] [-timeout D]
//	    End the prepared generation (or the one being prepared) without it having
//	    served; exits 0 once it is dead. A prepared generation that waits longer than
//	    the service's prepare timeout (5 minutes by default) is aborted by itself.
//	    Under handover run only a child built with handover's library can be
//	    prepared: for a program in another language prepare is refused.
//
// The control socket's path comes from -control or $HANDOVER_CONTROL. Only the
// service's own user and root may use it. A client sends one request line, ended by
// a newline, within 2s; a service serves at most 16 control connections at once
// (one more is answered "busy"), and does not run an upgrade whose client has gone
// before its request was read. What a service answers (a failed build's stderr
// lines) is printed with control characters escaped (\x1b).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = `usage:
  handover run [flags] -- PROG [ARGS...]     run PROG under a master that keeps one PID
  handover reload [-control PATH] [-timeout DURATION]
  handover status [-control PATH] [-json] [-timeout DURATION]
  handover prepare [-control PATH] [-timeout DURATION]   start the new generation; it waits
  handover commit [-control PATH] [-timeout DURATION] [-at TIME]   make the prepared generation serve
  handover abort [-control PATH] [-timeout DURATION]     end the prepared generation

The control socket is -control or $HANDOVER_CONTROL. handover run -h lists its flags.
`

const runUsage = `usage: handover run [flags] -- PROG [ARGS...]

Holds the sockets and runs PROG as its child, keeping its own PID while children are
upgraded, restarted after a crash, or stopped. PROG gets the sockets at fd 3 and up with
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (its own PID), NOTIFY_SOCKET (the master's),
and HANDOVER_MASTER (the master's PID). A program built with handover's library is
started directly, with HANDOVER_DIRECT instead of LISTEN_PID (any other goes through
a re-exec of this binary that sets LISTEN_PID).

  two-phase: handover prepare -control PATH starts the new child, which waits without
            accepting (a program built with handover's library; for any other, prepare
            is refused); handover commit makes it serve and stops the old one, at once;
            handover abort ends it; past -prepare-timeout it is aborted.
  upgrade:  SIGHUP, SIGUSR2, or handover reload -control PATH (which waits and exits 1,
            with the child's last stderr lines, when the new child fails). PROG is
            looked up on disk again, started, and must send READY=1 to NOTIFY_SOCKET
            within -upgrade-timeout (or have run -ready-after); then the old child gets
            -stop-signal, and SIGKILL after -drain-timeout. Old children drain side by
            side; past -max-draining the oldest is killed at once.
  last good build: the master keeps the file each child runs open. A new build that
            dies within 10s of taking over (or -settle, if longer) is replaced at once
            by the last good build, run from that descriptor even if the file on disk
            is now the bad build; with -settle, handover reload waits that long and
            exits 1 with the reason. For a script the file kept is its interpreter:
            deploy releases behind a symlink (current -> releases/N) and reach the code
            through it (python3 /srv/app/current/app.py, or python3 app.py from
            /srv/app/current); each child is started with the symlinks of its working
            directory and file arguments resolved, and the last good build keeps them.
            Code not reached through a symlink is read from disk again at every start
            (handover status says so).
  crash:    a serving child that exits is restarted, from the last good build, with
            backoff; the sockets stay open, clients wait in the backlog.
  leftovers: processes a child leaves behind (in its process group, with its
            HANDOVER_GENERATION in their environment, as a helper that called setsid,
            or holding the master's sockets) that no live child owns are killed at its
            drain deadline; a failed new child's at once. A starting child's fd-store changes (FDSTORE=1) are held
            until it is ready: a build that fails first leaves the store as it was.
  stop:     SIGTERM: the child gets -stop-signal and drains; the master exits with its
            status. SIGINT and SIGQUIT are forwarded to the child; when it exits, so
            does the master. A second SIGTERM kills the children at once.
  systemd:  under a socket unit the sockets come from systemd (matched to -listen by
            name); Type=notify: READY=1, RELOADING=1 around upgrades, STATUS=.

Without -ready-after, a child must send READY=1 (sd_notify) to be ready.

Flags:
`

// controlEnv names the control socket when -control is not given.
const controlEnv = "HANDOVER_CONTROL"

func main() {
	// First of all: a child of `handover run` passing through the re-exec shim execs
	// its program here.
	shim()
	if len(os.Args) > 1 && os.Args[1] == "reload" {
		go exitOnSIGTERM()
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exitOnSIGTERM makes `handover reload` stop waiting on SIGTERM. systemd sends it when
// the unit is stopped during a reload (it cancels the reload job and signals the whole
// control group, ExecReload= included); dying of the signal, or exiting non-zero, would
// then mark the cleanly stopped unit failed (Result=signal). So under systemd
// ($INVOCATION_ID is set) it exits 0; elsewhere 143, as a shell reports SIGTERM.
func exitOnSIGTERM() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	<-c
	if os.Getenv("INVOCATION_ID") != "" {
		fmt.Fprintln(os.Stderr, "handover reload: SIGTERM from systemd (the service is stopping); no longer waiting for the upgrade")
		os.Exit(0)
	}
	fmt.Fprintln(os.Stderr, "handover reload: interrupted by SIGTERM; the upgrade may still complete (see handover status)")
	os.Exit(143)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	if cmd == "run" {
		return runMaster(args[1:], stderr)
	}
	req, isStep := steps[cmd]
	if !isStep && cmd != "status" {
		fmt.Fprintf(stderr, "handover: unknown command %q\n%s", cmd, usage)
		return 2
	}
	fl := flag.NewFlagSet("handover "+cmd, flag.ContinueOnError)
	fl.SetOutput(stderr)
	path := fl.String("control", os.Getenv(controlEnv), "path of the service's control socket")
	var timeout *time.Duration
	var asJSON *bool
	var at *string
	if cmd == "commit" {
		at = fl.String("at", "", "commit at this moment: an RFC 3339 time or @UNIX_SECONDS (within the hour); a fleet's instances then switch together")
	}
	if isStep {
		timeout = fl.Duration("timeout", 2*time.Minute, "how long to wait for the outcome")
	} else {
		timeout = fl.Duration("timeout", 30*time.Second, "how long to wait for the answer")
		asJSON = fl.Bool("json", false, "print the status as JSON")
	}
	if err := fl.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "handover %s: unexpected argument %q\n%s", cmd, fl.Arg(0), usage)
		return 2
	}
	if *path == "" {
		fmt.Fprintf(stderr, "handover %s: no control socket: pass -control PATH or set %s (the path the service was given, e.g. /run/handover-demo/control.sock)\n", cmd, controlEnv)
		return 2
	}
	if isStep {
		var when time.Time
		if at != nil && *at != "" {
			var err error
			if when, err = parseAt(*at, time.Now()); err != nil {
				fmt.Fprintf(stderr, "handover %s: %v\n", cmd, err)
				return 2
			}
		}
		return upgradeStep(cmd, req, *path, when, *timeout, stdout, stderr)
	}
	return status(*path, *timeout, *asJSON, stdout, stderr)
}
