package tests

// A process whose only socket is a packet socket (issue 17, trial item 7): it has no
// Serve to call Ready, so it calls Ready itself; until it does, it is not ready, and
// an upgrade into it fails at UpgradeTimeout while the old generation serves on.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// TestPacketOnlyReady: tests/testdata/udponly takes a UDP socket with ListenPacket,
// reads from it and calls Ready itself, as the README says. Started, it answers
// datagrams; upgraded twice with SIGUSR2, each new generation takes the same socket
// and is ready, each old one stops reading when Exit is closed and exits 0, and then
// only the new PID answers. A build that does not call Ready (the file -no-ready-file
// names exists as it starts) is not taken for ready: the upgrade fails at
// UpgradeTimeout (event=upgrade_failed cause=timeout), the failed process is gone,
// the PID file still names the serving generation, and it still answers.
func TestPacketOnlyReady(t *testing.T) {
	prog := proc.Binary(t, "./testdata/udponly")
	dir := t.TempDir()
	noReady := filepath.Join(dir, "no-ready")
	d := startDemoSpec(t, demoSpec{program: prog, dir: dir, addr: freeUDPPort(t),
		args: []string{"-no-ready-file", noReady, "-upgrade-timeout", "2s"}})
	if pid := udpAsk(t, d.addr); pid != d.current() {
		t.Fatalf("answered by %d, want %d", pid, d.current())
	}
	for range 2 {
		old, cur := d.upgrade()
		if ws, err := reapStatus(old, d.drain+5*time.Second); err != nil {
			t.Fatalf("generation %d: %v", old, err)
		} else if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Fatalf("generation %d ended with %v, want exit status 0; log:\n%s", old, describeWait(ws), tail(d.log(), 20))
		}
		if pid := udpAsk(t, d.addr); pid != cur {
			t.Fatalf("after the upgrade to %d, answered by %d", cur, pid)
		}
	}

	if err := os.WriteFile(noReady, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cur := d.current()
	d.signal(syscall.SIGUSR2)
	failed := d.waitEvent(0, 15*time.Second, "upgrade_failed")
	if cause := failed.Get("cause"); cause != "timeout" {
		t.Errorf("upgrade_failed cause=%q, want timeout; log:\n%s", cause, tail(d.log(), 20))
	}
	if !slices.ContainsFunc(logs.Parse(d.log()).Lines, func(l logs.Line) bool { return l.Get("no_ready") == "true" }) {
		t.Errorf("the new build did not start as one that never calls Ready; log:\n%s", tail(d.log(), 20))
	}
	if bad, _ := strconv.Atoi(failed.Get("child")); bad == 0 || proc.Alive(bad) {
		t.Errorf("the build that never called Ready (child=%q) is alive after the failure", failed.Get("child"))
	}
	if p := d.pidFromFile(); p != cur {
		t.Errorf("the PID file names %d after the failed upgrade, want %d", p, cur)
	}
	if pid := udpAsk(t, d.addr); pid != cur {
		t.Errorf("after the failed upgrade, answered by %d, want %d", pid, cur)
	}
}

// udpAsk sends one datagram to addr and returns the PID its answer names.
func udpAsk(t *testing.T, addr string) int {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := fmt.Sprintf("ping %d", time.Now().UnixNano())
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", addr, err)
	}
	pid, rest, ok := strings.Cut(string(buf[:n]), " ")
	p, err := strconv.Atoi(strings.TrimPrefix(pid, "pid="))
	if !ok || err != nil || rest != msg {
		t.Fatalf("answer %q to %q", buf[:n], msg)
	}
	return p
}
