package graceful

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// selfExecutable is this process's own executable, even if the file it was started
// from has been replaced since: the last good build, for a replacement.
const selfExecutable = "/proc/self/exe"

// childSpec builds what a new generation is started with, but its sockets and
// channel (spawnChild adds them).
func (m *machine) childSpec(path string) childSpec {
	spec := childSpec{
		path:    path,
		args:    append([]string{m.exe}, m.cfg.Args...),
		env:     os.Environ(),
		sibling: m.notifier != nil,
		gen:     m.gen + 1,
	}
	if w := m.svc.watchdog; w != nil {
		spec.env = append(spec.env,
			sdnotify.WatchdogUSecEnv+"="+strconv.FormatInt(w.Interval.Microseconds(), 10),
			sdnotify.WatchdogPIDEnv+"="+strconv.Itoa(os.Getpid()))
	}
	return spec
}

// spawnChild starts the next generation with the process's sockets (or those kept
// in reserve, which stay the caller's), one end of a new handover channel, and a
// pipe as its standard error until the handover (see handoff.Marker.Stderr), whose
// last lines it returns in out. It runs beside the state loop.
//
// batch makes the initial batch of messages (see handoff.Message): it is called
// once the child has started, and what it returns is written into the channel, then
// "end". The child reads it in New, after its runtime's start; meanwhile this
// process makes the batch (the history, the TLS keys, SaveState) beside it.
func spawnChild(set *fds.Set, reserve *fds.Child, spec childSpec, start startFunc, batch func() []handoff.Message) (c child, ch *handoff.Channel, out *proc.Tail, err error) {
	if err := proc.Check("new binary", spec.path); err != nil {
		return nil, nil, nil, err
	}
	kids := reserve
	if kids == nil {
		k, err := set.ForChild()
		if err != nil {
			return nil, nil, nil, err
		}
		defer k.Close()
		kids = k
	}
	parentEnd, childEnd, err := handoff.SocketPair()
	if err != nil {
		return nil, nil, nil, err
	}
	defer childEnd.Close()
	// The child's fd 2 until the handover: a pipe we read. Our own stderr goes with
	// it, for the child to put back.
	var r, w, ours *os.File
	if r, w, err = os.Pipe(); err == nil {
		ours, err = handoff.DupFile(os.Stderr, "stderr")
	}
	if err != nil {
		closeFiles([]*os.File{r, w})
		parentEnd.Close()
		return nil, nil, nil, fmt.Errorf("a pipe for the new generation's standard error: %w", err)
	}
	defer w.Close()
	defer ours.Close()
	ppid := os.Getpid()
	if spec.sibling {
		ppid = os.Getppid()
	}
	n := len(kids.Files)
	spec.env = kids.Env(spec.env, handoff.Marker{
		PID:        os.Getpid(),
		PPID:       ppid,
		Channel:    handoff.ListenFDsStart + n,
		Stderr:     handoff.ListenFDsStart + n + 1,
		Generation: spec.gen,
	})
	spec.files = append(append([]*os.File(nil), kids.Files...), childEnd, ours)
	spec.stderr = w
	c, err = start(spec)
	if err != nil {
		r.Close()
		parentEnd.Close()
		return nil, nil, nil, err
	}
	out = proc.Relay(r, os.Stderr)
	sendBatch(parentEnd, batch())
	return c, parentEnd, out, nil
}

// sendBatch writes the initial batch into the channel, then "end", and closes the
// messages' files. A child that went away meanwhile is not written to any more: the
// attempt sees its exit, and reports it with its last words.
func sendBatch(ch *handoff.Channel, batch []handoff.Message) {
	var err error
	for _, m := range append(batch, handoff.Message{Verb: handoff.End}) {
		if err == nil {
			err = ch.Send(m, sendTimeout)
		}
		closeFiles(m.Files)
	}
}

// childSpec is a process the upgrader starts: the new generation.
type childSpec struct {
	path  string
	args  []string // argv, including argv[0]
	env   []string
	files []*os.File // placed at fd 3, 4, ...
	// sibling starts the child with CLONE_PARENT, so that it is a child of this
	// process's parent (the service manager) rather than of this process.
	sibling bool
	gen     int      // the child's generation
	stderr  *os.File // its fd 2; nil means ours
}

// child is a started process as the upgrader sees it (a *proc.Process, or a test's
// fake).
type child interface {
	Pid() int
	// Exited is closed when the process has exited.
	Exited() <-chan struct{}
	// ExitStatus describes how it exited ("exit status 1", "signal: killed"), or ""
	// when this process cannot know (a sibling is reaped by its parent).
	ExitStatus() string
	// Kill sends SIGKILL; Exited is closed once it is dead (and reaped, when it
	// is a child of ours).
	Kill()
	// Release stops watching the process, which lives on.
	Release()
}

// startFunc starts a child; the seam tests replace.
type startFunc func(childSpec) (child, error)

// startProcess is the real startFunc.
func startProcess(spec childSpec) (child, error) {
	p, err := proc.Start(proc.Spec{Path: spec.path, Args: spec.args, Env: spec.env, Files: spec.files, Stderr: spec.stderr, Sibling: spec.sibling})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// holdStderr, in a new generation whose fd 2 is its parent's pipe (see
// handoff.Marker.Stderr), keeps a write to a pipe nobody reads any more (the parent
// died) from killing the process with SIGPIPE until restoreStderr.
func (u *Upgrader) holdStderr() {
	if m := u.set.Marker(); m != nil && m.Stderr != 0 {
		u.pipeSig = make(chan os.Signal, 1)
		signal.Notify(u.pipeSig, syscall.SIGPIPE)
	}
}

// restoreStderr puts the parent's own standard error back at fd 2, once the
// handover is settled (confirmed, abandoned, or the parent gone).
func (u *Upgrader) restoreStderr() {
	f := u.set.Stderr()
	if f == nil {
		return
	}
	unix.Dup3(int(f.Fd()), 2, 0)
	f.Close()
	if u.pipeSig != nil {
		signal.Stop(u.pipeSig)
	}
}
