//go:build linux

package master

import (
	"bufio"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"golang.org/x/sys/unix"
)

// startSh starts sh -c script with extra files at fd 3 and up, and returns its PID.
// The process is not waited for: the reaper under test reaps it.
func startSh(t *testing.T, script string, stdout *os.File, extra ...*os.File) int {
	t.Helper()
	files := append([]*os.File{nil, stdout, os.Stderr}, extra...)
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", script}, &os.ProcAttr{Files: files})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid
	p.Release()
	return pid
}

// TestReap: the master's one reaper collects the exit status of every child: several
// that exited before it looked (behind one SIGCHLD, which is not queued), and an
// orphan reparented to the master (a child subreaper) once its parent is gone; it
// posts each once, and returns when the loop is done.
//
// It waits for any child of this test process: no other test of the package runs
// beside it (none is parallel) or leaves children behind.
func TestReap(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigchld)

	exits := map[int]string{
		startSh(t, "exit 3", nil):     "exit status 3",
		startSh(t, "kill -9 $$", nil): "signal: killed",
		startSh(t, "exit 0", nil):     "exit status 0",
	}
	// All three are zombies before the reaper runs: their SIGCHLDs are one.
	for pid := range exits {
		if err := waitFor(func() bool { f := statFields(strconv.Itoa(pid)); return len(f) > 0 && f[0] == "Z" }); err != nil {
			t.Fatalf("child %d never exited", pid)
		}
	}
	reaped := make(chan reapedEvent, 16)
	post := func(ev event) bool { reaped <- ev.(reapedEvent); return true }
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		reap(sigchld, post, done)
	}()
	got := map[int]string{}
	for len(got) < len(exits) {
		select {
		case ev := <-reaped:
			got[ev.pid] = proc.Describe(ev.status)
		case <-time.After(10 * time.Second):
			t.Fatalf("reaped %v; want %v", got, exits)
		}
	}
	for pid, want := range exits {
		if got[pid] != want {
			t.Errorf("child %d: reaped as %q, want %q", pid, got[pid], want)
		}
	}

	// An orphan: a subshell that outlives its parent, blocked on a pipe the test
	// holds, then told to exit 7.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	out, in, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	parent := startSh(t, "(read line; exit 7) <&3 & echo $!; exit 0", in, r)
	in.Close()
	r.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	out.Close()
	orphan, _ := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || orphan <= 0 {
		t.Fatalf("the orphan's PID: %q, %v", line, err)
	}
	expect := func(pid int, want string) {
		t.Helper()
		select {
		case ev := <-reaped:
			if ev.pid != pid || proc.Describe(ev.status) != want {
				t.Errorf("reaped %d (%s); want %d (%s)", ev.pid, proc.Describe(ev.status), pid, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d was not reaped", pid)
		}
	}
	expect(parent, "exit status 0")
	if pp := parentOf(orphan); pp != os.Getpid() {
		t.Errorf("the orphan's parent is %d, want this process %d (a child subreaper)", pp, os.Getpid())
	}
	w.Write([]byte("exit\n"))
	expect(orphan, "exit status 7")

	close(done)
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the reaper did not return when done was closed")
	}
	select {
	case ev := <-reaped:
		t.Errorf("reaped %d twice, or something else", ev.pid)
	default:
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(cond func() bool) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return nil
		}
	}
	return os.ErrDeadlineExceeded
}

// TestKillLeftovers: of the processes reparented to the master (a subreaper), those
// a live managed child owns are kept, by its process group or by the generation in
// their environment; those a child left behind are killed, with their process
// groups, and named. A child of generation 1, holding a listening socket of the
// master's, leaves four helpers: one in its process group, one in a session of its
// own (setsid) that inherited its environment, one in a session of its own with an
// empty environment but the socket, and one with neither (a stranger: what a
// `docker exec` may leave under a master that is PID 1). While the child lives,
// only the third is killed (it would serve on the socket); once it is reaped, the
// first two; the stranger only at the master's end. (Before, only the processes in
// the dead child's process group were killed: a helper that called setsid served
// on for ever.)
func TestKillLeftovers(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sock, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(sock.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	socks := map[uint64]bool{st.Ino: true}
	script := `(sleep 300 &); (setsid sleep 301 &); (env -i /usr/bin/setsid /bin/sleep 302 &);` +
		` (env -i /usr/bin/setsid /bin/sleep 304 3>&- &); exec sleep 303`
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", script}, &os.ProcAttr{
		Env:   []string{handoff.GenerationEnv + "=1", "PATH=/usr/bin:/bin"},
		Files: []*os.File{nil, nil, os.Stderr, sock},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &child{pid: p.Pid, gen: 1}
	children := map[int]*child{c.pid: c}
	helpers := map[string]int{} // by their sleep's argument
	defer func() {
		// Whatever is left of them (this process's children: reaped here).
		p.Kill()
		p.Wait()
		for _, e := range directChildren() {
			if strings.Contains(cmdline(e.pid), "sleep 30") {
				unix.Kill(e.pid, syscall.SIGKILL)
				unix.Wait4(e.pid, nil, 0, nil)
			}
		}
	}()
	if err := waitFor(func() bool {
		for _, e := range directChildren() {
			// (Once each has executed its sleep: before, it may not have left
			// the child's process group yet.)
			switch cmd := cmdline(e.pid); cmd {
			case "sleep 300", "sleep 301", "/bin/sleep 302", "/bin/sleep 304":
				helpers[cmd[len(cmd)-3:]] = e.pid
			}
		}
		return len(helpers) == 4 && cmdline(c.pid) == "sleep 303"
	}); err != nil {
		t.Fatalf("the child's helpers reparented to this process: %v", helpers)
	}

	killed := killLeftovers(c, children, socks)
	if len(killed) != 1 || killed[0] != helpers["302"] {
		t.Errorf("while the child lives: killed %v, want only the one holding the socket, %d (helpers %v)", killed, helpers["302"], helpers)
	}
	reapKilled(t, killed)

	p.Kill()
	p.Wait()
	c.reaped = true
	killed = killLeftovers(c, children, socks)
	slices.Sort(killed)
	want := []int{helpers["300"], helpers["301"]}
	slices.Sort(want)
	if !slices.Equal(killed, want) {
		t.Errorf("once the child is reaped: killed %v, want its helpers %v (not the stranger %d)", killed, want, helpers["304"])
	}
	reapKilled(t, killed)
	if killed = killLeftovers(nil, nil, socks); len(killed) != 1 || killed[0] != helpers["304"] {
		t.Errorf("at the master's end: killed %v, want the stranger %d", killed, helpers["304"])
	}
	reapKilled(t, killed)
	if left := killLeftovers(nil, nil, socks); len(left) != 0 {
		t.Errorf("killed %v, once nothing was left", left)
	}
}

// cmdline is pid's command line, its arguments separated by spaces.
func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// reapKilled reaps the processes killLeftovers killed, and checks that SIGKILL
// ended them.
func reapKilled(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("%d: %v, %v; want killed by SIGKILL", pid, proc.Describe(syscall.WaitStatus(ws)), err)
		}
	}
}
