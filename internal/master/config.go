//go:build linux

package master

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// Defaults for Config's zero values.
const (
	DefaultDrainTimeout    = 30 * time.Second
	DefaultUpgradeTimeout  = 30 * time.Second
	DefaultRestartDelay    = 100 * time.Millisecond
	DefaultRestartDelayMax = 10 * time.Second
	DefaultMaxDraining     = 3
	DefaultPrepareTimeout  = 5 * time.Minute
)

// Config configures the master.
type Config struct {
	// Prog is the program to run, as given (a path, or a name looked up in $PATH).
	// It is resolved again for every child, so that a new build on disk is picked up.
	Prog string
	// Args are its arguments (without argv[0], which is Prog).
	Args []string
	// Dir is the working directory of the children, as the master was given it: the
	// directory it was started in, by the path in $PWD when that names it (os.Getwd),
	// so that a symlink such as /srv/app/current is kept. Its symlinks (and those of
	// the arguments that name files) are resolved for each child started from disk
	// (see launch). "" means the master's working directory, as it is.
	Dir string
	// Listen are the sockets to bind (or, under a socket unit, to take from systemd
	// by name). Under a socket unit an empty Listen passes every socket on.
	Listen []Listen
	// Control is the path of the control socket for `handover reload` and `handover
	// status` ("" for none, unless a socket unit passes one named
	// handoff.ControlName).
	Control string
	// PIDFile, if set, is written (atomically) with the master's PID.
	PIDFile string
	// DrainTimeout is how long a child has, after the stop signal, before SIGKILL.
	DrainTimeout time.Duration
	// UpgradeTimeout bounds how long a new child (first start, restart or upgrade)
	// may take to become ready.
	UpgradeTimeout time.Duration
	// StopSignal is what stops a child: an old one after an upgrade, every one when
	// the master stops. Zero means SIGTERM.
	StopSignal syscall.Signal
	// PrepareTimeout bounds how long a prepared child (`handover prepare`) waits for
	// its commit: past it, it is aborted (killed without having served). Zero means
	// DefaultPrepareTimeout.
	PrepareTimeout time.Duration
	// ReadyAfter, if positive, makes a child that has not sent READY=1 ready once it
	// has run this long. Zero: READY=1 is required.
	ReadyAfter time.Duration
	// RestartDelay and RestartDelayMax bound the backoff before restarting a child
	// that exited while serving: the first restart waits RestartDelay, each failed
	// one doubles it up to RestartDelayMax, a child that served 10s resets it.
	RestartDelay, RestartDelayMax time.Duration
	// MaxDraining bounds how many old children may drain at once (each until its own
	// drain deadline): when an upgrade would make one more, the oldest is killed
	// (SIGKILL to its process group) at once. The upgrade is not refused: a deploy
	// is not blocked by one long-lived connection, and those connections would be
	// cut at their deadline anyway, the oldest first (the library's
	// graceful.Config.MaxDraining does the same). Zero means DefaultMaxDraining.
	MaxDraining int
	// Settle, if positive, is how long a new child must serve after it took over
	// before an upgrade's requester (`handover reload`) is told it succeeded: should
	// the child die meanwhile, the answer is the reason (the upgrade died; the last
	// good build is started). Zero: the answer comes as the new child takes over.
	// Either way a new child that dies within its probation (10 s, or Settle if
	// longer) is replaced by the last good build.
	Settle time.Duration
	// Logger receives the master's logs (every line has event=). nil: slog.Default().
	Logger *slog.Logger
	// Stderr receives the children's stderr, line by line. nil: os.Stderr.
	Stderr io.Writer
}

func (c *Config) setDefaults() error {
	if c.Prog == "" {
		return errors.New("no program to run")
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.UpgradeTimeout <= 0 {
		c.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if c.PrepareTimeout <= 0 {
		c.PrepareTimeout = DefaultPrepareTimeout
	}
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	if c.RestartDelay <= 0 {
		c.RestartDelay = DefaultRestartDelay
	}
	if c.MaxDraining <= 0 {
		c.MaxDraining = DefaultMaxDraining
	}
	if c.RestartDelayMax <= 0 {
		c.RestartDelayMax = max(DefaultRestartDelayMax, c.RestartDelay)
	}
	if c.RestartDelayMax < c.RestartDelay {
		return fmt.Errorf("the restart delay's maximum %s is below its minimum %s", c.RestartDelayMax, c.RestartDelay)
	}
	if c.ReadyAfter >= c.UpgradeTimeout {
		return fmt.Errorf("-ready-after %s is not below -upgrade-timeout %s: a child that does not notify would never be ready in time", c.ReadyAfter, c.UpgradeTimeout)
	}
	if c.Dir == "" {
		c.Dir, _ = os.Getwd()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	return nil
}
