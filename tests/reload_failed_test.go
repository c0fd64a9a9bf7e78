package tests

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// reloadCLI runs `handover reload` on the control socket ctl and returns its exit
// code and output.
func reloadCLI(t *testing.T, ctl string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(proc.Binary(t, handoverPkg), "reload", "-control", ctl, "-timeout", "30s")
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), o.String(), e.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, o.String(), e.String()
}

// TestReloadFailedUpgrade: without systemd, a new build that exits before it is
// ready is answered on the control socket as a failure: `handover reload` exits 1
// with the reason (the exit status and the build's last line on stderr), and only
// once the failed process is dead and reaped (the serving process has no child
// left when reload returns). The old generation serves on, and its status records
// the failed upgrade; the next good build upgrades, and reload says to which PID.
func TestReloadFailedUpgrade(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	d := startDemoSpec(t, demoSpec{control: ctl})
	serving := d.current()
	const said = "fatal: no config at /etc/app.conf"
	writeFile(t, d.bin, []byte("#!/bin/sh\necho '"+said+"' >&2\nexit 1\n"), 0o755)

	code, stdout, stderr := reloadCLI(t, ctl)
	kids := proc.Children(serving)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "upgrade failed") || !strings.Contains(stderr, exitText(1, 0)) || !strings.Contains(stderr, said) {
		t.Errorf("handover reload: exit %d, stdout %q, stderr %q; want 1 with the exit status and the build's stderr", code, stdout, stderr)
	}
	if len(kids) > 0 {
		t.Errorf("when reload returned, the serving process still had children %v", kids)
	}
	st, err := ctlStatus(t, ctl)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != serving || st.State != "serving" || st.Upgrading != 0 || !strings.Contains(st.LastError, exitText(1, 0)) {
		t.Errorf("status after the failed upgrade: %+v", st)
	}
	if n := len(st.Upgrades); n == 0 {
		t.Errorf("no upgrade recorded")
	} else if r := st.Upgrades[n-1]; r.Outcome != "failed" || r.Reason != "exited" || r.From != serving || r.Trigger != "control socket" || !strings.Contains(r.Stderr, said) {
		t.Errorf("the failed upgrade's record: %+v", r)
	}
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != serving {
		t.Errorf("after the failed upgrade: %v, answered by %d, want %d", err, respPID(resp), serving)
	}

	copyFile(t, d.good, d.bin, 0o755)
	code, stdout, stderr = reloadCLI(t, ctl)
	var pid, gen int
	if n, _ := fmt.Sscanf(stdout, "upgraded: PID %d, generation %d\n", &pid, &gen); code != 0 || n != 2 || gen != 2 || pid == serving {
		t.Fatalf("reload of the good build: exit %d, %q %q", code, stdout, stderr)
	}
	d.pids = append(d.pids, pid)
	d.waitEvent(0, 20*time.Second, "ready", logs.KV("pid", pid))
	if st, err := ctlStatus(t, ctl); err != nil || st.PID != pid || st.LastError != "" {
		t.Errorf("status after the good upgrade: %+v, %v", st, err)
	}
	if err := waitGone(serving, d.drain); err != nil {
		t.Error(err)
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}
