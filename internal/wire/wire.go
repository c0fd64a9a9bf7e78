// Package wire holds the types that travel between handover's processes and its
// operator: a server's Status as its control socket answers it and as `handover
// status -json` prints it, the sockets it holds, its connection counts and the
// records of its upgrades (which also travel from one generation to the next).
//
// Two kinds of server answer with a Status: a process built with package graceful
// (which re-exports these types under the same names) and a `handover run` master
// (internal/master). Each field says which of them fills it.
package wire

import "time"

// Status is a snapshot of a server process. The JSON names are the output of
// `handover status -json`.
type Status struct {
	// PID is the process that answered: the current generation, or the master.
	PID int `json:"pid"`
	// Generation is 1 for the first process of a line, n+1 for one started by n.
	// Under a master, it is the serving child's.
	Generation int `json:"generation"`
	// State is one of "starting", "serving", "upgrading" (a new generation is
	// starting), "prepared" (a new generation is ready and waits for `handover
	// commit`; this one serves), "draining" (a new generation took over; this one
	// finishes its connections), "stopping" (draining after SIGTERM) and "exited"
	// (drained; Wait has returned). A master is starting, serving, upgrading,
	// prepared or stopping.
	State string `json:"state"`
	// Executable is the program the next upgrade starts.
	Executable string `json:"executable"`
	// Systemd is true when a service manager supervises the process
	// ($NOTIFY_SOCKET was set).
	Systemd bool `json:"systemd"`
	// Listeners are the sockets the process holds and passes on at an upgrade.
	Listeners []Socket `json:"listeners"`
	// Connections counts the open connections of every Server and Drainer of a
	// library process, by state. A master does not see its child's connections:
	// zero in its status.
	Connections ConnCounts `json:"connections"`
	// Upgrading is the PID of the new generation being started, or 0.
	Upgrading int `json:"upgrading,omitempty"`
	// Prepared is the PID of a prepared new generation (`handover prepare`): ready,
	// not accepting, waiting for `handover commit` or `handover abort`; or 0.
	Prepared int `json:"prepared,omitempty"`
	// LastError is why the last upgrade failed, if it did (cleared by a successful
	// one). A master also reports there why its last restart failed, or why its
	// serving child exited.
	LastError string `json:"last_error,omitempty"`

	// Child, ChildExecutable and Restarts are a master's only: a library process
	// leaves them zero (and they are left out of its JSON).

	// Child is the PID of the serving child.
	Child int `json:"child,omitempty"`
	// ChildExecutable is the file the serving child runs, as the master keeps it
	// open, and whether it is the last good build (the one restarts start, even
	// once the file on disk was replaced).
	ChildExecutable string `json:"child_executable,omitempty"`
	// Restarts counts the serving children the master restarted after a crash.
	Restarts int `json:"restarts,omitempty"`

	// OlderDraining counts the older generations (a master: the old children)
	// still draining.
	OlderDraining int `json:"older_draining,omitempty"`
	// ProbationUntil, a library process's only, is the end of the probation of
	// the last handover it took part in, while it lasts: until then the old
	// generation, drained, stands by to serve again should the new one die (see
	// graceful.Config.Probation). The new generation reports it as the old one
	// promised it at the handover; the old one, its own.
	ProbationUntil time.Time `json:"probation_until,omitzero"`
	// Upgrades are the last upgrades of the line, oldest first (at most 10).
	Upgrades []Upgrade `json:"upgrades,omitempty"`
}

// Socket describes one socket a process holds.
type Socket struct {
	// Name is the socket's name (systemd's FileDescriptorName=), "" if none.
	Name string `json:"name"`
	// Network is "tcp", "unix", "udp"...; Addr the local address.
	Network string `json:"network"`
	Addr    string `json:"addr"`
	// Source is where the process got it: "systemd", "parent" (the previous
	// generation), "master" (`handover run`) or "bound" (it bound it itself).
	Source string `json:"source"`
}

// ConnCounts is a snapshot of open connections by state.
type ConnCounts struct {
	// New connections have been accepted but have not sent a byte of a request.
	New int `json:"new"`
	// Active connections are reading or handling a request (raw-protocol
	// connections are active unless reported idle).
	Active int `json:"active"`
	// Idle connections are kept alive between requests.
	Idle int `json:"idle"`
	// Hijacked connections were taken over by a handler (websockets).
	Hijacked int `json:"hijacked"`
	// Accepted counts every connection ever accepted.
	Accepted uint64 `json:"accepted"`
	// Received counts the idle connections the previous generation (or, after a
	// restart, systemd's fd store) handed to this process; HandedOver the idle
	// connections this process handed to the next generation (or to the fd store
	// as it stopped). Neither is counted in Accepted.
	Received   uint64 `json:"received,omitempty"`
	HandedOver uint64 `json:"handed_over,omitempty"`
}

// Total returns the number of open connections.
func (c ConnCounts) Total() int { return c.New + c.Active + c.Idle + c.Hijacked }

// Add adds o's counts to c's.
func (c *ConnCounts) Add(o ConnCounts) {
	c.New += o.New
	c.Active += o.Active
	c.Idle += o.Idle
	c.Hijacked += o.Hijacked
	c.Accepted += o.Accepted
	c.Received += o.Received
	c.HandedOver += o.HandedOver
}

// Outcomes of an upgrade (Upgrade.Outcome).
const (
	// OK: the new generation took over.
	OK = "ok"
	// Failed: it never did; the old one serves on.
	Failed = "failed"
	// Abandoned: a stop came first.
	Abandoned = "abandoned"
	// Died: it took over, then died during its probation (ProbationUntil) or
	// while the old one drained: the old one served again, or started the last
	// good build in its place (a master always does the latter).
	Died = "died"
	// Aborted: a prepared new generation (`handover prepare`) was ended without
	// having served: `handover abort`, or it waited longer than the prepare
	// timeout (Reason "aborted" or "prepare_timeout").
	Aborted = "aborted"
)

// Upgrade is the record of one upgrade, as Status lists them. A library process
// keeps the records of the upgrades its line took part in and hands them to the
// next generation, so that the history survives upgrades; a master keeps its own.
type Upgrade struct {
	// Trigger is what asked for it: "SIGUSR2", "SIGHUP", "control socket" (handover
	// reload), "API" (Upgrade), or "replacement" (a last good build started for a
	// new generation that died).
	Trigger string `json:"trigger"`
	// Start is when it was asked for; End when the new generation took over, or the
	// attempt failed.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// From and To are the old and the new generation's PIDs (To is 0 if none
	// started); Generation is the new one's number.
	From       int `json:"from"`
	To         int `json:"to,omitempty"`
	Generation int `json:"generation"`
	// Outcome is OK, Failed, Abandoned, Died or Aborted.
	Outcome string `json:"outcome"`
	// Reason says why it failed or died: "exited", "timeout", "start", ... (the
	// cause of the upgrade_failed log line), with Error the whole message and
	// Stderr the new process's last lines on its standard error.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
	Stderr string `json:"stderr,omitempty"`
	// HandoverSeconds is the time from the request to the new generation being
	// ready and confirmed (MAINPID= under systemd). For a two-phase upgrade it is
	// the commit's: from the commit's request to the new generation taking over.
	HandoverSeconds float64 `json:"handover_seconds"`
	// A two-phase upgrade's (`handover prepare`, then `handover commit`): Prepared
	// is when the new generation was ready and waiting, PrepareSeconds the time
	// from Start to then, and Committed when the commit was asked for (zero if it
	// never was). Start is when the prepare was asked for.
	Prepared       time.Time `json:"prepared,omitzero"`
	PrepareSeconds float64   `json:"prepare_seconds,omitempty"`
	Committed      time.Time `json:"committed,omitzero"`
	// The old generation's drain, once it is over: how long it took, how many
	// connections closed by themselves and how many were force-closed, how many
	// idle connections it handed to the new generation instead of closing them,
	// and how many HTTP requests its Servers answered after the handover
	// (requests whose handler returned; not those whose handler hijacked the
	// connection). A library process completes the record of every upgrade of its
	// line, however many followed (each generation passes older drains on). A
	// master cannot see connections: in its records the counts stay 0 (a library
	// child reports them in its own status).
	Drained         bool    `json:"drained"`
	DrainSeconds    float64 `json:"drain_seconds,omitempty"`
	ConnsClosed     int     `json:"conns_closed,omitempty"`
	ConnsForced     int     `json:"conns_forced,omitempty"`
	ConnsHandedOver int     `json:"conns_handed_over,omitempty"`
	RequestsAfter   uint64  `json:"requests_after,omitempty"`
	// DrainKilled says why the old generation's drain was cut short. A master's:
	// why it killed the old child before it exited by itself: "deadline" (SIGKILL
	// at the drain timeout), "max_draining" (more old children drained than
	// -max-draining: the oldest is killed at once) or "stop" (a second stop
	// signal). A library process's: why it force-closed connections (ConnsForced
	// counts them): "deadline" (Config.DrainTimeout) or "max_draining" (more
	// generations drained than Config.MaxDraining: the oldest finishes at once).
	DrainKilled string `json:"drain_killed,omitempty"`
	// ProbationUntil, a library process's only, is when the new generation's
	// probation ends (or ended): until then the old generation, once drained,
	// stands by to serve again should the new one die (graceful.Config.Probation).
	// Zero when there is none (under systemd, or Probation negative). A new
	// generation that dies before it makes the upgrade Died.
	ProbationUntil time.Time `json:"probation_until,omitzero"`
}
