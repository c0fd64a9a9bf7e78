package tests

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// TestReloadFlagsAndTimeout: `handover reload -h` offers only reload's flags (no
// -json, which does nothing there) and exits 0; a reload that outlasts its -timeout
// (a new build that never becomes ready) exits 1, names the timeout as given (3s, not
// 2.999999s) and the status command, while `handover status -json` shows the upgrade
// still in progress; the upgrade then fails on the service's own timeout and the old
// generation serves on.
func TestReloadFlagsAndTimeout(t *testing.T) {
	handover := proc.Binary(t, handoverPkg)
	out, err := exec.Command(handover, "reload", "-h").CombinedOutput()
	if err != nil || strings.Contains(string(out), "-json") || !strings.Contains(string(out), "-timeout") {
		t.Errorf("handover reload -h: %v\n%s", err, out)
	}
	if out, err := exec.Command(handover, "status", "-h").CombinedOutput(); err != nil || !strings.Contains(string(out), "-json") {
		t.Errorf("handover status -h: %v\n%s", err, out)
	}

	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl, args: []string{"-upgrade-timeout", "8s"}})
	serving := d.current()
	copyFile(t, buildVariant(t, "testdata/brokendemo", "hang"), d.bin, 0o755)
	var stderr bytes.Buffer
	cmd := exec.Command(handover, "reload", "-control", ctl, "-timeout", "3s")
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("handover reload -timeout 3s: %v; want exit status 1", err)
	}
	if msg := stderr.String(); !strings.Contains(msg, " 3s") || strings.Contains(msg, "2.99") || !strings.Contains(msg, "handover status") {
		t.Errorf("handover reload said %q; want the timeout as given (3s) and a pointer to handover status", msg)
	}
	t.Logf("reload returned after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr.String()))
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != serving || st.State != "upgrading" || st.Upgrading == 0 {
		t.Errorf("status right after the reload gave up: %+v; want the upgrade still in progress", st)
	}
	// The service's own timeout ends the upgrade: the old generation serves on.
	if err := proc.WaitFor(func() bool {
		st, err := ctlStatus(t, ctl)
		return err == nil && st.State == "serving" && st.LastError != ""
	}, 20*time.Second, "the upgrade to time out in the service"); err != nil {
		t.Fatal(err)
	}
	if kids := proc.Children(serving); len(kids) != 0 {
		t.Errorf("the hanging build is still there: %v", kids)
	}
	d.signal(syscall.SIGTERM)
	if err := waitGone(serving, 15*time.Second); err != nil {
		t.Error(err)
	}
}
