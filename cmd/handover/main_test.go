//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

// The command line against a fake service: a real control socket (internal/control's
// server) answering with what each test sets.

// fakeService answers on a control socket.
type fakeService struct {
	mu       sync.Mutex
	status   wire.Status
	statErr  error
	outcomes []control.Outcome // one per upgrade request; the last repeats
	asked    int
	reqs     []string      // the requests of an upgrade's, in order
	when     []time.Time   // when each came
	block    chan struct{} // if not nil, an upgrade waits for it to close
}

func (f *fakeService) Status() (wire.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, f.statErr
}

func (f *fakeService) Upgrade(req string) control.Outcome {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.when = append(f.when, time.Now())
	block := f.block
	o := f.outcomes[min(f.asked, len(f.outcomes)-1)]
	f.asked++
	f.mu.Unlock()
	if block != nil {
		<-block
	}
	return o
}

func (f *fakeService) upgrades() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked
}

// serve serves f on a control socket and returns its path.
func serve(t *testing.T, f *fakeService) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go control.Accept(ln, slog.New(slog.NewTextHandler(io.Discard, nil)), f)
	return path
}

// handover runs the command line in this process and returns its output and exit
// code.
func handover(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e strings.Builder
	code = run(args, &o, &e)
	return o.String(), e.String(), code
}

func TestUsageAndFlagErrors(t *testing.T) {
	t.Setenv(controlEnv, "")
	for _, c := range []struct {
		args []string
		code int
		say  string // on stderr
	}{
		{nil, 2, "usage:"},
		{[]string{"help"}, 0, "usage:"},
		{[]string{"upgrade"}, 2, `unknown command "upgrade"`},
		{[]string{"reload"}, 2, "no control socket: pass -control PATH or set HANDOVER_CONTROL"},
		{[]string{"status", "-json"}, 2, "no control socket"},
		{[]string{"reload", "-control", "/x", "now"}, 2, `unexpected argument "now"`},
		{[]string{"reload", "-control", "/x", "-json"}, 2, "flag provided but not defined: -json"},
		{[]string{"status", "-control", "/x", "-timeout", "soon"}, 2, `invalid value "soon" for flag -timeout`},
		{[]string{"status", "-h"}, 0, "-json"},
	} {
		_, stderr, code := handover(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.say) {
			t.Errorf("handover %q: exit %d, %q; want %d and %q", c.args, code, stderr, c.code, c.say)
		}
	}
}

func TestControlEnv(t *testing.T) {
	f := &fakeService{status: wire.Status{PID: 42, Generation: 1, State: "serving"}}
	t.Setenv(controlEnv, serve(t, f))
	if out, stderr, code := handover(t, "status"); code != 0 || !strings.Contains(out, "PID:         42\n") {
		t.Errorf("status with $%s: exit %d, %q %q", controlEnv, code, out, stderr)
	}
}

func TestReload(t *testing.T) {
	failed := errors.New("upgrade failed: new child PID 77 (/srv/app, generation 3) exited before it was ready (exit status 1); its last lines on stderr:\n  fatal: no config")
	for _, c := range []struct {
		name       string
		outcomes   []control.Outcome
		invocation string // $INVOCATION_ID: under systemd
		code       int
		stdout     string
		stderr     string
		asked      int
	}{
		{"ok", []control.Outcome{{PID: 77, Generation: 3}}, "", 0, "upgraded: PID 77, generation 3\n", "", 1},
		{"failed", []control.Outcome{{Err: failed}}, "", 1, "", "handover reload: upgrade failed: " + failed.Error() + "\n", 1},
		{"moved, then ok", []control.Outcome{{Moved: 76, Err: errors.New("handed over to 76")}, {PID: 77, Generation: 3}}, "", 0, "upgraded: PID 77, generation 3\n", "", 2},
		{"moved for good", []control.Outcome{{Moved: 76, Err: errors.New("handed over to 76")}}, "", 1, "", "handover reload: upgrade failed: handed over to 76\n", 4},
		{"stopping", []control.Outcome{{Err: errors.New("upgrade abandoned: handover run is stopping"), Stopping: true}}, "", 1, "", "upgrade failed: upgrade abandoned", 1},
		{"stopping under systemd", []control.Outcome{{Err: errors.New("upgrade abandoned: handover run is stopping"), Stopping: true}}, "abc", 0, "", "handover reload: no upgrade: upgrade abandoned", 1},
		{"failed under systemd", []control.Outcome{{Err: failed}}, "abc", 1, "", "upgrade failed: ", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("INVOCATION_ID", c.invocation)
			f := &fakeService{outcomes: c.outcomes}
			out, stderr, code := handover(t, "reload", "-control", serve(t, f))
			if code != c.code || out != c.stdout || !strings.Contains(stderr, c.stderr) || c.stderr == "" && stderr != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out, stderr, c.code, c.stdout, c.stderr)
			}
			if f.upgrades() != c.asked {
				t.Errorf("%d upgrades asked for, want %d", f.upgrades(), c.asked)
			}
		})
	}
}

// TestReloadTimeout: no outcome within -timeout is a failure that says the upgrade
// may still be in progress.
func TestReloadTimeout(t *testing.T) {
	f := &fakeService{outcomes: []control.Outcome{{PID: 1, Generation: 2}}, block: make(chan struct{})}
	defer close(f.block)
	_, stderr, code := handover(t, "reload", "-control", serve(t, f), "-timeout", "200ms")
	if code != 1 || !strings.Contains(stderr, "no outcome within 200ms: the upgrade may still be in progress") {
		t.Errorf("exit %d, %q", code, stderr)
	}
}

// TestNoService: a control socket nobody serves, or no socket at all, is exit 1
// with what is wrong.
func TestNoService(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct{ path, say string }{
		{filepath.Join(dir, "none.sock"), "no control socket at"},
		{stale, "nothing is listening on"},
		{file, "is not a socket: check -control"},
	} {
		for _, cmd := range []string{"reload", "status"} {
			if _, stderr, code := handover(t, cmd, "-control", c.path); code != 1 || !strings.Contains(stderr, c.say) {
				t.Errorf("%s -control %s: exit %d, %q; want 1 and %q", cmd, c.path, code, stderr, c.say)
			}
		}
	}
}

// fullStatus has every field set: a master's, with a library child's fields too.
var fullStatus = wire.Status{
	PID: 10, Generation: 3, State: "serving", Executable: "/srv/app", Systemd: true,
	Listeners:   []wire.Socket{{Name: "http", Network: "tcp", Addr: "127.0.0.1:8080", Source: "systemd"}, {Name: "admin", Network: "unix", Addr: "/run/a.sock", Source: "bound"}},
	Connections: wire.ConnCounts{New: 1, Active: 2, Idle: 3, Hijacked: 4, Accepted: 50},
	Upgrading:   12, LastError: "new child exited", Child: 11, ChildExecutable: "/srv/app (the last good build)", Restarts: 2, OlderDraining: 1,
	ProbationUntil: time.Date(2026, 1, 2, 3, 4, 16, 0, time.UTC),
	Upgrades: []wire.Upgrade{{
		Trigger: "control socket", Start: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), End: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
		From: 9, To: 11, Generation: 3, Outcome: "ok", HandoverSeconds: 1, Drained: true, DrainSeconds: 2, ConnsClosed: 5, ConnsForced: 1, RequestsAfter: 7, DrainKilled: "deadline",
		ProbationUntil: time.Date(2026, 1, 2, 3, 4, 16, 0, time.UTC),
	}},
}

// wantJSON is fullStatus as handover status -json prints it: these names, in this
// order.
const wantJSON = `{
  "pid": 10,
  "generation": 3,
  "state": "serving",
  "executable": "/srv/app",
  "systemd": true,
  "listeners": [
    {
      "name": "http",
      "network": "tcp",
      "addr": "127.0.0.1:8080",
      "source": "systemd"
    },
    {
      "name": "admin",
      "network": "unix",
      "addr": "/run/a.sock",
      "source": "bound"
    }
  ],
  "connections": {
    "new": 1,
    "active": 2,
    "idle": 3,
    "hijacked": 4,
    "accepted": 50
  },
  "upgrading": 12,
  "last_error": "new child exited",
  "child": 11,
  "child_executable": "/srv/app (the last good build)",
  "restarts": 2,
  "older_draining": 1,
  "probation_until": "2026-01-02T03:04:16Z",
  "upgrades": [
    {
      "trigger": "control socket",
      "start": "2026-01-02T03:04:05Z",
      "end": "2026-01-02T03:04:06Z",
      "from": 9,
      "to": 11,
      "generation": 3,
      "outcome": "ok",
      "handover_seconds": 1,
      "drained": true,
      "drain_seconds": 2,
      "conns_closed": 5,
      "conns_forced": 1,
      "requests_after": 7,
      "drain_killed": "deadline",
      "probation_until": "2026-01-02T03:04:16Z"
    }
  ]
}
`

// TestStatusJSON: -json prints the service's status as it answered it, every field
// under its name, in the order they have always had.
func TestStatusJSON(t *testing.T) {
	out, stderr, code := handover(t, "status", "-json", "-control", serve(t, &fakeService{status: fullStatus}))
	if code != 0 || stderr != "" || out != wantJSON {
		t.Errorf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, stderr, out, wantJSON)
	}
	var back wire.Status
	if err := json.Unmarshal([]byte(out), &back); err != nil || back.Upgrades[0].Start != fullStatus.Upgrades[0].Start || back.Child != 11 {
		t.Errorf("the output reads back as %+v, %v", back, err)
	}
	// A library process's status leaves the master's fields out.
	lib := fullStatus
	lib.Child, lib.ChildExecutable, lib.Restarts = 0, "", 0
	out, _, _ = handover(t, "status", "-json", "-control", serve(t, &fakeService{status: lib}))
	if strings.Contains(out, `"child`) || strings.Contains(out, `"restarts"`) {
		t.Errorf("a library process's status shows a master's fields:\n%s", out)
	}
}

// TestStatusText: the status for a person: a library process's connections; a
// master's child, the build it runs and its restarts instead; the upgrades.
func TestStatusText(t *testing.T) {
	lib := fullStatus
	lib.Child, lib.ChildExecutable, lib.Restarts = 0, "", 0
	out, _, code := handover(t, "status", "-control", serve(t, &fakeService{status: lib}))
	for _, want := range []string{"PID:         10\n", "Listeners:   http tcp:127.0.0.1:8080 (from systemd)\n", "            admin unix:/run/a.sock (bound)\n", "Connections: 10 open (2 active, 3 idle, 1 new, 4 hijacked), 50 accepted, 0 received, 0 handed over\n",
		"Last upgrade failed: new child exited\n", "Upgrading:   new generation PID 12 starting\n", "Upgrades:    1 (oldest first)\n", "drain cut short (deadline): 1 connections force-closed",
		"Probation:   until " + lib.ProbationUntil.Local().Format("15:04:05.000") + ": the old generation"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("library status: exit %d, no %q in:\n%s", code, want, out)
		}
	}
	out, _, code = handover(t, "status", "-control", serve(t, &fakeService{status: fullStatus}))
	for _, want := range []string{"Child:       PID 11 (handover run; restarts: 2)\n", "Child runs:  /srv/app (the last good build)\n", "Last error:  new child exited\n", "old child killed (deadline)"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("master status: exit %d, no %q in:\n%s", code, want, out)
		}
	}
	if strings.Contains(out, "Connections:") {
		t.Errorf("a master's status shows connections it cannot see:\n%s", out)
	}
	// A prepared generation, and the record of a two-phase upgrade.
	prep := lib
	prep.State, prep.Upgrading, prep.Prepared = "prepared", 0, 13
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	prep.Upgrades = []wire.Upgrade{{Trigger: "control socket", Start: at, Prepared: at.Add(40 * time.Millisecond), PrepareSeconds: 0.04,
		Committed: at.Add(3 * time.Second), End: at.Add(3*time.Second + time.Millisecond), Outcome: "ok", From: 10, To: 13, HandoverSeconds: 0.0005}}
	out, _, _ = handover(t, "status", "-control", serve(t, &fakeService{status: prep}))
	for _, want := range []string{"Prepared:    new generation PID 13, ready and not accepting", "0.5ms", "prepared in 40.0ms, committed 2.96s later"} {
		if !strings.Contains(out, want) {
			t.Errorf("prepared status: no %q in:\n%s", want, out)
		}
	}
}

// TestStatusError: a service that cannot answer (a master exiting) is exit 1 with
// its reason.
func TestStatusError(t *testing.T) {
	f := &fakeService{statErr: errors.New("handover run is exiting")}
	if out, stderr, code := handover(t, "status", "-control", serve(t, f)); code != 1 || out != "" || stderr != "handover status: handover run is exiting\n" {
		t.Errorf("exit %d, %q, %q", code, out, stderr)
	}
}

// TestUpgradeSteps: prepare, commit and abort send their requests and print the PID
// the service answers with; a refusal is exit 1 with the reason.
func TestUpgradeSteps(t *testing.T) {
	f := &fakeService{outcomes: []control.Outcome{{PID: 77, Generation: 3}}}
	path := serve(t, f)
	for cmd, want := range map[string]string{
		"prepare": "prepared: PID 77, generation 3 (ready, not accepting",
		"commit":  "committed: PID 77, generation 3\n",
		"abort":   "aborted: PID 77, generation 3\n",
	} {
		out, stderr, code := handover(t, cmd, "-control", path)
		if code != 0 || !strings.HasPrefix(out, want) || stderr != "" {
			t.Errorf("handover %s: exit %d, %q %q", cmd, code, out, stderr)
		}
		if last := f.reqs[len(f.reqs)-1]; last != cmd {
			t.Errorf("handover %s sent %q", cmd, last)
		}
	}
	refused := &fakeService{outcomes: []control.Outcome{{Err: errors.New("upgrade refused: no prepared child: run handover prepare first")}}}
	_, stderr, code := handover(t, "commit", "-control", serve(t, refused))
	if code != 1 || stderr != "handover commit: commit failed: upgrade refused: no prepared child: run handover prepare first\n" {
		t.Errorf("a refused commit: exit %d, %q", code, stderr)
	}
}

// TestCommitAt: commit -at sends the commit at that moment (it connects first), not
// before; a moment past is now; a bad or far moment is a usage error.
func TestCommitAt(t *testing.T) {
	f := &fakeService{outcomes: []control.Outcome{{PID: 77, Generation: 3}}}
	path := serve(t, f)
	at := time.Now().Add(300 * time.Millisecond)
	stamp := fmt.Sprintf("@%d.%09d", at.Unix(), at.Nanosecond())
	if out, stderr, code := handover(t, "commit", "-control", path, "-at", stamp); code != 0 || !strings.HasPrefix(out, "committed: PID 77") {
		t.Fatalf("commit -at: exit %d, %q %q", code, out, stderr)
	}
	if got := f.when[0]; got.Before(at) {
		t.Errorf("the commit came %v before -at", at.Sub(got))
	}
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	if _, stderr, code := handover(t, "commit", "-control", path, "-at", past); code != 0 || len(f.reqs) != 2 {
		t.Errorf("commit -at in the past: exit %d, %q", code, stderr)
	}
	for _, bad := range []string{"soon", "@x", "@-5", time.Now().Add(2 * time.Hour).Format(time.RFC3339)} {
		if _, stderr, code := handover(t, "commit", "-control", path, "-at", bad); code != 2 || !strings.Contains(stderr, "-at") {
			t.Errorf("commit -at %q: exit %d, %q", bad, code, stderr)
		}
	}
	if _, stderr, code := handover(t, "prepare", "-control", path, "-at", stamp); code != 2 || !strings.Contains(stderr, "not defined: -at") {
		t.Errorf("prepare -at: exit %d, %q", code, stderr)
	}
}
