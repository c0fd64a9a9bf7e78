package proc

import (
	"fmt"
	"os"
	"runtime"
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
	// (Linux 5.3 or later), and its parent reaps it.
	Sibling bool
}

// Process is a started process.
type Process struct {
	pid     int
	sibling bool
	pidfd   *os.File // nil without pidfd support
	exited  chan struct{}

	mu       sync.Mutex
	status   string
	reaped   bool // its PID may name another process now
	released bool
}

// Start starts the process spec describes and watches it: Exited is closed when it
// has exited (and been reaped, when it is a child of this process). An execve error
// is explained (ExplainExec).
//
// It starts the process with syscall.StartProcess, not os.StartProcess: the first
// os.StartProcess of a process checks whether pidfds work by starting and reaping a
// throwaway process (os.checkPidfd: 1 to 5 ms, on the path of the first upgrade).
// Start asks the kernel for the new process's pidfd (CLONE_PIDFD) when pidfd_open
// works, which one system call tells, once.
func Start(spec Spec) (*Process, error) {
	withPidfd := pidfdWorks()
	if spec.Sibling && !withPidfd {
		return nil, fmt.Errorf("starting %s as a sibling needs pidfd support (Linux 5.3 or later)", spec.Path)
	}
	pidfd := -1
	sys := &syscall.SysProcAttr{}
	if withPidfd {
		sys.PidFD = &pidfd
	}
	if spec.Sibling {
		sys.Cloneflags = unix.CLONE_PARENT
	}
	stderr := spec.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	files := append([]*os.File{os.Stdin, os.Stdout, stderr}, spec.Files...)
	fds := make([]uintptr, len(files))
	for i, f := range files {
		fds[i] = f.Fd()
	}
	pid, _, err := syscall.StartProcess(spec.Path, spec.Args, &syscall.ProcAttr{Env: spec.Env, Files: fds, Sys: sys})
	runtime.KeepAlive(files)
	if err != nil {
		err = &os.PathError{Op: "fork/exec", Path: spec.Path, Err: err}
		return nil, fmt.Errorf("starting %s: %w", spec.Path, ExplainExec(spec.Path, err))
	}
	c := &Process{pid: pid, sibling: spec.Sibling, exited: make(chan struct{})}
	if pidfd < 0 {
		// No pidfd (a kernel that ignored CLONE_PIDFD): a child of ours can still be
		// waited for.
		if spec.Sibling {
			syscall.Kill(pid, syscall.SIGKILL)
			return nil, fmt.Errorf("starting %s as a sibling needs pidfd support (Linux 5.3 or later)", spec.Path)
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

// pidfdWorks reports whether this system has pidfds (pidfd_open, Linux 5.3; not
// refused by a seccomp filter), which implies CLONE_PIDFD (5.2) and polling a pidfd
// for the exit (5.3).
var pidfdWorks = sync.OnceValue(func() bool {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
})

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
// child of this process). After Release it does nothing.
func (c *Process) Kill() {
	if c.pidfd != nil {
		// Through the pidfd, which names this process even after its PID is reused;
		// Control fails once Release has closed it.
		if rc, err := c.pidfd.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) })
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.reaped && !c.released {
		syscall.Kill(c.pid, syscall.SIGKILL)
	}
}

// Release stops watching the process, which lives on.
func (c *Process) Release() {
	if c.pidfd != nil {
		c.pidfd.Close()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = true
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

// wait is watch without a pidfd: it waits until the child can be reaped without
// reaping it (WNOWAIT), so that Kill, which holds mu, never signals a PID already
// reused, then reaps it.
func (c *Process) wait() {
	var info unix.Siginfo
	for unix.Waitid(unix.P_PID, c.pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
	c.reap()
	close(c.exited)
}

// reap reaps the child, which has exited, and keeps how it ended. It holds mu
// meanwhile (wait4 returns at once), so that Kill never signals the PID once reaped.
func (c *Process) reap() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ws syscall.WaitStatus
	var err error
	for {
		if _, err = syscall.Wait4(c.pid, &ws, 0, nil); err != syscall.EINTR {
			break
		}
	}
	c.reaped = true
	if err != nil {
		c.status = os.NewSyscallError("wait", err).Error()
		return
	}
	c.status = Describe(ws)
}
