//go:build !linux

package sdnotify

import "time"

// FromEnv returns nil: there is no service manager to notify on this system.
func FromEnv() (*Notifier, error) { return nil, nil }

// Send does nothing.
func (n *Notifier) Send(state string, fds ...int) error { return nil }

// Barrier does nothing.
func (n *Notifier) Barrier(timeout time.Duration) error { return nil }

// MonotonicUsec returns a RELOADING=1 companion no one reads on this system.
func MonotonicUsec() string { return "MONOTONIC_USEC=0" }
