package proc

import (
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spec is a process to start.
type Spec struct {
	Path string
	Args []string // argv, argv[0] included
	Env  []string
	// Files are placed at fd 3, 4, ...
	Files []*os.File
	// Stderr is its fd 2; nil means this process's own.
	Stderr *os.File
	// Sibling starts it with CLONE_PARENT: it is a child of this process's parent
	// (the service manager), not of this process. Its exit is seen through a pidfd
	// (Linux 5.4 or later), and its parent reaps it.
	Sibling bool
}

// Process is a started process.
type Process struct {
	p       *os.Process
	pid     int // p.Pid at start: os.Process sets it to -1 once waited for or released
	sibling bool
	pidfd   *os.File
	exited  chan struct{}

	mu     sync.Mutex
	status string
}

// Start starts the process spec describes and watches it: Exited is closed when it
// has exited (and been reaped, when it is a child of this process). An execve error
// is explained (ExplainExec).
func Start(spec Spec) (*Process, error) {
	pidfd := -1
	sys := &syscall.SysProcAttr{PidFD: &pidfd}
	if spec.Sibling {
		sys.Cloneflags = unix.CLONE_PARENT
	}
	stderr := spec.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	files := append([]*os.File{os.Stdin, os.Stdout, stderr}, spec.Files...)
	p, err := os.StartProcess(spec.Path, spec.Args, &os.ProcAttr{Env: spec.Env, Files: files, Sys: sys})
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", spec.Path, ExplainExec(spec.Path, err))
	}
	c := &Process{p: p, pid: p.Pid, sibling: spec.Sibling, exited: make(chan struct{})}
	if pidfd < 0 {
		// No pidfd (an old kernel): a child of ours can still be waited for.
		if spec.Sibling {
			p.Kill()
			p.Release()
			return nil, fmt.Errorf("starting %s as a sibling needs pidfd support (Linux 5.4 or later)", spec.Path)
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

// Pid returns the process's PID.
func (c *Process) Pid() int { return c.pid }

// Exited is closed when the process has exited (and, when it is a child of this
// process, been reaped).
func (c *Process) Exited() <-chan struct{} { return c.exited }

// ExitStatus describes how it exited (Describe), or "" when this process cannot
// know (a sibling is reaped by its parent), or before Exited.
func (c *Process) ExitStatus() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Kill sends SIGKILL; Exited is closed once it is dead (and reaped, when it is a
// child of this process).
func (c *Process) Kill() { c.p.Kill() }

// Release stops watching the process, which lives on.
func (c *Process) Release() {
	if c.pidfd != nil {
		c.pidfd.Close()
	}
	c.p.Release()
}

// watch waits, through the runtime's poller, until the pidfd says the process exited.
// Closing the pidfd (Release) ends it.
func (c *Process) watch() {
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
func (c *Process) wait() {
	c.reap()
	close(c.exited)
}

func (c *Process) reap() {
	st, err := c.p.Wait()
	status := ""
	if err != nil {
		status = err.Error()
	} else {
		status = Describe(st.Sys().(syscall.WaitStatus))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status = status
}
