package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// unixGet sends GET / over the unix socket at path and returns the X-Pid it got.
func unixGet(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d: %v", resp.StatusCode, err)
	}
	r := rawhttp.Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
	return r.PID(), nil
}

// shortTempDir makes a directory of a short path, removed at the test's end: a
// unix socket's path (sun_path) holds 108 bytes, which t.TempDir's may not leave.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ux")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestUnixListenerAfterKill: a server on a unix socket killed with SIGKILL leaves
// its socket file behind; the next start replaces it (nobody accepts on it) and
// serves. A second instance started while one serves fails with a clear error and
// leaves the live socket alone. A regular file at the path is never removed.
func TestUnixListenerAfterKill(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "http.sock")
	spec := demoSpec{args: []string{"-listen", "unix:" + sock}}

	d1 := launchDemo(t, spec)
	d1.waitPID(d1.current())
	if pid, err := unixGet(sock); err != nil || pid != d1.current() {
		t.Fatalf("first server: pid %d, %v", pid, err)
	}
	// A second instance while the first serves: refused, the socket untouched.
	d2 := launchDemo(t, spec)
	if ws := d2.exitOf(d2.current()); !ws.Exited() || ws.ExitStatus() != 1 {
		t.Errorf("second instance: %v, want exit status 1", ws)
	}
	if out := d2.log(); !strings.Contains(out, sock) {
		t.Errorf("second instance said %q; want an error naming the socket", out)
	}
	if pid, err := unixGet(sock); err != nil || pid != d1.current() {
		t.Fatalf("the first server after a second instance tried: pid %d, %v", pid, err)
	}

	if _, err := proc.KillAndReap(d1.current(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("the killed server's socket file: %v; the test needs it left behind", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("the stale socket accepts")
	}
	d3 := launchDemo(t, spec)
	d3.waitPID(d3.current())
	if pid, err := unixGet(sock); err != nil || pid != d3.current() {
		t.Fatalf("restart after SIGKILL: pid %d, %v", pid, err)
	}
	d3.stop()

	// A regular file in the way: an error, and the file is kept.
	os.Remove(sock)
	if err := os.WriteFile(sock, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	d4 := launchDemo(t, spec)
	if ws := d4.exitOf(d4.current()); !ws.Exited() || ws.ExitStatus() != 1 {
		t.Errorf("over a regular file: %v, want exit status 1", ws)
	}
	if b, err := os.ReadFile(sock); err != nil || string(b) != "keep" {
		t.Errorf("the regular file: %q, %v; want it untouched", b, err)
	}
}

// TestUnixListenerParked: a generation that has handed over on a unix socket, and
// stands by for its successor's probation, keeps the socket without its runtime
// watching it (its listener parked, the socket file left in place), as on TCP: the
// connections for the new generation do not wake it. The new generation serves on
// the same file, and watches the socket.
func TestUnixListenerParked(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "http.sock")
	// The old generation stands by for the new one's probation: long enough to look.
	d := launchDemo(t, demoSpec{args: []string{"-listen", "unix:" + sock, "-probation", "20s"}})
	d.waitPID(d.current())
	old, cur := d.upgrade()
	ino, err := proc.UnixListeningInode(sock)
	if err != nil {
		t.Fatal(err)
	}
	watches := func(pid int) bool { return proc.Watches(pid, ino) }
	if err := proc.WaitFor(func() bool { return !watches(old) }, 5*time.Second, "the old generation to stop watching the unix socket"); err != nil {
		t.Error(err)
	}
	if !proc.Alive(old) {
		t.Fatalf("the old generation %d is gone; the test needs it standing by", old)
	}
	for i := 0; i < 20; i++ {
		if pid, err := unixGet(sock); err != nil || pid != cur {
			t.Fatalf("request %d over the socket: pid %d, %v; want %d", i, pid, err, cur)
		}
	}
	if !watches(cur) {
		t.Errorf("the new generation %d does not watch the unix socket", cur)
	}
	d.stop()
	if err := proc.LeakCheck(); err != nil {
		t.Error(err)
	}
}
