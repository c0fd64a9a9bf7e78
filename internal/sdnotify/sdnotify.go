// Package sdnotify speaks systemd's notification protocol (sd_notify(3)): datagrams of
// newline-separated KEY=VALUE assignments sent to $NOTIFY_SOCKET, optionally carrying
// file descriptors (FDSTORE=1) and confirmed with BARRIER=1. It behaves like
// libsystemd's sd_pid_notify_with_fds for the calling process.
package sdnotify

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Env is the variable naming the service manager's notification socket.
const Env = "NOTIFY_SOCKET"

// Notifier sends notifications to one socket. A nil *Notifier is valid and sends
// nothing: the process is not running under a service manager that listens.
type Notifier struct {
	addr string
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET, nil when it is unset or empty, or an
// error when it is not an absolute path or an abstract socket name ("@name"). The
// variable is left in the environment: a child that becomes the service's main
// process needs it.
func FromEnv() (*Notifier, error) {
	return Parse(os.Getenv(Env))
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

// Send sends state (for example "READY=1\nSTATUS=serving") with fds attached.
func (n *Notifier) Send(state string, fds ...int) error {
	if n == nil {
		return nil
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer unix.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: n.addr}, 0); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", n.addr, err)
	}
	return nil
}

// ErrBarrierTimeout is returned by Barrier when the service manager did not confirm
// in time.
var ErrBarrierTimeout = errors.New("sd_notify: BARRIER=1 not confirmed in time")

// Barrier sends BARRIER=1 with one end of a pipe and waits, up to timeout, until the
// service manager closes it: by then it has processed every notification this
// process sent before.
func (n *Notifier) Barrier(timeout time.Duration) error {
	if n == nil {
		return nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("sd_notify barrier: %w", err)
	}
	defer unix.Close(p[0])
	err := n.Send("BARRIER=1", p[1])
	unix.Close(p[1])
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return ErrBarrierTimeout
		}
		fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sd_notify barrier: %w", err)
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			return nil
		}
	}
}

// MonotonicUsec returns "MONOTONIC_USEC=<now>", which must accompany RELOADING=1.
func MonotonicUsec() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return "MONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}

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
		return nil, fmt.Errorf("WATCHDOG_USEC=%q is not a number of microseconds", clip(usec))
	}
	if u == 0 || u > uint64((1<<63-1)/int64(time.Microsecond)) {
		return nil, fmt.Errorf("WATCHDOG_USEC=%d is out of range", u)
	}
	if pidValue != "" {
		pid, err := strconv.Atoi(pidValue)
		if err != nil || pid <= 0 || strings.HasPrefix(pidValue, "+") {
			return nil, fmt.Errorf("WATCHDOG_PID=%q is not a process ID", clip(pidValue))
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

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
