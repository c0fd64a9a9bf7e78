//go:build linux

package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/wire"
)

// The peer check with real processes: this test binary runs again as a client or a
// server of a control socket (helperRole), under another uid (SysProcAttr.Credential)
// where the test needs one. The sockets are abstract, so that no file mode stands
// between a peer and the check.

const (
	helperRole = "HANDOVER_CONTROL_TEST_ROLE" // "client" or "server"
	helperAddr = "HANDOVER_CONTROL_TEST_ADDR" // the socket, @name
)

var (
	nobody = &syscall.Credential{Uid: 65534, Gid: 65534}
	other  = &syscall.Credential{Uid: 65533, Gid: 65533}
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperRole) {
	case "client":
		os.Exit(helperClient(os.Getenv(helperAddr)))
	case "server":
		os.Exit(helperServer(os.Getenv(helperAddr)))
	}
	os.Exit(m.Run())
}

// fakeServer answers for a process of PID pid.
type fakeServer struct{ pid int }

func (s fakeServer) Status() (wire.Status, error) {
	return wire.Status{PID: s.pid, Generation: 1, State: "serving"}, nil
}

func (s fakeServer) Upgrade(string) Outcome {
	return Outcome{Err: errors.New("no upgrades here")}
}

// helperClient asks addr for the status and prints the answer line.
func helperClient(addr string) int {
	c, err := net.DialTimeout("unix", addr, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, Status+"\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// helperServer serves addr until its standard input ends, logging to stderr.
func helperServer(addr string) int {
	ln, err := net.Listen("unix", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go Accept(ln, slog.New(slog.NewJSONHandler(os.Stderr, nil)), fakeServer{pid: os.Getpid()})
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	ln.Close()
	return 0
}

// helperBinary copies this test binary where any user may run it.
func helperBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "control-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "control.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// helper returns the command of a helper process of role on addr, as cred (nil:
// this process's user).
func helper(bin, role, addr string, cred *syscall.Credential) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = []string{helperRole + "=" + role, helperAddr + "=" + addr}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return cmd
}

// askAs asks addr for the status from a client process running as cred, and
// returns the answer.
func askAs(t *testing.T, bin, addr string, cred *syscall.Credential) Response {
	t.Helper()
	cmd := helper(bin, "client", addr, cred)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client as uid %d: %v: %s", cred.Uid, err, stderr.String())
	}
	resp, err := ReadResponse(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("client as uid %d: %v (%q)", cred.Uid, err, out)
	}
	return resp
}

// ask asks addr for the status from this process.
func ask(t *testing.T, addr string) Response {
	t.Helper()
	c, err := net.DialTimeout("unix", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, Status+"\n")
	resp, err := ReadResponse(c)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// syncBuffer is a bytes.Buffer for a logger that several goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// refusals returns the uids of the control_refused lines of a JSON log.
func refusals(log string) []int {
	var uids []int
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec struct {
			Event string `json:"event"`
			UID   int    `json:"uid"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Event == "control_refused" {
			uids = append(uids, rec.UID)
		}
	}
	return uids
}

// TestPeerCheck: a control socket answers a peer running as the server's own user or
// as root, and refuses any other, saying which uid may not control the service and
// logging the refusal (event=control_refused, uid=). Real processes under real uids:
// a server of root's (this test), then a server running as nobody.
func TestPeerCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root, to run peers under other uids")
		}
		t.Skip("needs root, to run peers under other uids")
	}
	bin := helperBinary(t)

	t.Run("server of root", func(t *testing.T) {
		addr := "@handover-control-test-root-" + strconv.Itoa(os.Getpid())
		ln, err := net.Listen("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var log syncBuffer
		go Accept(ln, slog.New(slog.NewJSONHandler(&log, nil)), fakeServer{pid: os.Getpid()})

		if resp := ask(t, addr); !resp.OK || resp.Status == nil || resp.Status.PID != os.Getpid() {
			t.Errorf("root (the server's own user): %+v; want the status", resp)
		}
		resp := askAs(t, bin, addr, nobody)
		if resp.OK || resp.Status != nil || !strings.Contains(resp.Error, "uid 65534 may not control this service") {
			t.Errorf("nobody: %+v; want refused", resp)
		}
		if got := refusals(log.String()); len(got) != 1 || got[0] != 65534 {
			t.Errorf("refusals logged for uids %v, want [65534]:\n%s", got, log.String())
		}
	})

	t.Run("server of nobody", func(t *testing.T) {
		addr := "@handover-control-test-nobody-" + strconv.Itoa(os.Getpid())
		srv := helper(bin, "server", addr, nobody)
		stdin, err := srv.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := srv.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var log syncBuffer
		srv.Stderr = &log
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			stdin.Close()
			srv.Wait()
		}()
		if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
			t.Fatalf("the server as nobody did not start: %q, %v: %s", line, err, log.String())
		}

		if resp := ask(t, addr); !resp.OK || resp.Status == nil || resp.Status.PID != srv.Process.Pid {
			t.Errorf("root: %+v; want the status", resp)
		}
		if resp := askAs(t, bin, addr, nobody); !resp.OK || resp.Status == nil {
			t.Errorf("nobody (the server's own user): %+v; want the status", resp)
		}
		resp := askAs(t, bin, addr, other)
		if resp.OK || !strings.Contains(resp.Error, "uid 65533 may not control this service (only uid 65534 or root)") {
			t.Errorf("uid 65533: %+v; want refused", resp)
		}
		stdin.Close()
		srv.Wait()
		if got := refusals(log.String()); len(got) != 1 || got[0] != 65533 {
			t.Errorf("refusals logged for uids %v, want [65533]:\n%s", got, log.String())
		}
	})
}

// TestServeNotUnix: a connection that is not a unix socket has no peer credentials:
// it is refused.
func TestServeNotUnix(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go Serve(a, slog.New(slog.NewTextHandler(io.Discard, nil)), fakeServer{pid: 1})
	b.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := ReadResponse(b)
	if err != nil || resp.OK || !strings.Contains(resp.Error, "permission denied") {
		t.Errorf("over a pipe: %+v, %v; want refused", resp, err)
	}
}
