package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// TestOneWordChange: the README's example, a net/http program whose only change is
// graceful.ListenAndServe, upgrades on SIGUSR2 under load without a failed request,
// and exits 0 after draining on SIGTERM.
func TestOneWordChange(t *testing.T) {
	bin := buildVariant(t, "testdata/oneword", "default")
	addr := freePort(t)
	logPath := filepath.Join(t.TempDir(), "oneword.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := cmd.Process.Pid
	cmd.Process.Release()
	pids := []int{first}
	t.Cleanup(func() {
		for _, p := range pids {
			if proc.Alive(p) {
				syscall.Kill(p, syscall.SIGKILL)
			}
			waitGone(p, 10*time.Second)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("log:\n%s", b)
		}
	})
	answeredBy := func() int {
		resp, err := rawhttp.Get(addr, "/", 5*time.Second)
		if err != nil {
			return 0
		}
		return resp.PID()
	}
	if err := proc.WaitFor(func() bool { return answeredBy() == first }, 10*time.Second, "the first generation to answer"); err != nil {
		t.Fatal(err)
	}
	r := startLoad(t, addr, 0.5)
	for i := 0; i < 3; i++ {
		cur := pids[len(pids)-1]
		if err := syscall.Kill(cur, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		var next int
		if err := proc.WaitFor(func() bool { next = answeredBy(); return next != 0 && next != cur }, 10*time.Second, "a new generation to answer"); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, next)
		if err := waitGone(cur, 30*time.Second); err != nil {
			t.Error(err)
		}
		pace(time.Second)
	}
	res := r.Stop()
	checkLoad(t, res)
	checkAnswered(t, res, "generation", pids...)
	last := pids[len(pids)-1]
	if err := syscall.Kill(last, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitFor(func() bool { return proc.PPid(last) == os.Getpid() || !proc.Alive(last) }, 10*time.Second, "the last generation to be the test's child"); err != nil {
		t.Fatal(err)
	}
	st, err := proc.Reap(last, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Exited() || st.ExitStatus() != 0 {
		t.Errorf("after SIGTERM: %v, want exit status 0 (ListenAndServe returns nil after a graceful stop)", st)
	}
}
