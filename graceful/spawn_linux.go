package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
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
			"WATCHDOG_USEC="+strconv.FormatInt(w.Interval.Microseconds(), 10),
			"WATCHDOG_PID="+strconv.Itoa(os.Getpid()))
	}
	return spec
}

// spawnChild starts the next generation with the process's sockets (or those kept
// in reserve, which stay the caller's), one end of a new handover channel, and a
// pipe as its standard error until the handover (see handoff.Marker.Stderr), whose
// last lines it returns in out. It runs beside the state loop.
//
// batch is the initial batch of messages (see handoff.Message): it is written into
// the channel before the child starts, then "end".
func spawnChild(set *handoff.Set, reserve *handoff.Child, spec childSpec, start startFunc, batch []handoff.Message) (c child, ch *handoff.Channel, out *stderrTail, err error) {
	if err := resolveExecutable(spec.path); err != nil {
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
	for _, m := range append(batch, handoff.Message{Verb: handoff.End}) {
		err := parentEnd.Send(m, sendTimeout)
		closeFiles(m.Files)
		if err != nil {
			parentEnd.Close()
			return nil, nil, nil, fmt.Errorf("the new generation's first messages: %w", err)
		}
	}
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
	return c, parentEnd, relayStderr(r, os.Stderr), nil
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

// child is a started process as the upgrader sees it.
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

// resolveExecutable checks, at upgrade time, that path names an executable regular
// file (following symlinks, so that replacing the file or retargeting a link such as
// /opt/app/current upgrades to the new build).
func resolveExecutable(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("new binary %s does not exist (was it removed or renamed during the deploy?)", path)
	}
	if err != nil {
		return fmt.Errorf("new binary %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("new binary %s is not a regular file (%s)", path, st.Mode().Type())
	}
	if err := unix.Access(path, unix.X_OK); err != nil {
		return fmt.Errorf("new binary %s is not executable (mode %s): %w", path, st.Mode().Perm(), err)
	}
	return nil
}

// startProcess is the real startFunc.
func startProcess(spec childSpec) (child, error) {
	pidfd := -1
	sys := &syscall.SysProcAttr{PidFD: &pidfd}
	if spec.sibling {
		sys.Cloneflags = unix.CLONE_PARENT
	}
	stderr := spec.stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	files := append([]*os.File{os.Stdin, os.Stdout, stderr}, spec.files...)
	p, err := os.StartProcess(spec.path, spec.args, &os.ProcAttr{Env: spec.env, Files: files, Sys: sys})
	if err != nil {
		if _, serr := os.Stat(spec.path); serr == nil && errors.Is(err, fs.ErrNotExist) {
			// execve's ENOENT for a file that exists: what is missing is what it names.
			err = fmt.Errorf("%w (the file exists: the interpreter on its #! line, or its ELF loader, is missing)", err)
		}
		return nil, fmt.Errorf("starting %s: %w", spec.path, err)
	}
	c := &proc{p: p, pid: p.Pid, sibling: spec.sibling, exited: make(chan struct{})}
	if pidfd < 0 {
		// No pidfd (an old kernel): a child of ours can still be waited for.
		if spec.sibling {
			return c, fmt.Errorf("starting %s as a sibling needs pidfd support (Linux 5.4 or later)", spec.path)
		}
		go c.wait()
		return c, nil
	}
	if err := unix.SetNonblock(pidfd, true); err != nil {
		unix.Close(pidfd)
		go c.wait()
		return c, nil
	}
	c.pidfd = os.NewFile(uintptr(pidfd), "pidfd")
	go c.watch()
	return c, nil
}

type proc struct {
	p       *os.Process
	pid     int // p.Pid at start: os.Process sets it to -1 once waited for or released
	sibling bool
	pidfd   *os.File
	exited  chan struct{}

	mu     sync.Mutex
	status string
}

func (c *proc) Pid() int                { return c.pid }
func (c *proc) Exited() <-chan struct{} { return c.exited }

func (c *proc) ExitStatus() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// watch waits, through the runtime's poller, until the pidfd says the process exited.
// Closing the pidfd (Release) ends it.
func (c *proc) watch() {
	rc, err := c.pidfd.SyscallConn()
	if err != nil {
		return
	}
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 0)
		return n > 0
	})
	if err != nil {
		return // released
	}
	if !c.sibling {
		c.reap()
	}
	close(c.exited)
}

// wait is watch without a pidfd.
func (c *proc) wait() {
	c.reap()
	close(c.exited)
}

func (c *proc) reap() {
	st, err := c.p.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.status = err.Error()
	} else {
		c.status = st.String()
	}
}

func (c *proc) Kill() { c.p.Kill() }

func (c *proc) Release() {
	if c.pidfd != nil {
		c.pidfd.Close()
	}
	c.p.Release()
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
