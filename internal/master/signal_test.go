//go:build linux

package master

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// pidnsEnv runs TestSignalReusedPID's body: in a new PID namespace, where this test
// binary is PID 1 and the PIDs handed out are its own to steer (ns_last_pid).
const pidnsEnv = "HANDOVER_MASTER_TEST_PIDNS"

// TestSignalReusedPID: the master signals a child through its pidfd, so that once
// the child is reaped (the reaper runs beside the loop that decides what to signal)
// a new process given the same PID is never signalled: neither the child's stop
// signal nor SIGKILL to its process group reaches it. (With kill(2) by PID, as
// before, it was killed.) Run in a new PID namespace, where the test makes the next
// PID the dead child's by writing ns_last_pid.
func TestSignalReusedPID(t *testing.T) {
	if os.Getenv(pidnsEnv) == "1" {
		signalReusedPID(t)
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root, for a PID namespace")
		}
		t.Skip("needs root, for a PID namespace")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalReusedPID$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), pidnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSignalReusedPID") {
		t.Fatalf("in a new PID namespace: %v\n%s", err, out)
	}
	t.Logf("in a new PID namespace:\n%s", out)
}

// signalReusedPID is TestSignalReusedPID as PID 1 of its namespace.
func signalReusedPID(t *testing.T) {
	if os.Getpid() != 1 {
		t.Fatalf("PID %d, want 1 (a new PID namespace)", os.Getpid())
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	start := func() (int, *os.File) {
		pid, pidfd, err := forkExec(sleep, []string{"sleep", "100"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}})
		if err != nil || pidfd == nil {
			t.Fatalf("starting sleep: %v (pidfd %v)", err, pidfd)
		}
		return pid, pidfd
	}
	pid, pidfd := start()
	c := &child{pid: pid, pidfd: pidfd}
	defer pidfd.Close()
	if err := signalChild(c, syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || !ws.Signaled() {
		t.Fatalf("the child: %v, %v", ws, err)
	}
	// The next process gets the dead child's PID. (The runtime's threads take PIDs
	// too: try again until one does.)
	var other int
	for i := 0; i < 50 && other != pid; i++ {
		if other != 0 {
			unix.Kill(other, syscall.SIGKILL)
			unix.Wait4(other, nil, 0, nil)
		}
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("ns_last_pid: %v", err)
		}
		var f *os.File
		other, f, _ = forkExec(sleep, []string{"sleep", "100"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}})
		f.Close()
	}
	if other != pid {
		t.Fatalf("no process got PID %d again", pid)
	}
	defer func() {
		unix.Kill(other, syscall.SIGKILL)
		unix.Wait4(other, nil, 0, nil)
	}()
	for _, group := range []bool{false, true} {
		if err := signalChild(c, syscall.SIGTERM, group); !errors.Is(err, unix.ESRCH) {
			t.Errorf("signalling the reaped child (group %v): %v, want ESRCH", group, err)
		}
	}
	if n, err := unix.Wait4(other, &ws, unix.WNOHANG, nil); n != 0 || err != nil {
		t.Errorf("the process that has the reaped child's PID now was signalled: %v, %v", ws, err)
	}
}
