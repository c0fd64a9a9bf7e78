// Package sdnotify is what handover needs of systemd's notification protocol
// (sd_notify(3)) beyond go-systemd: plain notifications go through go-systemd's
// daemon.SdNotify; this package adds what go-systemd lacks, notifications carrying
// file descriptors (FDSTORE=1, as libsystemd's sd_pid_notify_with_fds) and
// BARRIER=1, plus the parsing of $NOTIFY_SOCKET and of the watchdog variables with
// errors that say what is wrong (a handover child accepts a WATCHDOG_PID naming its
// parent, which go-systemd's SdWatchdogEnabled refuses). Only Linux has a service
// manager: elsewhere FromEnv returns nil.
package sdnotify

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Env is the variable naming the service manager's notification socket.
const Env = "NOTIFY_SOCKET"

// Notifier sends notifications to one socket. A nil *Notifier is valid and sends
// nothing: the process is not running under a service manager that listens.
type Notifier struct {
	addr string
}

// Parse validates a NOTIFY_SOCKET value (see FromEnv).
func Parse(addr string) (*Notifier, error) {
	if addr == "" {
		return nil, nil
	}
	if len(addr) > 107 {
		return nil, fmt.Errorf("%s is %d bytes long; a unix socket path has at most 107", Env, len(addr))
	}
	if addr[0] != '/' && addr[0] != '@' {
		return nil, fmt.Errorf("%s=%q is neither an absolute path nor an abstract socket (@name)", Env, addr)
	}
	if strings.ContainsRune(addr, 0) {
		return nil, fmt.Errorf("%s contains a NUL byte", Env)
	}
	return &Notifier{addr: addr}, nil
}

// ErrBarrierTimeout is returned by Barrier when the service manager did not confirm
// in time.
var ErrBarrierTimeout = errors.New("sd_notify: BARRIER=1 not confirmed in time")

// The variables of the service watchdog (sd_watchdog_enabled(3)).
const (
	WatchdogUSecEnv = "WATCHDOG_USEC"
	WatchdogPIDEnv  = "WATCHDOG_PID"
)

// Watchdog is the service watchdog the manager asked for.
type Watchdog struct {
	// Interval is WATCHDOG_USEC: the manager's timeout. Ping at half of it.
	Interval time.Duration
}

// ParseWatchdog reads WATCHDOG_USEC and WATCHDOG_PID. It returns nil when no watchdog
// is configured for this process: usec unset, or pidValue naming a process that is not
// one of ours (ours lists the PIDs that count: this process, and the handover parent
// that passed the variables on). It is an error when a value is malformed.
func ParseWatchdog(usec, pidValue string, ours ...int) (*Watchdog, error) {
	if usec == "" {
		return nil, nil
	}
	u, err := strconv.ParseUint(usec, 10, 64)
	if err != nil || strings.HasPrefix(usec, "+") {
		return nil, fmt.Errorf("%s=%q is not a number of microseconds", WatchdogUSecEnv, clip(usec))
	}
	if u == 0 || u > uint64((1<<63-1)/int64(time.Microsecond)) {
		return nil, fmt.Errorf("%s=%d is out of range", WatchdogUSecEnv, u)
	}
	if pidValue != "" {
		pid, err := strconv.Atoi(pidValue)
		if err != nil || pid <= 0 || strings.HasPrefix(pidValue, "+") {
			return nil, fmt.Errorf("%s=%q is not a process ID", WatchdogPIDEnv, clip(pidValue))
		}
		mine := false
		for _, p := range ours {
			mine = mine || p == pid
		}
		if !mine {
			return nil, nil
		}
	}
	return &Watchdog{Interval: time.Duration(u) * time.Microsecond}, nil
}

// WatchdogFromEnv is ParseWatchdog of this process's environment, whose watchdog
// variables it then clears, so that no program the process starts inherits them.
func WatchdogFromEnv(ours ...int) (*Watchdog, error) {
	w, err := ParseWatchdog(os.Getenv(WatchdogUSecEnv), os.Getenv(WatchdogPIDEnv), ours...)
	os.Unsetenv(WatchdogUSecEnv)
	os.Unsetenv(WatchdogPIDEnv)
	return w, err
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
