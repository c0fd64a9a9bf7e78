//go:build !linux

package fds

import "github.com/seed-a7250cfa/handover/internal/handoff"

// inheritProcess adopts nothing on this system: every socket is bound by the process.
func inheritProcess() (*Set, error) { return &Set{}, nil }

// ForChild fails: sockets are not passed to new processes on this system.
func (s *Set) ForChild() (*Child, error) { return nil, handoff.ErrUnsupported }
