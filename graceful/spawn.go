package graceful

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// childSpec is a process the upgrader starts: the new generation.
type childSpec struct {
	path  string
	args  []string // argv, including argv[0]
	env   []string
	files []*os.File // placed at fd 3, 4, ...
	// sibling starts the child with CLONE_PARENT, so that it is a child of this
	// process's parent (the service manager) rather than of this process.
	sibling bool
}

// child is a started process as the upgrader sees it.
type child interface {
	Pid() int
	// Exited is closed when the process has exited.
	Exited() <-chan struct{}
	// ExitStatus describes how it exited ("exit status 1", "signal: killed"), or ""
	// when this process cannot know (a sibling is reaped by its parent).
	ExitStatus() string
	// Kill sends SIGKILL and, for a child of ours, reaps it.
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

// executablePath returns the absolute path this process was started as, without
// resolving symlinks (os.Executable would resolve /opt/app/current to the build it
// points at now, and an upgrade would restart the old build).
func executablePath(argv0 string) (string, error) {
	p := argv0
	if filepath.Base(p) == p {
		lp, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("cannot find the executable %q in PATH: %w", argv0, err)
		}
		p = lp
	}
	return filepath.Abs(p)
}

// startProcess is the real startFunc.
func startProcess(spec childSpec) (child, error) {
	pidfd := -1
	sys := &syscall.SysProcAttr{PidFD: &pidfd}
	if spec.sibling {
		sys.Cloneflags = unix.CLONE_PARENT
	}
	files := append([]*os.File{os.Stdin, os.Stdout, os.Stderr}, spec.files...)
	p, err := os.StartProcess(spec.path, spec.args, &os.ProcAttr{Env: spec.env, Files: files, Sys: sys})
	if err != nil {
		if _, serr := os.Stat(spec.path); serr == nil && errors.Is(err, fs.ErrNotExist) {
			// execve's ENOENT for a file that exists: what is missing is what it names.
			err = fmt.Errorf("%w (the file exists: the interpreter on its #! line, or its ELF loader, is missing)", err)
		}
		return nil, fmt.Errorf("starting %s: %w", spec.path, err)
	}
	c := &proc{p: p, sibling: spec.sibling, exited: make(chan struct{})}
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
	sibling bool
	pidfd   *os.File
	exited  chan struct{}

	mu     sync.Mutex
	status string
	reaped bool
}

func (c *proc) Pid() int                { return c.p.Pid }
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
	c.reaped = true
	if err != nil {
		c.status = err.Error()
	} else {
		c.status = st.String()
	}
}

func (c *proc) Kill() {
	c.p.Kill()
	if c.sibling {
		// The service manager reaps it, but wait (through the pidfd) until it is
		// dead, so that it does not outlive this process: on a stop, systemd would
		// otherwise find it in the unit's cgroup and kill it itself.
		select {
		case <-c.exited:
		case <-time.After(time.Second):
		}
		return
	}
	<-c.exited
}

func (c *proc) Release() {
	if c.pidfd != nil {
		c.pidfd.Close()
	}
	c.p.Release()
}
