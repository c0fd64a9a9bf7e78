package sdns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStat is what this package reads from /proc/PID/stat.
type procStat struct {
	ppid  int
	start uint64 // start time in clock ticks after boot: tells reused PIDs apart
}

// readStat parses /proc/PID/stat. The comm field is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("sdns: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); ppid is field 4, starttime field 22.
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("sdns: short /proc/%d/stat", pid)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, err
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, err
	}
	return procStat{ppid: ppid, start: start}, nil
}

// nsPIDs returns the NSpid line of /proc/PID/status: the process's PID in
// each PID namespace it is in, from ours (first) to its own (last).
func nsPIDs(pid int) ([]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "NSpid:")
		if !ok {
			continue
		}
		var ids []int
		for _, f := range strings.Fields(rest) {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("sdns: /proc/%d/status: bad NSpid %q", pid, rest)
			}
			ids = append(ids, n)
		}
		if len(ids) == 0 {
			break
		}
		return ids, nil
	}
	return nil, fmt.Errorf("sdns: /proc/%d/status has no NSpid line", pid)
}

// pidNS returns the PID namespace of pid, e.g. "pid:[4026532178]".
func pidNS(pid int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
}

func selfPidNS() (string, error) { return os.Readlink("/proc/self/ns/pid") }

func readComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// nsInit returns nil if pid is PID 1 of a PID namespace other than ours.
func nsInit(pid int) error {
	ids, err := nsPIDs(pid)
	if err != nil {
		return err
	}
	if len(ids) < 2 || ids[len(ids)-1] != 1 {
		return fmt.Errorf("sdns: PID %d is not PID 1 of a nested PID namespace (NSpid %v)", pid, ids)
	}
	ns, err := pidNS(pid)
	if err != nil {
		return err
	}
	self, err := selfPidNS()
	if err != nil {
		return err
	}
	if ns == self {
		return fmt.Errorf("sdns: PID %d is in our own PID namespace", pid)
	}
	return nil
}

// isOurSystemd returns nil if pid is a systemd that is PID 1 of a PID
// namespace other than ours (the shell recipe's is_our_systemd), and, when
// start is not 0, the same process as the one seen with that start time.
// Nothing is ever signalled without this check.
func isOurSystemd(pid int, start uint64) error {
	if pid <= 1 {
		return fmt.Errorf("sdns: refusing PID %d", pid)
	}
	if c := readComm(pid); c != "systemd" {
		return fmt.Errorf("sdns: PID %d is %q, not systemd", pid, c)
	}
	if err := nsInit(pid); err != nil {
		return err
	}
	if start != 0 {
		st, err := readStat(pid)
		if err != nil {
			return err
		}
		if st.start != start {
			return fmt.Errorf("sdns: PID %d was reused (start time %d, want %d)", pid, st.start, start)
		}
	}
	return nil
}

// allPIDs lists the PIDs in /proc.
func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 {
			pids = append(pids, n)
		}
	}
	return pids
}

// descendants returns every process below root (children, grandchildren,
// ...), parents before children. It scans /proc/*/stat, so it does not
// depend on /proc/PID/task/*/children.
func descendants(root int) []int {
	kids := map[int][]int{}
	for _, p := range allPIDs() {
		if st, err := readStat(p); err == nil {
			kids[st.ppid] = append(kids[st.ppid], p)
		}
	}
	var out []int
	queue := []int{root}
	seen := map[int]bool{root: true}
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
	return out
}

// sameProcess reports whether pid exists and is still the process that had
// start time start.
func sameProcess(pid int, start uint64) bool {
	st, err := readStat(pid)
	return err == nil && st.start == start
}

// waitGone polls until the process pid with start time start is gone (or
// replaced by an unrelated process with the same PID), up to timeout.
func waitGone(pid int, start uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for sameProcess(pid, start) {
		if time.Now().After(deadline) {
			return fmt.Errorf("sdns: PID %d still there after %v", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// killVerified sends SIGKILL to pid only if check(pid) passes right before.
func killVerified(pid int, check func(int) error) error {
	if err := check(pid); err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("sdns: kill -9 %d: %w", pid, err)
	}
	return nil
}

// readEnviron returns the environment of pid.
func readEnviron(pid int) []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}
