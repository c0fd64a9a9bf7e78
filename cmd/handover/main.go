// Command handover is the operator's tool for services built with handover, and the
// master that runs any server with a stable PID.
//
//	handover run [flags] -- PROG [ARGS...]
//	    Hold the sockets and run PROG as a child; keep this PID while children are
//	    upgraded (SIGHUP, SIGUSR2, handover reload), restarted after a crash, or
//	    stopped (SIGTERM: the child drains, the master exits with its status). PROG,
//	    in any language, gets the sockets as systemd passes them: fds 3 and up,
//	    LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID (its own PID), and a NOTIFY_SOCKET for
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
//	    runs, restarts), and the last 10 upgrades, one line each.
//
// The control socket's path comes from -control or $HANDOVER_CONTROL. Only the
// service's own user and root may use it.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/internal/control"
)

const usage = `usage:
  handover run [flags] -- PROG [ARGS...]     run PROG under a master that keeps one PID
  handover reload [-control PATH] [-timeout DURATION]
  handover status [-control PATH] [-json] [-timeout DURATION]

The control socket is -control or $HANDOVER_CONTROL. handover run -h lists its flags.
`

const runUsage = `usage: handover run [flags] -- PROG [ARGS...]

Holds the sockets and runs PROG as its child, keeping its own PID while children are
upgraded, restarted after a crash, or stopped. PROG gets the sockets at fd 3 and up with
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (its own PID), NOTIFY_SOCKET (the master's),
and HANDOVER_MASTER (the master's PID).

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
            exits 1 with the reason. (For a script, the build kept is its interpreter.)
  crash:    a serving child that exits is restarted, from the last good build, with
            backoff; the sockets stay open, clients wait in the backlog.
  stop:     SIGTERM: the child gets -stop-signal and drains; the master exits with its
            status. SIGINT and SIGQUIT are forwarded to the child; when it exits, so
            does the master. A second SIGTERM kills the children at once.
  systemd:  under a socket unit the sockets come from systemd (matched to -listen by
            name); Type=notify: READY=1, RELOADING=1 around upgrades, STATUS=.

Without -ready-after, a child must send READY=1 (sd_notify) to be ready.

Flags:
`

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
	if cmd != "reload" && cmd != "status" {
		fmt.Fprintf(stderr, "handover: unknown command %q\n%s", cmd, usage)
		return 2
	}
	fl := flag.NewFlagSet("handover "+cmd, flag.ContinueOnError)
	fl.SetOutput(stderr)
	path := fl.String("control", os.Getenv("HANDOVER_CONTROL"), "path of the service's control socket")
	var timeout *time.Duration
	var asJSON *bool
	if cmd == "reload" {
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
		fmt.Fprintf(stderr, "handover %s: no control socket: pass -control PATH or set HANDOVER_CONTROL (the path the service was given, e.g. /run/handover-demo/control.sock)\n", cmd)
		return 2
	}
	if cmd == "reload" {
		return reload(*path, *timeout, stdout, stderr)
	}
	return status(*path, *timeout, *asJSON, stdout, stderr)
}

// ask sends one request and reads the answer.
func ask(path, req string, timeout time.Duration) (control.Response, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return control.Response{}, explainDial(path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		// The service answers a peer it refuses at once and closes without reading
		// the request: the answer may be waiting although the write failed.
		if resp, rerr := control.ReadResponse(c); rerr == nil {
			return resp, nil
		}
		return control.Response{}, fmt.Errorf("sending %q to %s: %w", req, path, err)
	}
	resp, err := control.ReadResponse(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return resp, errTimedOut
	}
	if errors.Is(err, io.EOF) {
		return resp, fmt.Errorf("%s closed the connection without answering (did the service stop?)", path)
	}
	return resp, err
}

func explainDial(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no control socket at %s: the service is not running, or it was started without this control socket", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing is listening on %s: the service is not running (the socket file is stale)", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: run as the service's user or as root", path)
	case errors.Is(err, syscall.ENOTSOCK), errors.Is(err, syscall.EPROTOTYPE):
		return fmt.Errorf("%s is not a control socket: check -control", path)
	}
	return fmt.Errorf("connecting to %s: %w", path, err)
}

// errTimedOut is what ask returns when the answer did not come in time.
var errTimedOut = errors.New("timed out")

func reload(path string, timeout time.Duration, stdout, stderr io.Writer) int {
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		resp, err := ask(path, control.Upgrade, time.Until(deadline))
		if errors.Is(err, errTimedOut) {
			fmt.Fprintf(stderr, "handover reload: no outcome within %s: the upgrade may still be in progress (see handover status -control %s); raise -timeout above the service's upgrade timeout\n", timeout.Round(time.Millisecond), path)
			return 1
		}
		if err != nil {
			fmt.Fprintf(stderr, "handover reload: %v\n", err)
			return 1
		}
		if resp.Moved != 0 && attempt < 3 {
			// We reached a generation that had just handed over; the next
			// connection reaches the current one.
			continue
		}
		if !resp.OK {
			if resp.Stopping && os.Getenv("INVOCATION_ID") != "" {
				// The service is stopping, under systemd: the unit is going down,
				// and a failing ExecReload= would only mark it failed as well.
				fmt.Fprintf(stderr, "handover reload: no upgrade: %s\n", resp.Error)
				return 0
			}
			fmt.Fprintf(stderr, "handover reload: upgrade failed: %s\n", resp.Error)
			return 1
		}
		fmt.Fprintf(stdout, "upgraded: PID %d, generation %d\n", resp.PID, resp.Generation)
		return 0
	}
}

func status(path string, timeout time.Duration, asJSON bool, stdout, stderr io.Writer) int {
	resp, err := ask(path, control.Status, timeout)
	if errors.Is(err, errTimedOut) {
		err = fmt.Errorf("no answer from %s within %s", path, timeout.Round(time.Millisecond))
	}
	if err == nil && !resp.OK {
		err = errors.New(resp.Error)
	}
	if err == nil && resp.Status == nil {
		err = errors.New("malformed answer: no status")
	}
	if err != nil {
		fmt.Fprintf(stderr, "handover status: %v\n", err)
		return 1
	}
	var s graceful.Status
	if err := json.Unmarshal(resp.Status, &s); err != nil {
		fmt.Fprintf(stderr, "handover status: malformed status from %s: %v\n", path, err)
		return 1
	}
	if asJSON {
		b, _ := json.MarshalIndent(s, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return 0
	}
	fmt.Fprintf(stdout, "PID:         %d\n", s.PID)
	fmt.Fprintf(stdout, "Generation:  %d\n", s.Generation)
	fmt.Fprintf(stdout, "State:       %s\n", s.State)
	if s.Child != 0 {
		fmt.Fprintf(stdout, "Child:       PID %d (handover run; restarts: %d)\n", s.Child, s.Restarts)
		if s.ChildExecutable != "" {
			fmt.Fprintf(stdout, "Child runs:  %s\n", s.ChildExecutable)
		}
	} else if s.Restarts != 0 {
		fmt.Fprintf(stdout, "Restarts:    %d\n", s.Restarts)
	}
	if s.Upgrading != 0 {
		fmt.Fprintf(stdout, "Upgrading:   new generation PID %d starting\n", s.Upgrading)
	}
	fmt.Fprintf(stdout, "Executable:  %s\n", s.Executable)
	fmt.Fprintf(stdout, "Systemd:     %v\n", s.Systemd)
	for i, l := range s.Listeners {
		label := "Listeners:  "
		if i > 0 {
			label = "            "
		}
		name := l.Name
		if name == "" {
			name = "(unnamed)"
		}
		fmt.Fprintf(stdout, "%s %s %s:%s (from %s)\n", label, name, l.Network, l.Addr, l.Source)
	}
	master := s.Child != 0 || s.Restarts != 0
	if !master {
		// A handover run master does not see its child's connections.
		c := s.Connections
		fmt.Fprintf(stdout, "Connections: %d open (%d active, %d idle, %d new, %d hijacked), %d accepted\n",
			c.New+c.Active+c.Idle+c.Hijacked, c.Active, c.Idle, c.New, c.Hijacked, c.Accepted)
	}
	switch {
	case s.LastError != "" && master:
		fmt.Fprintf(stdout, "Last error:  %s\n", strings.TrimSpace(s.LastError))
	case s.LastError != "":
		fmt.Fprintf(stdout, "Last upgrade failed: %s\n", strings.TrimSpace(s.LastError))
	}
	printUpgrades(stdout, s.Upgrades)
	return 0
}

// printUpgrades lists the last upgrades of a status (the library's or a handover
// run master's), one line each: when it was asked for, its trigger, its outcome, the
// PIDs from and to, the handover and the old generation's drain in milliseconds, and
// the reason when it failed or died (or why the drain was cut short).
func printUpgrades(w io.Writer, ups []graceful.Upgrade) {
	if len(ups) > 10 {
		ups = ups[len(ups)-10:]
	}
	if len(ups) == 0 {
		return
	}
	fmt.Fprintf(w, "Upgrades:    %d (oldest first)\n", len(ups))
	fmt.Fprintf(w, "  %-12s  %-14s  %-9s  %-15s  %11s  %9s  %s\n", "TIME", "TRIGGER", "OUTCOME", "FROM→TO", "HANDOVER", "DRAIN", "REASON")
	for _, u := range ups {
		to := "-"
		if u.To != 0 {
			to = fmt.Sprint(u.To)
		}
		handover := "-"
		if u.Outcome == "ok" || u.Outcome == "died" {
			handover = fmt.Sprintf("%.1fms", u.HandoverSeconds*1000)
		}
		drain := "-"
		if u.Drained {
			drain = fmt.Sprintf("%.0fms", u.DrainSeconds*1000)
		}
		var reason []string
		if u.Reason != "" {
			reason = append(reason, u.Reason)
		}
		if line, _, _ := strings.Cut(u.Error, "\n"); line != "" {
			reason = append(reason, line)
		}
		if u.DrainKilled != "" {
			reason = append(reason, "old child killed ("+u.DrainKilled+")")
		}
		if u.ConnsForced > 0 {
			reason = append(reason, fmt.Sprintf("%d connections force-closed", u.ConnsForced))
		}
		fmt.Fprintf(w, "  %-12s  %-14s  %-9s  %-15s  %11s  %9s  %s\n", u.Start.Local().Format("15:04:05.000"), u.Trigger, u.Outcome,
			fmt.Sprintf("%d→%s", u.From, to), handover, drain, strings.Join(reason, ": "))
	}
}
