package tests

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// TestPID1RefusesUpgrade: the one-word example run as PID 1 of its PID namespace (as
// `docker run` without an init runs it) refuses SIGUSR2, logs why (event
// upgrade_refused, reason pid1), starts nothing and keeps serving: handing over would
// end the namespace, and the new generation with it, when this process exits. On
// SIGTERM it drains and exits 0.
func TestPID1RefusesUpgrade(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		sdns.SkipOrFail(t, err)
	}
	if os.Geteuid() != 0 {
		sdns.SkipOrFail(t, errors.New("unshare --pid needs root"))
	}
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		sdns.SkipOrFail(t, err)
	}
	bin := proc.Binary(t, examplesPkg+"oneword")
	addr := freePort(t)
	logPath := filepath.Join(t.TempDir(), "oneword.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// systemd-socket-activate, PID 1 of the new namespace, passes the socket and execs
	// the example in place on the first connection.
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount-proc", ssa, "-l", addr, bin)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ns := cmd.Process.Pid
	t.Cleanup(func() {
		// Killing PID 1 of the namespace ends it; unshare then exits.
		for _, p := range proc.Children(ns) {
			syscall.Kill(p, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
		b, _ := os.ReadFile(logPath)
		checkVocabulary(t, string(b))
		if t.Failed() {
			t.Logf("log:\n%s", b)
		}
	})
	var server int
	if err := proc.WaitFor(func() bool {
		if kids := proc.Children(ns); len(kids) == 1 {
			server = kids[0]
		}
		resp, err := rawhttp.Get(addr, "/", time.Second)
		return server != 0 && err == nil && resp.PID() == 1
	}, 10*time.Second, "the server to answer as PID 1 of its namespace"); err != nil {
		t.Fatal(err)
	}
	r := startLoad(t, addr, 0.5)
	for i := 1; i <= 2; i++ {
		if err := syscall.Kill(server, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		if err := proc.WaitFor(func() bool {
			b, _ := os.ReadFile(logPath)
			return logs.Parse(string(b)).Count("upgrade_refused", "reason=pid1", "pid=1") == i
		}, 10*time.Second, "the upgrade to be refused"); err != nil {
			t.Fatal(err)
		}
	}
	pace(500 * time.Millisecond)
	res := r.Stop()
	checkLoad(t, res)
	for _, p := range res.PIDs() {
		if p.PID != 1 {
			t.Errorf("pid %d answered; want only PID 1 (nothing was to be started)", p.PID)
		}
	}
	if kids := proc.Children(server); len(kids) != 0 {
		t.Errorf("the server started %v", kids)
	}
	if !proc.Alive(server) {
		t.Fatal("the server is gone")
	}
	if err := syscall.Kill(server, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: unshare reports %v; want the server's exit status 0", err)
	}
}
