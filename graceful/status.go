package graceful

// Status is a snapshot of a server process, as Upgrader.Status returns it and as
// `handover status -json` prints it: one type for the library, the control socket and
// the command line. Under `handover run`, the master answers with the same type
// (PID is the master's; Child names the serving child).
type Status struct {
	// PID is the process that answered: the current generation, or the master.
	PID int `json:"pid"`
	// Generation is 1 for the first process of a line, n+1 for one started by n.
	Generation int `json:"generation"`
	// State is one of "starting", "serving", "upgrading" (a new generation is
	// starting), "draining" (a new generation took over; this one finishes its
	// connections), "stopping" (draining after SIGTERM) and "exited" (drained;
	// Wait has returned).
	State string `json:"state"`
	// Executable is the program the next upgrade starts.
	Executable string `json:"executable"`
	// Systemd is true when a service manager supervises the process
	// ($NOTIFY_SOCKET was set).
	Systemd bool `json:"systemd"`
	// Listeners are the sockets the process holds and passes on at an upgrade.
	Listeners []Socket `json:"listeners"`
	// Connections counts the open connections of every Server and Drainer of the
	// process, by state.
	Connections ConnCounts `json:"connections"`
	// Upgrading is the PID of the new generation being started, or 0.
	Upgrading int `json:"upgrading,omitempty"`
	// LastError is why the last upgrade failed, if it did (cleared by a successful
	// one).
	LastError string `json:"last_error,omitempty"`
	// Child is the PID of the serving child, under `handover run`.
	Child int `json:"child,omitempty"`
	// ChildExecutable, under `handover run`, is the file the serving child runs, as
	// the master keeps it open, and whether it is the last good build (the one
	// restarts start, even once the file on disk was replaced).
	ChildExecutable string `json:"child_executable,omitempty"`
	// Restarts counts the serving children `handover run` restarted after a crash.
	Restarts int `json:"restarts,omitempty"`
	// OlderDraining counts the older generations still draining.
	OlderDraining int `json:"older_draining,omitempty"`
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
