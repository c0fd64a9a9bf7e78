package main

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Syscall numbers (x86_64) the analysis looks at.
const (
	sysWrite      = 1
	sysWritev     = 20
	sysAccept     = 43
	sysSendto     = 44
	sysSendmsg    = 46
	sysClone      = 56
	sysExecve     = 59
	sysKill       = 62
	sysExitGroup  = 231
	sysAccept4    = 288
	sysExecveat   = 322
	sysRseq       = 334
	sysPidfdSend  = 424
	sysClone3     = 435
	sysCloseRange = 436
)

// tracedSyscalls are recorded on entry; tracedExits on exit (for their result).
var (
	tracedSyscalls = []int{sysWrite, sysWritev, sysAccept, sysSendto, sysSendmsg, sysClone, sysExecve, sysKill,
		sysExitGroup, sysAccept4, sysExecveat, sysRseq, sysPidfdSend, sysClone3, sysCloseRange}
	tracedExits = []int{sysAccept, sysAccept4, sysClone, sysClone3, sysExecve, sysExecveat}
)

// Kinds of events.
const (
	evEnter   = iota // raw_syscalls:sys_enter
	evExit           // raw_syscalls:sys_exit
	evGen            // signal:signal_generate (in the sender's context)
	evDeliver        // signal:signal_deliver (in the receiver's)
	evFork           // sched:sched_process_fork (processes and threads)
	evExec           // sched:sched_process_exec
	evExitP          // sched:sched_process_exit
	evProbe          // a uprobe of ours
	evFault          // a page fault (software event page-faults, every one: -c 1)
)

// event is one line of `perf script -F comm,pid,tid,time,event,trace`.
type event struct {
	t        float64 // seconds, CLOCK_MONOTONIC (perf record -k mono)
	comm     string
	pid, tid int // tgid and thread
	kind     int
	nr       int      // syscall number (enter, exit)
	args     []uint64 // syscall arguments (enter), first three
	ret      int64    // syscall result (exit)
	sig      int      // signal (gen, deliver)
	target   int      // signal_generate: the target pid; fork: the child's id
	file     string   // exec: the file
	dead     bool     // process exit: the whole group is dead
	probe    string   // uprobe: "bin__short"
}

var lineRE = regexp.MustCompile(`^\s*(.+?)\s+(\d+)/(\d+)\s+(\d+\.\d+):\s+(?:\d+\s+)?([\w:-]+):\s*(.*)$`)

// parseLine parses one line; ok is false for lines of no interest.
func parseLine(line, probeGroup string) (e event, ok bool) {
	m := lineRE.FindStringSubmatch(line)
	if m == nil {
		return e, false
	}
	e.comm = m[1]
	e.pid, _ = strconv.Atoi(m[2])
	e.tid, _ = strconv.Atoi(m[3])
	e.t, _ = strconv.ParseFloat(m[4], 64)
	name, rest := m[5], m[6]
	switch {
	case name == "raw_syscalls:sys_enter":
		e.kind = evEnter
		nr, argstr, _ := strings.Cut(strings.TrimPrefix(rest, "NR "), " ")
		e.nr, _ = strconv.Atoi(nr)
		argstr = strings.Trim(argstr, "()")
		for i, a := range strings.Split(argstr, ", ") {
			if i == 3 {
				break
			}
			v, _ := strconv.ParseUint(a, 16, 64)
			e.args = append(e.args, v)
		}
	case name == "raw_syscalls:sys_exit":
		e.kind = evExit
		nr, ret, _ := strings.Cut(strings.TrimPrefix(rest, "NR "), " = ")
		e.nr, _ = strconv.Atoi(nr)
		e.ret, _ = strconv.ParseInt(ret, 10, 64)
	case name == "signal:signal_generate":
		e.kind = evGen
		f := fields(rest)
		e.sig, _ = strconv.Atoi(f["sig"])
		e.target, _ = strconv.Atoi(f["pid"])
	case name == "signal:signal_deliver":
		e.kind = evDeliver
		e.sig, _ = strconv.Atoi(fields(rest)["sig"])
	case name == "sched:sched_process_fork":
		e.kind = evFork
		e.target, _ = strconv.Atoi(fields(rest)["child_pid"])
	case name == "sched:sched_process_exec":
		e.kind = evExec
		e.file = fields(rest)["filename"]
	case name == "sched:sched_process_exit":
		e.kind = evExitP
		e.dead = fields(rest)["group_dead"] == "true"
	case name == "page-faults":
		e.kind = evFault
	case strings.HasPrefix(name, probeGroup+":"):
		e.kind = evProbe
		e.probe = strings.TrimPrefix(name, probeGroup+":")
	default:
		return e, false
	}
	return e, true
}

// fields splits "a=1 b=x c=2" into a map (values without spaces).
func fields(s string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

// readEvents parses perf script's output.
func readEvents(r io.Reader, probeGroup string) ([]event, error) {
	var out []event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if e, ok := parseLine(sc.Text(), probeGroup); ok {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}
