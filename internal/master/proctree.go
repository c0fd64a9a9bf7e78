//go:build linux

package master

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

// The master's processes as the kernel sees them: the one reaper of its children
// (managed ones, and orphans reparented to the master, which is a child subreaper),
// the signals it sends them, and what /proc says of a process's parent and of the
// master's children.
//
// A PID is reused once its process is reaped, and the reaper runs beside the loop
// that decides what to signal: a PID the loop still holds may be another process's
// by the time it signals it. So a managed child is signalled through the pidfd it
// was started with (pidfd_send_signal: a reaped child gets nothing, whatever has its
// PID now), and a process group or an orphan only under reapMu, which the reaper
// holds around each wait4: while it is held, no child of the master can be reaped,
// so the PIDs the master finds among its children (and the groups they are in)
// stay theirs.

// reapMu is held by the reaper around each wait4, and by whoever signals a process
// by its PID (a group, an orphan).
var reapMu sync.Mutex

// reap is the master's one reaper: it collects the exit status of every child
// (managed or orphaned to the master) whenever SIGCHLD arrives and posts it. SIGCHLD
// is not queued: one signal may stand for several exits, so each wakes a loop of
// wait4(WNOHANG) until no exited child is left. It returns when post fails or done
// is closed.
func reap(sigchld <-chan os.Signal, post func(event) bool, done <-chan struct{}) {
	for {
		for {
			var ws unix.WaitStatus
			reapMu.Lock()
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			reapMu.Unlock()
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

// signalChild sends sig to c through the pidfd it was started with: if c has been
// reaped meanwhile, nothing is signalled (ESRCH), whatever process has its PID now.
// With group, sig goes to c's process group (its PID) instead, only while c is not
// reaped (checked through the pidfd under reapMu): its PID, the group's ID, is then
// not another process's.
//
// Without a pidfd (a kernel older than Linux 5.2), c is signalled by its PID under
// reapMu, once waitid (WNOWAIT) has said it is still an unreaped child of the
// master.
func signalChild(c *child, sig syscall.Signal, group bool) error {
	if c.pidfd == nil {
		return signalUnreaped(c.pid, sig, group)
	}
	fd := int(c.pidfd.Fd())
	if !group {
		return unix.PidfdSendSignal(fd, sig, nil, 0)
	}
	reapMu.Lock()
	defer reapMu.Unlock()
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
		return err
	}
	return unix.Kill(-c.pid, sig)
}

// signalUnreaped sends sig to pid (its process group, with group) if pid is a child
// of the master that is not reaped: under reapMu, it stays one until signalled.
func signalUnreaped(pid int, sig syscall.Signal, group bool) error {
	reapMu.Lock()
	defer reapMu.Unlock()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return fmt.Errorf("child %d: %w", pid, err)
	}
	if group {
		pid = -pid
	}
	return unix.Kill(pid, sig)
}

// genOf returns the generation process pid was started with (HANDOVER_GENERATION in
// its environment, which every child gets and the processes it starts inherit), 0
// if it has none or it cannot be read.
func genOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return 0
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, handoff.GenerationEnv+"="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// owned reports whether orphan p (a process reparented to the master) belongs to a
// live managed child of children: one whose PID is p's process group (its own
// helpers), or whose generation p's environment names (a helper that left the
// child's process group, with setsid say, but inherited its environment).
func owned(p procEntry, children map[int]*child) bool {
	if c := children[p.pgrp]; c != nil && !c.reaped {
		return true
	}
	if gen := genOf(p.pid); gen != 0 {
		for _, c := range children {
			if c.gen == gen && !c.reaped {
				return true
			}
		}
	}
	return false
}

// holds reports whether process pid has open one of the sockets whose inodes are
// in socks (the master's listening sockets).
func holds(pid int, socks map[uint64]bool) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		link, _ := os.Readlink(dir + "/" + e.Name())
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64)
			if socks[n] {
				return true
			}
		}
	}
	return false
}

// killLeftovers kills (SIGKILL) the processes reparented to the master that no live
// managed child of children owns (owned) and that a child left behind: those in
// dead's process group (dead, a child that exited or whose drain deadline came),
// those whose environment names a generation (HANDOVER_GENERATION: a dead child's
// helper that left its process group, with setsid say), and those that hold one of
// the master's sockets (socks, by inode: whatever they are, they would serve on
// them). Other orphans (a `docker exec` command's, of a master that is PID 1) are
// left alone. With dead nil (the master's end), every orphan no live child owns is
// killed. Each one's process group goes with it (unless it is the master's own). It
// returns their PIDs. The whole runs under reapMu: none of them can be reaped, and
// its PID reused, before it is killed.
func killLeftovers(dead *child, children map[int]*child, socks map[uint64]bool) []int {
	reapMu.Lock()
	defer reapMu.Unlock()
	self := unix.Getpgrp()
	var killed []int
	for _, p := range directChildren() {
		if children[p.pid] != nil || p.zombie || owned(p, children) {
			continue
		}
		if dead != nil && p.pgrp != dead.pid && genOf(p.pid) == 0 && !holds(p.pid, socks) {
			continue
		}
		unix.Kill(p.pid, syscall.SIGKILL)
		if p.pgrp != self {
			unix.Kill(-p.pgrp, syscall.SIGKILL)
		}
		killed = append(killed, p.pid)
	}
	return killed
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
