package graceful

import "github.com/seed-a7250cfa/handover/internal/wire"

// The types of Status are defined once, in internal/wire, for the library, the
// `handover run` master and the command line: the names here are the same types.

// Status is a snapshot of a server process, as Upgrader.Status returns it and as
// `handover status -json` prints it. Its fields (JSON names in brackets):
//
//   - PID (pid): the process that answered.
//   - Generation (generation): 1 for the first process of a line, n+1 for one
//     started by n.
//   - State (state): "starting", "serving", "upgrading" (a new generation is
//     starting), "prepared" (a prepared new generation waits for its commit; this
//     one serves), "draining" (a new generation took over; this one finishes its
//     connections, then stands by for the new one's probation), "stopping"
//     (draining after SIGTERM) or "exited" (drained; Wait has returned).
//   - Executable (executable): the program the next upgrade starts.
//   - Systemd (systemd): a service manager supervises the process ($NOTIFY_SOCKET).
//   - Listeners (listeners): the sockets the process holds and passes on, each a
//     Socket.
//   - Connections (connections): the open connections of every Server and Drainer,
//     by state (ConnCounts).
//   - Upgrading (upgrading): the PID of the new generation being started, or 0.
//   - Prepared (prepared): the PID of the prepared new generation (Prepare), ready
//     and not accepting until Commit, or 0.
//   - LastError (last_error): why the last upgrade failed, if it did (cleared by a
//     successful one).
//   - OlderDraining (older_draining): the older generations still draining (one
//     that drained and stands by for a probation is not counted).
//   - ProbationUntil (probation_until): while the last handover this process took
//     part in is on probation (Config.Probation), when that ends: until then the
//     old generation stands by to serve again should the new one die. The new
//     generation reports it as the old one promised at the handover; the old one,
//     its own. Left out when there is none.
//   - Upgrades (upgrades): the last 10 upgrades of the line, oldest first, each an
//     Upgrade. Empty while the process is "starting": a new generation has the
//     line's history from the takeover on (with its own upgrade in it).
//
// A `handover run` master answers `handover status` with the same type: its PID is
// the master's, and it alone fills Child (the serving child's PID),
// ChildExecutable (the build that child runs) and Restarts (children restarted
// after a crash). An Upgrader leaves those three zero.
type Status = wire.Status

// Socket describes one socket a process holds:
//
//   - Name (name): systemd's FileDescriptorName=, "" if none.
//   - Network (network): "tcp", "unix", "udp"...; Addr (addr): the local address.
//   - Source (source): where the process got it: "systemd", "parent" (the previous
//     generation), "master" (`handover run`) or "bound" (it bound it itself).
type Socket = wire.Socket

// ConnCounts is a snapshot of open connections by state:
//
//   - New (new): accepted, but not a byte of a request yet.
//   - Active (active): reading or handling a request (raw-protocol connections are
//     active unless reported idle).
//   - Idle (idle): kept alive between requests.
//   - Hijacked (hijacked): taken over by a handler (websockets).
//   - Accepted (accepted): every connection ever accepted.
//
// Its Total method returns the number of open connections.
type ConnCounts = wire.ConnCounts

// Upgrade is the record of one upgrade, as Status lists them. Each generation keeps
// the records of the upgrades it took part in and hands them to the next, so that
// the history survives upgrades. Its fields:
//
//   - Trigger (trigger): what asked for it: "SIGUSR2", "control socket" (handover
//     reload), "API" (Upgrade), or "replacement" (this build started again for a
//     new generation that died).
//   - Start, End (start, end): when it was asked for; when the new generation took
//     over, or the attempt failed.
//   - From, To (from, to): the old and the new generation's PIDs (To is 0 if none
//     started); Generation (generation): the new one's number.
//   - Outcome (outcome): "ok" (it took over), "failed" (it never did; the old one
//     serves on), "abandoned" (a stop came first), "died" (it took over, then died
//     while the old one drained or stood by for its probation: the old one served
//     again, or started its own build in its place) or "aborted" (a prepared
//     generation ended by Abort or the prepare timeout).
//   - Reason (reason): why it failed or died: "exited", "timeout", "start"... (the
//     cause of the upgrade_failed log line); Error (error): the whole message;
//     Stderr (stderr): the new process's last lines on its standard error.
//   - HandoverSeconds (handover_seconds): from the request to the new generation
//     being ready and confirmed (MAINPID= under systemd); for a two-phase upgrade,
//     from the commit to the new generation taking over.
//   - A two-phase upgrade's (Prepare, then Commit): Prepared (prepared), when the new
//     generation was ready and waiting, PrepareSeconds (prepare_seconds), from Start
//     to then, and Committed (committed), when the commit came (zero if none did).
//   - The old generation's drain, once it is over (Drained, drained): how long it
//     took (DrainSeconds, drain_seconds), how many connections closed by
//     themselves (ConnsClosed, conns_closed) and how many were force-closed
//     (ConnsForced, conns_forced), why the drain was cut short, if it was
//     (DrainKilled, drain_killed: "deadline", DrainTimeout; "max_draining", more
//     generations drained than MaxDraining), and how many HTTP requests its
//     Servers answered after the handover (RequestsAfter, requests_after: each
//     request whose handler returned, HTTP/1 or an HTTP/2 stream; a request whose
//     handler hijacked its connection, a websocket's, is not counted). The record
//     of every upgrade is completed, however many upgrades followed it: each
//     generation passes the drains of older ones on to its successor.
//   - ProbationUntil (probation_until): when the new generation's probation ends
//     (Config.Probation), during which the old one stands by; left out when there
//     is none (under a service manager, Probation negative).
//
// A `handover run` master's records: DrainKilled says why it killed an old child
// before it exited by itself; the counts stay 0 and ProbationUntil is left out (its
// own probation is in its status text).
type Upgrade = wire.Upgrade
