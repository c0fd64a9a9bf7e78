// Package master is `handover run`: a master process that holds a service's sockets
// and runs the server program as its child, so that the service keeps one PID (for
// containers, PID-tracking supervisors and systemd) while children are upgraded,
// restarted after a crash, or stopped. The program may be written in any language:
// it gets the sockets as systemd passes them (fds 3 and up, LISTEN_FDS,
// LISTEN_FDNAMES, LISTEN_PID set to its own PID by a re-exec shim; a program built
// with this module's library, which carries handoff.DirectMark, is started directly
// and gets HANDOVER_DIRECT instead: direct.go) and a NOTIFY_SOCKET on which the
// master hears READY=1, STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1. It also keeps
// an fd store as systemd does (FDSTORE=1, FDNAME=, FDSTOREREMOVE=1; fdstore.go): what
// the serving child stores is passed to every later child after the sockets, which is
// how a child built with handover's library keeps its TLS session-ticket keys, leaves
// its last state when it is stopped with nobody to hand it to, and reaches the next
// child: it keeps there one end of a socket pair (handoff.LinkName), and the two
// hand over the application's state and the idle connections on a channel sent on
// it, as generations of the library do. As it starts a library child (whose build
// carries handoff.NextMark: direct.go), the master sends that channel on the link
// itself and passes the child the other end in place of the link (spawn.go), so that
// the serving child writes what it hands on while the new child starts; a child
// without the mark gets the link and sends its own. The master never reads the link.
//
// # Builds
//
// The master opens the file each child runs just before starting it and keeps it open
// (build.go). The first child's build is the last good build; a new build becomes the
// last good one when its child has served its probation (10 s, or Config.Settle if
// longer). A restart after a crash starts the last good build from that descriptor
// (the shim runs it with execveat), not the file on disk; so does the replacement of
// a new child that dies during its probation, after taking over: its upgrade "died",
// and the bad build is not started again. For a #! script the kept file is its
// interpreter; the script is read from disk at every start.
//
// # Draining
//
// Old children drain side by side, each until its own drain deadline (SIGKILL to its
// process group). When an upgrade would make more than Config.MaxDraining drain, the
// oldest is killed at once: a deploy is not refused for one long-lived connection.
//
// # Records
//
// Each upgrade (and each replacement) gets a wire.Upgrade record once it has an
// outcome (ok, failed, abandoned, died); the last 10 are in the status
// (wire.Status.Upgrades: the types package graceful exports as Status and Upgrade).
// An old child's drain (stop signal to exit, and why the master killed it if it
// did: deadline, max_draining, stop) is added to the record of the upgrade that
// replaced it. The master does not see connections: the
// connection counts of its records stay 0.
//
// # Log events
//
// Every line has event=: start, start_failed, child_started (child=, gen=, trigger=,
// exe=, build=disk|last_good), child_ready (via=notify|delay), handed_over (from=, to=),
// child_stop, child_exited (role=, status=, code=), upgrade_start (trigger=),
// upgrade_refused (reason=), upgrade_failed (cause=exited|timeout|start|abandoned),
// upgrade_died (child=, after=, status=, last_good=), last_good (child=, exe=),
// build_reopened, too_many_draining (child=, gen=, draining=, max=), drain_deadline,
// restart_scheduled, restart_failed, ready_timeout, leftovers_killed, orphan_reaped,
// forward, exit_now, stop, signal_failed, child_reloading, child_stopping,
// child_errno, mainpid_ignored, notify_ignored, fdstore (child=, name=, count=),
// fdstore_removed (name=), fdstore_refused (reason=not_current|bad_name|full), notify_failed,
// control_refused, listen_warning, subreaper_failed, exit.
//
// # Files
//
// It is Linux-only (on other systems the package is empty). The state machine is
// machine.go (its state, events and dispatch), upgrade.go (an upgrade, a new child
// taking over or failing, a replacement), children.go (signals, exits, stopping,
// restarts), notify.go (what children notify), fdstore.go and status.go; it is
// driven by hand in master_test.go. Run (run.go) sets up the world around it: the
// sockets (sockets.go, through internal/fds), the children's notification socket
// (notify_linux.go), the control socket (control.go, through internal/control), the
// signals and the reaper (proctree.go), and starts children, directly or through the
// re-exec shim (spawn.go, direct.go, shim.go), from the builds it keeps open
// (build.go).
package master
