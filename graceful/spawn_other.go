//go:build !linux

package graceful

import (
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
)

const selfExecutable = ""

type childSpec struct{}

// child is a started process; there are none on this system.
type child interface {
	Pid() int
	Exited() <-chan struct{}
	ExitStatus() string
	Kill()
	Release()
}

type startFunc func(childSpec) (child, error)

func startProcess(childSpec) (child, error) { return nil, handoff.ErrUnsupported }

func (m *machine) childSpec(path string) childSpec { return childSpec{} }

func spawnChild(*fds.Set, *fds.Child, childSpec, startFunc, func() []handoff.Message) (child, *handoff.Channel, *proc.Tail, error) {
	return nil, nil, nil, handoff.ErrUnsupported
}

func (u *Upgrader) holdStderr()    {}
func (u *Upgrader) restoreStderr() {}
