// Package proc inspects, waits for and reaps processes by PID, for
// end-to-end tests whose server processes re-exec themselves.
//
// When a server upgrades by fork-exec, the new generation is a child of the
// old one; once the old one exits, the new one is reparented. A test that
// calls SetSubreaper (from TestMain) becomes that new parent, so it can see
// every generation with Children, and must reap each one by PID with Reap or
// KillAndReap. Nothing here ever waits for "any child" or signals by name.
//
// Everything reads /proc directly. Note that /proc/<pid>/task/*/children is
// not available on every kernel (it needs CONFIG_PROC_CHILDREN), so Children
// scans /proc/*/stat for the parent PID instead.
package proc

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SetSubreaper marks the calling process as a child subreaper
// (prctl PR_SET_CHILD_SUBREAPER), so orphaned descendants are reparented to
// it rather than to init. Call it from TestMain before starting processes.
func SetSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("proc: prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}

// stat returns the state letter and parent PID from /proc/<pid>/stat.
func stat(pid int) (state string, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, err
	}
	// "pid (comm) S ppid ..."; comm may contain spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, fmt.Errorf("proc: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return "", 0, fmt.Errorf("proc: malformed /proc/%d/stat", pid)
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0], ppid, err
}

// State returns the process state letter from /proc/<pid>/stat ("R", "S",
// "D", "T", "Z", ...), or "" if the process does not exist (or was reaped).
func State(pid int) string {
	s, _, err := stat(pid)
	if err != nil {
		return ""
	}
	return s
}

// Alive reports whether pid exists and is neither a zombie nor dead.
func Alive(pid int) bool {
	s := State(pid)
	return s != "" && s != "Z" && s != "X" && s != "x"
}

// Zombie reports whether pid has exited but not been reaped yet.
func Zombie(pid int) bool { return State(pid) == "Z" }

// PPid returns the parent PID of pid, or 0 if pid does not exist.
func PPid(pid int) int {
	_, pp, err := stat(pid)
	if err != nil {
		return 0
	}
	return pp
}

// FDCount returns the number of open file descriptors of pid (entries of
// /proc/<pid>/fd), or -1 if they cannot be read.
func FDCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// Cmdline returns the command line of pid with arguments joined by spaces,
// or "" if unavailable (e.g. for a zombie).
func Cmdline(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// parents maps every visible process to its parent PID.
func parents() map[int]int {
	m := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, pp, err := stat(pid); err == nil {
			m[pid] = pp
		}
	}
	return m
}

// Children returns the direct children of pid (including zombies), sorted.
func Children(pid int) []int {
	var out []int
	for c, pp := range parents() {
		if pp == pid {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// Descendants returns all descendants of pid (children, grandchildren, ...),
// sorted, from one snapshot of /proc.
func Descendants(pid int) []int {
	kids := map[int][]int{}
	for c, pp := range parents() {
		kids[pp] = append(kids[pp], c)
	}
	var out []int
	seen := map[int]bool{pid: true}
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range kids[p] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Reap waits up to timeout for the child pid to exit and reaps it, polling
// wait4(pid, WNOHANG). pid must be a child of the test process (directly, or
// reparented through SetSubreaper). It never waits for any other PID.
//
// Do not Reap a process whose exec.Cmd you will also Wait for: only one of
// them can collect the exit status.
func Reap(pid int, timeout time.Duration) (syscall.WaitStatus, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("proc: refusing to wait for pid %d", pid)
	}
	deadline := time.Now().Add(timeout)
	for pause := time.Millisecond; ; pause = min(2*pause, 20*time.Millisecond) {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, fmt.Errorf("proc: wait4(%d): %w (not a child of this process, or already reaped)", pid, err)
		case got == pid:
			return syscall.WaitStatus(ws), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("proc: pid %d (state %q, %s) did not exit within %v", pid, State(pid), Cmdline(pid), timeout)
		}
		time.Sleep(pause)
	}
}

// End waits up to timeout for pid to exit and be reaped, by whichever process is
// its parent: the test process reaps it if it is its child (directly, or
// reparented through SetSubreaper); otherwise its own parent does, such as an old
// generation still standing by for its successor's probation, which reaps the
// successor when it exits. It reports whether the test process reaped it (then ws
// is its status). It never waits for any other PID.
func End(pid int, timeout time.Duration) (ws syscall.WaitStatus, reaped bool, err error) {
	if pid <= 0 {
		return 0, false, fmt.Errorf("proc: refusing to wait for pid %d", pid)
	}
	deadline := time.Now().Add(timeout)
	for pause := time.Millisecond; ; pause = min(2*pause, 20*time.Millisecond) {
		var uws unix.WaitStatus
		got, err := unix.Wait4(pid, &uws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case got == pid:
			return syscall.WaitStatus(uws), true, nil
		case errors.Is(err, unix.ECHILD) && State(pid) == "":
			return 0, false, nil // reaped by its own parent
		case err != nil && !errors.Is(err, unix.ECHILD):
			return 0, false, fmt.Errorf("proc: wait4(%d): %w", pid, err)
		}
		if time.Now().After(deadline) {
			return 0, false, fmt.Errorf("proc: pid %d (state %q, parent %d, %s) did not end within %v", pid, State(pid), PPid(pid), Cmdline(pid), timeout)
		}
		time.Sleep(pause)
	}
}

// KillAndReap sends SIGKILL to pid and reaps it within timeout. It refuses
// pid <= 1 and the test process itself.
func KillAndReap(pid int, timeout time.Duration) (syscall.WaitStatus, error) {
	if pid <= 1 || pid == os.Getpid() {
		return 0, fmt.Errorf("proc: refusing to kill pid %d", pid)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return 0, fmt.Errorf("proc: kill(%d, SIGKILL): %w", pid, err)
	}
	return Reap(pid, timeout)
}

// WaitFor polls cond until it returns true or timeout passes. The error
// names what was awaited, e.g. WaitFor(f, 5*time.Second, "pid file to name
// a new pid") fails with "proc: timed out after 5s waiting for pid file to
// name a new pid".
func WaitFor(cond func() bool, timeout time.Duration, what string) error {
	deadline := time.Now().Add(timeout)
	for pause := time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proc: timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pause)
	}
}

// LeakCheck returns an error describing every child of the test process
// that is a zombie (never reaped) or is still running without being in
// allowed. A nil error means the test left nothing behind.
func LeakCheck(allowed ...int) error {
	var bad []string
	for _, c := range Children(os.Getpid()) {
		st := State(c)
		switch {
		case st == "":
			continue // exited and reaped since the snapshot
		case st == "Z":
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c))
			bad = append(bad, fmt.Sprintf("pid %d: zombie (exited, not reaped): %s", c, strings.TrimSpace(string(comm))))
		case !slices.Contains(allowed, c):
			bad = append(bad, fmt.Sprintf("pid %d: state %s, still running: %q", c, st, Cmdline(c)))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("proc: leaked children of pid %d:\n  %s", os.Getpid(), strings.Join(bad, "\n  "))
	}
	return nil
}
