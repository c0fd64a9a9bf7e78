// Package quictest runs HTTP/3 servers (quic/cmd/handover-h3demo) as real
// processes through real upgrades, with quic-go's client. It is a module of its
// own, so that the library's module does not depend on quic-go; it uses the
// repository's test harness (tests/internal) by the internal rule.
package quictest

import (
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
	// The demo this package builds is in the quic module: required for the build.
	_ "github.com/seed-a7250cfa/handover/quic"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

const demoPkg = "github.com/seed-a7250cfa/handover/quic/cmd/handover-h3demo"

func TestMain(m *testing.M) {
	if err := proc.SetSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	proc.CleanupBuilds()
	os.Exit(code)
}

// freePort returns a port below the ephemeral range that is free on 127.0.0.1 for
// both TCP and UDP (the demo binds both).
func freePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		n, _ := rand.Int(rand.Reader, big.NewInt(12000))
		port := 20000 + int(n.Int64())
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatal("no free port in [20000, 32000)")
	return 0
}

// server is a line of demo generations started by the test.
type server struct {
	t       *testing.T
	dir     string
	addr    *net.UDPAddr
	pidfile string
	log     *os.File    // the processes' output, when the test starts them
	logPath string      // where the processes log
	tls     *tls.Config // the clients'
	cert    string
	key     string

	mu   sync.Mutex
	pids []int // every generation seen
}

// newServer prepares a line in a temporary directory, with the test's certificate.
func newServer(t *testing.T) *server {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	s := newServerIn(t, dir, f.Name())
	s.log = f
	t.Cleanup(s.cleanup)
	return s
}

// newServerIn prepares a line whose certificate is in dir and whose processes
// log to logPath. Its caller starts the processes and stops them: newServer's
// cleanup reaps the test's own; a service manager's line is stopped with the
// manager (the server's cleanup must not signal the manager, which is one of
// the test process's descendants).
func newServerIn(t *testing.T, dir, logPath string) *server {
	cert, key, pool := testcert.Files(t, dir)
	s := &server{t: t, dir: dir, pidfile: filepath.Join(dir, "pid"), cert: cert, key: key, logPath: logPath,
		tls: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h3"}}}
	s.addr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: freePort(t)}
	return s
}

// args are the demo's flags for this line.
func (s *server) args(extra ...string) []string {
	return append([]string{"-listen", s.addr.String(), "-tls-cert", s.cert, "-tls-key", s.key,
		"-pidfile", s.pidfile, "-drain-timeout", "20s"}, extra...)
}

// start starts generation 1 and waits until it serves.
func (s *server) start(extra ...string) int {
	s.t.Helper()
	cmd := exec.Command(proc.Binary(s.t, demoPkg), s.args(extra...)...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.note(cmd.Process.Pid)
	return s.waitPID(0)
}

// note records a PID to reap.
func (s *server) note(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pids {
		if p == pid {
			return
		}
	}
	s.pids = append(s.pids, pid)
}

// waitPID waits until the PID file names a live process other than old.
func (s *server) waitPID(old int) int {
	s.t.Helper()
	var pid int
	err := proc.WaitFor(func() bool {
		b, _ := os.ReadFile(s.pidfile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid != 0 && pid != old && proc.Alive(pid)
	}, 20*time.Second, "the PID file to name a new generation")
	if err != nil {
		s.t.Fatalf("%v\n%s", err, s.logText())
	}
	s.note(pid)
	return pid
}

// upgrade sends SIGUSR2 to pid and waits for the next generation's PID.
func (s *server) upgrade(pid int) int {
	s.t.Helper()
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		s.t.Fatal(err)
	}
	return s.waitPID(pid)
}

// waitServing waits until generation pid reads the shared socket (event=quic_serve):
// its PID file comes first, and until then new connections still reach the
// generation before it.
func (s *server) waitServing(pid int) {
	s.t.Helper()
	if err := proc.WaitFor(func() bool {
		for _, l := range s.events("quic_serve") {
			if l.Get("pid") == strconv.Itoa(pid) {
				return true
			}
		}
		return false
	}, 10*time.Second, fmt.Sprintf("generation %d to read the shared socket", pid)); err != nil {
		s.t.Fatal(err)
	}
}

func (s *server) logText() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// events returns the log lines with event=ev.
func (s *server) events(ev string) []logs.Line {
	var out []logs.Line
	for _, l := range logs.Parse(s.logText()).Lines {
		if l.Event() == ev {
			out = append(out, l)
		}
	}
	return out
}

// cleanup stops every generation still alive and reaps every one, by PID.
func (s *server) cleanup() {
	s.mu.Lock()
	pids := append([]int(nil), s.pids...)
	s.mu.Unlock()
	for _, pid := range proc.Descendants(os.Getpid()) {
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	for _, pid := range pids {
		if _, err := proc.Reap(pid, 10*time.Second); err != nil && proc.Alive(pid) {
			proc.KillAndReap(pid, 5*time.Second)
		}
	}
	s.log.Close()
	if s.t.Failed() {
		s.t.Logf("server log:\n%s", s.logText())
	}
}

// clientTLS is the clients' TLS config with a session cache (for resumption).
func (s *server) clientTLS(cache tls.ClientSessionCache) *tls.Config {
	c := s.tls.Clone()
	c.ClientSessionCache = cache
	return c
}

// syscallKill sends SIGTERM to pid.
func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }

// reap waits for pid to exit (it is the test's child or was reparented to it).
func reap(pid int) (syscall.WaitStatus, error) { return proc.Reap(pid, 30*time.Second) }

// logsOther returns the lines of the server's log that are not log lines.
func logsOther(s *server) string {
	return strings.Join(logs.Parse(s.logText()).Other, "\n")
}
