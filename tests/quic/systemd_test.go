package quictest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// The HTTP/3 demo under a real systemd (PID 1 of its own namespaces, see
// tests/internal/sdns), with the units of deploy/http3: a socket unit with
// ListenStream= and ListenDatagram=, a service whose ExecReload= is `handover
// reload`, with the fd store. Two systemd instances at once share the host's
// cgroups: do not run these beside another systemd test (the tests package runs
// its own one at a time).

const h3Unit = "handover-h3demo.service"

// sdLine is the demo's line under a test systemd.
type sdLine struct {
	*server
	sd *sdns.Systemd
}

// startSystemd boots a systemd (the installed one) with deploy/http3's units,
// adapted to the test, and starts the service.
func startSystemd(t *testing.T) *sdLine {
	t.Helper()
	sd, err := sdns.New(t, sdns.RequireInstalled(t))
	if err != nil {
		sdns.SkipOrFail(t, err)
	}
	s := newServerIn(t, sd.Dir(), sd.LogPath("demo.log"))
	bin := filepath.Join(sd.Dir(), "bin")
	copyFile(t, proc.Binary(t, demoPkg), filepath.Join(bin, "handover-h3demo"))
	copyFile(t, proc.Binary(t, handoverPkg), filepath.Join(bin, "handover"))
	for _, name := range []string{"handover-h3demo.socket", h3Unit} {
		if err := sd.AddUnit(name, h3UnitFile(t, sd, name, s, bin)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { // before the harness's own cleanup, which removes the logs
		if lines := sd.SuspiciousLines(); len(lines) > 0 {
			t.Errorf("systemd logged:\n  %s", strings.Join(lines, "\n  "))
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.logText())
			t.Logf("systemd console:\n%s", sd.ConsoleLog())
		}
	})
	if err := sd.Boot(); err != nil {
		t.Fatal(err)
	}
	if _, err := sd.CtlOK("start", h3Unit); err != nil {
		t.Fatal(err)
	}
	return &sdLine{server: s, sd: sd}
}

// h3UnitFile reads a unit of deploy/http3 and adapts it to the test systemd: the
// binaries in bin, the test's address and certificate, the demo's log (stderr) to
// the line's log, DefaultDependencies=no (there is no sysinit.target in the
// namespace).
func h3UnitFile(t *testing.T, sd *sdns.Systemd, name string, s *server, bin string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "http3", name))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	wants := []string{"/usr/local/bin/", "/etc/handover-h3demo/cert.pem", "/etc/handover-h3demo/key.pem"}
	if name != h3Unit {
		wants = []string{"127.0.0.1:8443"} // the socket unit's addresses
	}
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Fatalf("deploy/http3/%s no longer names %s: adapt the test", name, want)
		}
	}
	r := strings.NewReplacer("/usr/local/bin/", bin+"/", "127.0.0.1:8443", s.addr.String(),
		"/etc/handover-h3demo/cert.pem", s.cert, "/etc/handover-h3demo/key.pem", s.key)
	var out []string
	for _, line := range strings.Split(r.Replace(text), "\n") {
		if strings.HasPrefix(line, "ExecStart=") {
			line += " -listen " + s.addr.String() // the datagram socket is taken by its address
		}
		out = append(out, line)
		switch line {
		case "[Unit]":
			out = append(out, "DefaultDependencies=no")
		case "[Service]":
			// The demo logs on stderr; stdout has ExecReload's report (`handover
			// reload` prints the new PID), which is no log line.
			out = append(out, "StandardOutput=append:"+sd.LogPath("stdout.log"), "StandardError=append:"+s.logPath)
		}
	}
	return strings.Join(out, "\n")
}

// copyFile copies the file src to dst, executable.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// mainPID returns the service's MainPID (a PID in systemd's namespace, as the
// demo's X-Pid).
func (l *sdLine) mainPID() int {
	l.t.Helper()
	pid, err := l.sd.MainPID(h3Unit)
	if err != nil || pid == 0 {
		l.t.Fatalf("MainPID: %d, %v", pid, err)
	}
	return pid
}

// reload runs `systemctl reload` (ExecReload=handover reload, which waits for the
// outcome) and returns the new MainPID.
func (l *sdLine) reload(pid int) int {
	l.t.Helper()
	if out, code, err := l.sd.Ctl("reload", h3Unit); err != nil || code != 0 {
		l.t.Fatalf("systemctl reload: exit %d, %v\n%s", code, err, out)
	}
	next := l.mainPID()
	if next == pid {
		l.t.Fatalf("systemctl reload: MainPID still %d", pid)
	}
	if got := l.newConnPID(); got != next {
		l.t.Errorf("after systemctl reload: a new connection reached PID %d, want the new MainPID %d", got, next)
	}
	return next
}

// newConnPID dials a new HTTP/3 connection, sends one request and returns the
// PID that answered (in systemd's namespace, from the body "pid=P gen=G ...").
func (l *sdLine) newConnPID() int {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, cc, err := dialH3(ctx, clientTransport(l.t), l.addr, l.tls, false)
	if err != nil {
		l.t.Fatalf("dial: %v", err)
	}
	defer conn.CloseWithError(0, "")
	status, _, body, _, err := get(ctx, cc, "https://"+l.addr.String()+"/")
	if err != nil || status != http.StatusOK {
		l.t.Fatalf("request on a new connection: %d %v", status, err)
	}
	var pid, gen int
	if _, err := fmt.Sscanf(string(body), "pid=%d gen=%d", &pid, &gen); err != nil {
		l.t.Fatalf("answer %q: %v", body, err)
	}
	return pid
}

// demoProcesses counts the demo's processes in systemd's namespace.
func (l *sdLine) demoProcesses() int {
	pids, _ := l.sd.Processes()
	n := 0
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if strings.TrimSpace(string(comm)) == "handover-h3demo" {
			n++
		}
	}
	return n
}

// stop waits until the old generations have drained and exited, then stops the
// service (systemctl stop) and waits until it is inactive.
func (l *sdLine) stop() error {
	if err := proc.WaitFor(func() bool { return l.demoProcesses() == 1 }, 30*time.Second, "the old generations to exit"); err != nil {
		return err
	}
	if _, err := l.sd.CtlOK("stop", h3Unit); err != nil {
		return err
	}
	return l.sd.WaitState(h3Unit, "inactive", 30*time.Second)
}

// TestHTTP3SystemdReload: the clients of TestHTTP3ConnectionsSurviveUpgrades
// through 10 `systemctl reload`s of the deploy/http3 units: systemd holds the TCP
// and the UDP socket (ListenDatagram=), each new generation is started by the old
// one and becomes the main PID. Same outcome: 0 failed requests, 0 resets, 0
// timeouts, new connections on the new generations (and a connection dialed after
// each reload answered by the new MainPID), the download from generation 1, 0-RTT
// on generation 3; then every old generation exits and `systemctl stop` ends the
// last one cleanly.
func TestHTTP3SystemdReload(t *testing.T) {
	l := startSystemd(t)
	pid := l.mainPID()
	if got := l.newConnPID(); got != pid {
		t.Fatalf("a connection reached PID %d, want the MainPID %d", got, pid)
	}
	upgrades(t, l.server, pid, l.reload, l.stop)
}
