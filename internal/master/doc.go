// Package master is `handover run`: a master process that holds a service's sockets
// and runs the server program as its child, so that the service keeps one PID (for
// containers, PID-tracking supervisors and systemd) while children are upgraded,
// restarted after a crash, or stopped. The program may be written in any language:
// it gets the sockets as systemd passes them (fds 3 and up, LISTEN_FDS,
// LISTEN_FDNAMES, LISTEN_PID set to its own PID) and a NOTIFY_SOCKET on which the
// master hears READY=1, STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1.
//
// It is Linux-only (on other systems the package is empty). The state machine is in
// master.go; Run (run.go) sets up the sockets, the notification socket, the control
// socket, the signals and the reaper, and runs it.
package master
