package tests

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// TestReloadReportsChildStderr: a new build that panics while starting makes
// `handover reload` exit 1 with the reason and the new process's last lines on
// stderr (its panic message and stack), which the old generation relayed until the
// child died; `handover status -json` keeps them as last_error. The old generation
// serves on.
func TestReloadReportsChildStderr(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	serving := d.current()
	copyFile(t, buildVariant(t, "testdata/brokendemo", "crash"), d.bin, 0o755)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(proc.Binary(t, handoverPkg), "reload", "-control", ctl, "-timeout", "30s")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("handover reload: %v; want exit status 1\n%s", err, stderr.String())
	}
	// brokendemo panics with this text: the child's own output, relayed.
	const panicLine = "panic: brokendemo: crashing after taking the sockets"
	if !strings.Contains(stderr.String(), panicLine) || !strings.Contains(stderr.String(), "goroutine 1") {
		t.Errorf("handover reload said:\n%s\nwant the child's panic and stack", stderr.String())
	}
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != serving || st.State != "serving" || !strings.Contains(st.LastError, panicLine) {
		t.Errorf("status after the failed reload: %+v", st)
	}
	// The relay ends with the child: the old generation holds no pipe for it.
	if err := proc.WaitFor(func() bool { return !strings.Contains(strings.Join(fdTargets(serving), " "), "pipe:") }, 5*time.Second, "the stderr relay to end"); err != nil {
		t.Errorf("%v: %v", err, fdTargets(serving))
	}
	d.stop()
}
