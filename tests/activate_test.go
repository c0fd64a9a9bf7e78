package tests

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// The demo under systemd's own socket-activation tool, systemd-socket-activate(1):
// it binds the socket, waits for the first connection (or datagram), then execs the
// demo in place with LISTEN_PID, LISTEN_FDS and, with --fdname, LISTEN_FDNAMES.

// activated is systemd-socket-activate, later the demo it execs, running as a child
// of the test.
type activated struct {
	t       *testing.T
	pid     int
	addr    string
	logPath string
}

// startActivate runs systemd-socket-activate with the options given, listening on
// 127.0.0.1:port, around the demo with -listen 127.0.0.1:1: an address the demo
// binds only if it does not use the passed socket.
func startActivate(t *testing.T, addr string, opts ...string) *activated {
	t.Helper()
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		sdns.SkipOrFail(t, fmt.Errorf("systemd-socket-activate not installed: %v", err))
	}
	if err := rawhttp.CheckLoopback(addr); err != nil {
		t.Fatal(err)
	}
	a := &activated{t: t, addr: addr, logPath: filepath.Join(t.TempDir(), "activate.log")}
	logf, err := os.Create(a.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := append(append([]string{"-l", addr}, opts...), proc.Binary(t, demoPkg), "-listen", "127.0.0.1:1", "-drain-timeout", "5s")
	cmd := exec.Command(tool, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Nothing from the test's own environment may look like passed sockets or a
	// service manager.
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "HANDOVER_PARENT", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.pid = cmd.Process.Pid
	cmd.Process.Release()
	t.Cleanup(func() {
		if proc.Alive(a.pid) {
			syscall.Kill(a.pid, syscall.SIGKILL)
		}
		if err := waitGone(a.pid, 10*time.Second); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if t.Failed() {
			t.Logf("systemd-socket-activate and demo output:\n%s", tail(a.log(), 40))
		}
	})
	return a
}

func (a *activated) log() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

// connect dials the tool's socket until it accepts the connection that makes it
// exec the demo.
func (a *activated) connect() *rawhttp.Conn {
	a.t.Helper()
	var c *rawhttp.Conn
	err := proc.WaitFor(func() bool {
		var err error
		c, err = rawhttp.Dial(a.addr, time.Second)
		return err == nil || !proc.Alive(a.pid)
	}, 10*time.Second, "systemd-socket-activate to listen on "+a.addr)
	if err == nil && c == nil {
		err = fmt.Errorf("pid %d exited before it accepted a connection", a.pid)
	}
	if err != nil {
		a.t.Fatalf("%v\noutput:\n%s", err, a.log())
	}
	return c
}

// exitStatus waits for the process to exit and reaps it.
func (a *activated) exitStatus(timeout time.Duration) syscall.WaitStatus {
	a.t.Helper()
	ws, err := proc.Reap(a.pid, timeout)
	if err != nil {
		a.t.Fatalf("%v\noutput:\n%s", err, a.log())
	}
	return ws
}

// listeningTCPPorts returns the local ports of the listening TCP sockets pid holds.
func listeningTCPPorts(pid int) ([]int, error) {
	inodes := map[string]bool{}
	for _, target := range fdTargets(pid) {
		if _, link, ok := strings.Cut(target, "->socket:["); ok {
			inodes[strings.TrimSuffix(link, "]")] = true
		}
	}
	var ports []int
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			port, err := strconv.ParseUint(hexPort, 16, 16)
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("/proc/%d/net/%s: local address %q", pid, table, fields[1])
			}
			ports = append(ports, int(port))
		}
		f.Close()
	}
	return ports, nil
}

// TestActivateStream: the demo started by systemd-socket-activate serves on the
// passed socket, claimed by its name (--fdname=http) or, unnamed, as the only stream
// socket passed, and binds nothing of its own (-listen says 127.0.0.1:1).
func TestActivateStream(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []string
	}{
		{"named", []string{"--fdname=http"}},
		{"unnamed", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := freePort(t)
			a := startActivate(t, addr, c.opts...)
			// The first connection makes the tool exec the demo, which answers it.
			conn := a.connect()
			defer conn.Close()
			resp, err := conn.Do("GET", "/", nil, 20*time.Second)
			if err != nil {
				t.Fatalf("first request: %v\noutput:\n%s", err, a.log())
			}
			if resp.Status != 200 || resp.PID() != a.pid {
				t.Fatalf("first request: status %d, X-Pid %d; want 200 from %d (systemd-socket-activate execs the demo in place)\nbody: %s", resp.Status, resp.PID(), a.pid, resp.Body)
			}
			if want := fmt.Sprintf("pid=%d gen=1 ", a.pid); !strings.HasPrefix(string(resp.Body), want) {
				t.Errorf("body %q; want it to start with %q", resp.Body, want)
			}
			if got := proc.Cmdline(a.pid); !strings.Contains(got, "handover-demo") {
				t.Errorf("pid %d runs %q; want the demo", a.pid, got)
			}
			// Later connections, on the same socket.
			for i := 0; i < 3; i++ {
				resp, err := rawhttp.Get(addr, "/", 10*time.Second)
				if err != nil || resp.PID() != a.pid {
					t.Fatalf("request %d: %v (X-Pid %d, want %d)", i+2, err, respPID(resp), a.pid)
				}
			}
			_, port, _ := net.SplitHostPort(addr)
			ports, err := listeningTCPPorts(a.pid)
			if err != nil {
				t.Fatal(err)
			}
			if len(ports) != 1 || strconv.Itoa(ports[0]) != port {
				t.Errorf("the demo listens on ports %v; want only the passed %s (not the -listen address)", ports, port)
			}
			if err := syscall.Kill(a.pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if ws := a.exitStatus(15 * time.Second); !ws.Exited() || ws.ExitStatus() != 0 {
				t.Errorf("after SIGTERM the demo ended with %v; want exit status 0\noutput:\n%s", exitString(ws), a.log())
			}
		})
	}
}

func respPID(r *rawhttp.Response) int {
	if r == nil {
		return 0
	}
	return r.PID()
}

func exitString(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// TestActivateDatagram: passed a UDP socket where it needs a TCP listener, the demo
// exits with status 1 and a message naming fd 3, its name if it has one, and the
// socket's address, rather than binding a socket of its own.
func TestActivateDatagram(t *testing.T) {
	for _, c := range []struct {
		name  string
		opts  []string
		facts []string
	}{
		{"named", []string{"--datagram", "--fdname=http"}, []string{"fd 3", `"http"`}},
		{"unnamed", []string{"--datagram"}, []string{"fd 3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := freeUDPPort(t)
			a := startActivate(t, addr, c.opts...)
			client, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			dst, err := net.ResolveUDPAddr("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			// The tool execs the demo on the first datagram; until it has bound the
			// socket a datagram is lost, so send until the process is gone.
			err = proc.WaitFor(func() bool {
				client.WriteTo([]byte("hello"), dst)
				return !proc.Alive(a.pid)
			}, 15*time.Second, "the demo to refuse the UDP socket and exit")
			if err != nil {
				t.Fatalf("%v\noutput:\n%s", err, a.log())
			}
			ws := a.exitStatus(5 * time.Second)
			out := a.log()
			if !ws.Exited() || ws.ExitStatus() != 1 {
				t.Errorf("the demo ended with %v; want exit status 1", exitString(ws))
			}
			// The demo (its fatal errors start with its name) ran and refused fd 3,
			// naming it and the address of what it got.
			var demoErr string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "handover-demo: ") {
					demoErr = l
				}
			}
			if demoErr == "" {
				t.Fatalf("no error from the demo: systemd-socket-activate did not exec it?\n%s", out)
			}
			for _, want := range append(c.facts, addr) {
				if !strings.Contains(demoErr, want) {
					t.Errorf("the demo's error does not name %q: %s", want, demoErr)
				}
			}
		})
	}
}
