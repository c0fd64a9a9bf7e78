//go:build linux

package master

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The master's processes as the kernel sees them: the one reaper of its children
// (managed ones, and orphans reparented to the master, which is a child subreaper),
// and what /proc says of a process's parent and of the master's children.

// reap is the master's one reaper: it collects the exit status of every child
// (managed or orphaned to the master) whenever SIGCHLD arrives and posts it. SIGCHLD
// is not queued: one signal may stand for several exits, so each wakes a loop of
// wait4(WNOHANG) until no exited child is left. It returns when post fails or done
// is closed.
func reap(sigchld <-chan os.Signal, post func(event) bool, done <-chan struct{}) {
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if !post(reapedEvent{pid: pid, status: syscall.WaitStatus(ws)}) {
				return
			}
		}
		select {
		case <-sigchld:
		case <-done:
			return
		}
	}
}

// procEntry is one of the master's children as /proc shows it.
type procEntry struct {
	pid, pgrp int
	zombie    bool
}

// directChildren lists the master's children (managed ones, and processes
// reparented to it), from /proc.
func directChildren() []procEntry {
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	var out []procEntry
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := statFields(e.Name()) // state ppid pgrp ...
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		if ppid == self {
			out = append(out, procEntry{pid: pid, pgrp: pgrp, zombie: f[0] == "Z"})
		}
	}
	return out
}

// killLeftovers kills (SIGKILL) the processes of process group pgid that were
// reparented to the master (a dead child's helpers), and their own children still in
// the group, and returns how many it found.
func killLeftovers(pgid int) int {
	n := 0
	for _, p := range directChildren() {
		if p.pgrp == pgid {
			unix.Kill(p.pid, syscall.SIGKILL)
			n++
		}
	}
	if n > 0 {
		unix.Kill(-pgid, syscall.SIGKILL)
	}
	return n
}

// orphans lists the master's live children that are not among children.
func orphans(children map[int]*child) []int {
	var out []int
	for _, p := range directChildren() {
		if children[p.pid] == nil && !p.zombie {
			out = append(out, p.pid)
		}
	}
	return out
}

// lineage returns pid and its ancestors, nearest first, stopping below ancestor (the
// master): a child's helper process that notifies is attributed to the child. At most
// 16 generations are followed.
func lineage(pid, ancestor int) []int {
	out := []int{pid}
	for i := 0; i < 16; i++ {
		pp := parentOf(pid)
		if pp <= 1 || pp == ancestor {
			break
		}
		out = append(out, pp)
		pid = pp
	}
	return out
}

// parentOf reads the parent PID from /proc/PID/stat, 0 if it cannot.
func parentOf(pid int) int {
	f := statFields(strconv.Itoa(pid))
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

// statFields returns the fields of /proc/PID/stat after the command name (state,
// ppid, pgrp, ...), or nil if it cannot read them. The name is in parentheses and
// may itself hold spaces and parentheses, so the fields start after the last ')'.
func statFields(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}
