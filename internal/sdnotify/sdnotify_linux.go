//go:build linux

package sdnotify

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// FromEnv returns a Notifier for $NOTIFY_SOCKET, nil when it is unset or empty, or an
// error when it is not an absolute path or an abstract socket name ("@name"). The
// variable is left in the environment: a child that becomes the service's main
// process needs it.
func FromEnv() (*Notifier, error) {
	return Parse(os.Getenv(Env))
}

// Send sends state (for example "READY=1\nSTATUS=serving"), with fds attached if
// any. Without fds it is go-systemd's daemon.SdNotify; with fds, what go-systemd
// lacks (sd_pid_notify_with_fds): a datagram carrying SCM_RIGHTS, sent without
// blocking (a service manager that is not reading makes it fail, not wait).
func (n *Notifier) Send(state string, fds ...int) error {
	if n == nil {
		return nil
	}
	if len(fds) == 0 {
		if _, err := daemon.SdNotify(false, state); err != nil {
			return fmt.Errorf("sd_notify to %s: %w", n.addr, err)
		}
		return nil
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer unix.Close(s)
	oob := unix.UnixRights(fds...)
	if err := unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: n.addr}, 0); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", n.addr, err)
	}
	return nil
}

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
