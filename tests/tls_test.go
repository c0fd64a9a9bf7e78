package tests

// TLS sessions across upgrades (issue 10): a session made with generation 1 resumes
// on every later generation, checked with two clients that do not share code with
// the server: `openssl s_client -sess_out/-sess_in` ("Reused") and Go's client with
// a session cache (ConnectionState().DidResume). Both present generation 1's ticket
// every time: openssl reads the file written then, and the Go client's cache keeps
// the first ticket it was given.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// firstTicket is a tls.ClientSessionCache that keeps the first session it is given
// for each server: every resumption presents that ticket (crypto/tls's LRU cache
// would keep the newest, from the last generation).
type firstTicket struct {
	mu sync.Mutex
	m  map[string]*tls.ClientSessionState
}

func (c *firstTicket) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	return s, ok
}

func (c *firstTicket) Put(key string, s *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; !ok && s != nil {
		c.m[key] = s
	}
}

// tlsClient is Go's TLS client, TLS 1.3 only, HTTP/1.1, trusting the test's
// certificate, with a firstTicket cache.
type tlsClient struct {
	cfg *tls.Config
}

func newTLSClient(pool *x509.CertPool) *tlsClient {
	return &tlsClient{cfg: &tls.Config{
		RootCAs:            pool,
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"http/1.1"},
		ClientSessionCache: &firstTicket{m: map[string]*tls.ClientSessionState{}},
	}}
}

// tlsAnswer is what a TLS client saw: whether the session resumed, and who answered.
type tlsAnswer struct {
	resumed bool
	pid     int
	served  int
}

// get makes one request on a new connection (dialled with dial, or to addr).
func (c *tlsClient) get(t testing.TB, addr string) tlsAnswer {
	t.Helper()
	a, err := c.getE(addr)
	if err != nil {
		t.Fatalf("TLS request to %s: %v", addr, err)
	}
	return a
}

func (c *tlsClient) getE(addr string) (tlsAnswer, error) {
	if err := rawhttp.CheckLoopback(addr); err != nil {
		return tlsAnswer{}, err
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, c.cfg)
	if err != nil {
		return tlsAnswer{}, err
	}
	defer conn.Close()
	resp, err := rawhttp.NewConn(conn).Do("GET", "/", rawhttp.CloseHeader(), 5*time.Second)
	if err != nil {
		return tlsAnswer{}, err
	}
	if resp.Status != 200 {
		return tlsAnswer{}, fmt.Errorf("status %d", resp.Status)
	}
	return tlsAnswer{resumed: conn.ConnectionState().DidResume, pid: resp.PID(), served: servedOf(resp.Body)}, nil
}

var servedRE = regexp.MustCompile(`\bserved=(\d+)\b`)

// servedOf returns the demo's served=N, or -1.
func servedOf(body []byte) int {
	m := servedRE.FindSubmatch(body)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

var pidRE = regexp.MustCompile(`\bpid=(\d+)\b`)

// openssl makes one request with `openssl s_client`: sessOut writes the session
// to file, otherwise it is read from file (-sess_in). It returns whether openssl
// says "Reused" (else "New") and the answer.
func openssl(t testing.TB, addr, file string, sessOut bool) tlsAnswer {
	t.Helper()
	bin := needTool(t, "openssl", "/usr/bin/openssl")
	if err := rawhttp.CheckLoopback(addr); err != nil {
		t.Fatal(err)
	}
	args := []string{"s_client", "-connect", addr, "-tls1_3", "-alpn", "http/1.1", "-ign_eof"}
	if sessOut {
		args = append(args, "-sess_out", file)
	} else {
		args = append(args, "-sess_in", file)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	out, err := cmd.Output()
	var a tlsAnswer
	seen := false
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "Reused,"):
			a.resumed, seen = true, true
		case strings.HasPrefix(line, "New,"):
			seen = true
		}
	}
	if m := pidRE.FindStringSubmatch(string(out)); m != nil {
		a.pid, _ = strconv.Atoi(m[1])
	}
	a.served = servedOf(out)
	if !seen || a.pid == 0 {
		t.Fatalf("openssl s_client %s: %v; no New/Reused line or no answer:\n%s", strings.Join(args, " "), err, out)
	}
	return a
}

// checkResumed asserts that both clients resumed generation 1's session with pid.
func checkResumed(t testing.TB, what string, os, gc tlsAnswer, pid int) {
	t.Helper()
	if !os.resumed || os.pid != pid {
		t.Errorf("%s: openssl: reused %v, answered by %d; want Reused by %d", what, os.resumed, os.pid, pid)
	}
	if !gc.resumed || gc.pid != pid {
		t.Errorf("%s: Go client: DidResume %v, answered by %d; want a resumed session with %d", what, gc.resumed, gc.pid, pid)
	}
}

// checkFull asserts that both clients made a full handshake with pid.
func checkFull(t testing.TB, what string, os, gc tlsAnswer, pid int) {
	t.Helper()
	if os.resumed || os.pid != pid {
		t.Errorf("%s: openssl: reused %v, answered by %d; want New from %d", what, os.resumed, os.pid, pid)
	}
	if gc.resumed || gc.pid != pid {
		t.Errorf("%s: Go client: DidResume %v, answered by %d; want a full handshake with %d", what, gc.resumed, gc.pid, pid)
	}
}

// settled retries f until its answer comes from pid (for 5s): right after a
// handover the old generation may still take a connection or two (it writes the PID
// file, or a master signals it, a moment before it stops accepting).
func settled(t testing.TB, pid int, f func() tlsAnswer) tlsAnswer {
	t.Helper()
	var a tlsAnswer
	proc.WaitFor(func() bool { a = f(); return a.pid == pid }, 5*time.Second, fmt.Sprintf("an answer from %d", pid))
	return a
}

// resumedOn checks that generation 1's session (sess for openssl, gc's first
// ticket) resumes with pid.
func resumedOn(t testing.TB, what, addr, sess string, gc *tlsClient, pid int) {
	t.Helper()
	checkResumed(t, what,
		settled(t, pid, func() tlsAnswer { return openssl(t, addr, sess, false) }),
		settled(t, pid, func() tlsAnswer { return gc.get(t, addr) }), pid)
}

// fullOn checks that generation 1's session gets a full handshake with pid.
func fullOn(t testing.TB, what, addr, sess string, gc *tlsClient, pid int) {
	t.Helper()
	checkFull(t, what,
		settled(t, pid, func() tlsAnswer { return openssl(t, addr, sess, false) }),
		settled(t, pid, func() tlsAnswer { return gc.get(t, addr) }), pid)
}

// startTLSDemo starts the demo serving HTTPS with a fresh certificate.
func startTLSDemo(t *testing.T, more ...string) (d *demo, pool *x509.CertPool, sess string) {
	t.Helper()
	dir := t.TempDir()
	cert, key, pool := testcert.Files(t, dir)
	d = startDemoSpec(t, demoSpec{dir: dir, addr: runPort(t), args: append([]string{"-tls-cert", cert, "-tls-key", key}, more...)})
	return d, pool, filepath.Join(dir, "session.pem")
}

// TestTLSSessionsSurviveUpgrades: a TLS 1.3 session made with generation 1 resumes
// on generations 2 to 11 (SIGUSR2 upgrades), with openssl and with Go's client;
// each new generation got the keys from its parent.
func TestTLSSessionsSurviveUpgrades(t *testing.T) {
	d, pool, sess := startTLSDemo(t)
	gc := newTLSClient(pool)
	checkFull(t, "generation 1", openssl(t, d.addr, sess, true), gc.get(t, d.addr), d.current())
	for gen := 2; gen <= 11; gen++ {
		_, cur := d.upgrade()
		resumedOn(t, fmt.Sprintf("generation %d", gen), d.addr, sess, gc, cur)
	}
	if n := d.events().Count("tls_keys", "source=parent"); n != 10 {
		t.Errorf("%d generations took the keys from their parent, want 10", n)
	}
	d.stop()
}

// TestTLSTicketKeyRotation: with a 1s rotation and a 3s lifetime, a ticket made
// with generation 1 is still accepted 1.5s later by generation 2, after the key
// that made it was replaced (a rotation is logged), and refused 3.2s after it was
// made: both clients then do a full handshake, and the new ticket resumes.
func TestTLSTicketKeyRotation(t *testing.T) {
	d, pool, sess := startTLSDemo(t, "-ticket-rotation", "1s", "-ticket-lifetime", "3s")
	gc := newTLSClient(pool)
	// The key that encrypts a ticket is less than a rotation old when it does: it
	// expires between 2s and 3s after the ticket was made.
	checkFull(t, "generation 1", openssl(t, d.addr, sess, true), gc.get(t, d.addr), d.current())
	made := time.Now()
	_, cur := d.upgrade()
	pace(time.Until(made.Add(1500 * time.Millisecond)))
	resumedOn(t, "1.5s later, generation 2", d.addr, sess, gc, cur)
	if n := d.events().Count("tls_keys_rotated"); n == 0 {
		t.Errorf("no key rotation logged in 1.5s (rotation 1s)")
	}
	pace(time.Until(made.Add(3200 * time.Millisecond)))
	fullOn(t, "3.2s later (lifetime 3s)", d.addr, sess, gc, cur)
	// A new session resumes.
	fresh := newTLSClient(pool)
	fresh.get(t, d.addr)
	if a := fresh.get(t, d.addr); !a.resumed {
		t.Errorf("a new session did not resume")
	}
	d.stop()
}

// buildDemoLinked builds the demo with -ldflags ldflags: another state version
// (-X main.stateVersion=V), or the library's test seam that damages the keys a
// generation hands to its successor (-X ...graceful.corruptKeysForTest=1).
func buildDemoLinked(t testing.TB, ldflags string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "handover-demo-variant")
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", ldflags, "../cmd/handover-demo")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the demo with %s: %v\n%s", ldflags, err, b)
	}
	return out
}

// TestTLSKeysCorruptHandoff: a new generation that cannot read the keys its parent
// handed it (they are damaged on the way) logs why (tls_keys_lost, reason=corrupt),
// makes new keys (tls_keys source=new) and takes over (the keys of the final
// hand-off are damaged too, and ignored): generation 1's session gets
// a full handshake, and a session made with the new generation resumes.
func TestTLSKeysCorruptHandoff(t *testing.T) {
	dir := t.TempDir()
	cert, key, pool := testcert.Files(t, dir)
	d := startDemoSpec(t, demoSpec{dir: dir, addr: runPort(t), program: buildDemoLinked(t, "-X github.com/seed-a7250cfa/handover/graceful.corruptKeysForTest=1"), args: []string{"-tls-cert", cert, "-tls-key", key}})
	sess := filepath.Join(dir, "session.pem")
	gc := newTLSClient(pool)
	checkFull(t, "generation 1", openssl(t, d.addr, sess, true), gc.get(t, d.addr), d.current())
	old, cur := d.upgrade()
	fullOn(t, "generation 2", d.addr, sess, gc, cur)
	// Twice: the keys of the initial batch, and those of the final hand-off.
	if n := d.events().Count("tls_keys_lost", logs.KV("pid", cur), "from=parent", "reason=corrupt"); n != 2 {
		t.Errorf("generation 2 logged tls_keys_lost (from=parent, reason=corrupt) %d times, want 2", n)
	}
	if n := d.events().Count("tls_keys", logs.KV("pid", cur), "source=new"); n != 1 {
		t.Errorf("generation 2 did not make new keys (tls_keys source=new)")
	}
	if err := waitGone(old, d.drain); err != nil {
		t.Error(err)
	}
	fresh := newTLSClient(pool)
	fresh.get(t, d.addr)
	if a := fresh.get(t, d.addr); !a.resumed || a.pid != cur {
		t.Errorf("a session made with generation 2: resumed %v by %d", a.resumed, a.pid)
	}
	d.stop()
}

// writeKeyFile writes a key file of the given hex keys with mode.
func writeKeyFile(t testing.TB, path string, mode os.FileMode, keys ...string) {
	t.Helper()
	body := "# handover session-ticket keys: the first makes new tickets\n" + strings.Join(keys, "\n") + "\n"
	if err := os.WriteFile(path+".new", []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path+".new", mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// TestTLSKeyFile: the operator's key file (-tls-keys, Config.TicketKeyFile). A file
// others may read, or a missing one, stops the demo at start (exit 1, the path
// named, nothing bound). A good one is shared by two independent processes ("two
// hosts"): a session made with one resumes on the other. An upgrade reads the
// file again: with a new key put first and the old one kept, the old session
// still resumes, and a session made after it resumes on a host that has only
// the new key. Made readable by others before the next upgrade, the file fails that
// upgrade: the old generation serves on.
func TestTLSKeyFile(t *testing.T) {
	const (
		k1 = "1111111111111111111111111111111111111111111111111111111111111111"
		k2 = "2222222222222222222222222222222222222222222222222222222222222222"
	)
	dir := t.TempDir()
	cert, key, pool := testcert.Files(t, dir)
	keys := filepath.Join(dir, "ticket.keys")
	tlsArgs := []string{"-tls-cert", cert, "-tls-key", key, "-tls-keys", keys}

	for _, c := range []struct {
		name  string
		setup func()
	}{
		{"readable by others", func() { writeKeyFile(t, keys, 0o644, k1) }},
		{"missing", func() { os.Remove(keys) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.setup()
			d := launchDemo(t, demoSpec{addr: runPort(t), args: tlsArgs})
			ws := d.exitOf(d.current())
			if !ws.Exited() || ws.ExitStatus() != 1 {
				t.Errorf("exit %v, want status 1", ws)
			}
			if !strings.Contains(d.log(), keys) {
				t.Errorf("the error does not name %s:\n%s", keys, d.log())
			}
			if c, err := net.DialTimeout("tcp", d.addr, time.Second); err == nil {
				c.Close()
				t.Errorf("%s is served", d.addr)
			}
		})
	}

	writeKeyFile(t, keys, 0o600, k1)
	for _, sub := range []string{"a", "b", "c"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := startDemoSpec(t, demoSpec{dir: filepath.Join(dir, "a"), addr: runPort(t), args: tlsArgs})
	b := startDemoSpec(t, demoSpec{dir: filepath.Join(dir, "b"), addr: runPort(t), args: tlsArgs})
	sess := filepath.Join(dir, "session.pem")
	gc := newTLSClient(pool)
	checkFull(t, "host a", openssl(t, a.addr, sess, true), gc.get(t, a.addr), a.current())
	resumedOn(t, "host b", b.addr, sess, gc, b.current())

	// Rotation by the operator: k2 first, k1 kept; host a upgrades, host b does not.
	writeKeyFile(t, keys, 0o600, k2, k1)
	_, cur := a.upgrade()
	resumedOn(t, "host a, generation 2, rotated file", a.addr, sess, gc, cur)
	if n := a.events().Count("tls_keys", "source=file", "keys=2"); n != 1 {
		t.Errorf("generation 2 did not read the two keys of the file (%d lines)", n)
	}
	// A session made now is encrypted with k2: a host with only k2 resumes it.
	writeKeyFile(t, keys, 0o600, k2)
	c := startDemoSpec(t, demoSpec{dir: filepath.Join(dir, "c"), addr: runPort(t), args: tlsArgs})
	sess2 := filepath.Join(dir, "session2.pem")
	fresh := newTLSClient(pool)
	checkFull(t, "host a, new session", openssl(t, a.addr, sess2, true), fresh.get(t, a.addr), cur)
	resumedOn(t, "host c (k2 only)", c.addr, sess2, fresh, c.current())
	// A key file others may read at upgrade time: the new generation refuses to
	// start, the upgrade fails, the old one serves on.
	if err := os.Chmod(keys, 0o644); err != nil {
		t.Fatal(err)
	}
	before := a.events().Count("upgrade_failed")
	a.signal(syscall.SIGUSR2)
	a.waitEvent(before, 15*time.Second, "upgrade_failed", logs.KV("pid", cur))
	if got := a.pidFromFile(); got != cur {
		t.Errorf("after the failed upgrade the PID file names %d, want %d", got, cur)
	}
	resumedOn(t, "host a after the failed upgrade", a.addr, sess2, fresh, cur)
	for _, d := range []*demo{a, b, c} {
		d.stop()
	}
}

// TestRunTLSSessions: under `handover run`, a library child keeps its keys in the
// master's fd store: a session made with the first child resumes on each of the
// next ten (handover reload).
func TestRunTLSSessions(t *testing.T) {
	dir := t.TempDir()
	cert, key, pool := testcert.Files(t, dir)
	m := startMaster(t, masterSpec{prog: []string{proc.Binary(t, demoPkg), "-tls-cert", cert, "-tls-key", key}})
	sess := filepath.Join(dir, "session.pem")
	gc := newTLSClient(pool)
	st := m.status()
	checkFull(t, "child 1", openssl(t, m.addr, sess, true), gc.get(t, m.addr), st.Child)
	for i := 2; i <= 11; i++ {
		if out, code := m.reload(); code != 0 {
			t.Fatalf("reload %d: exit %d\n%s", i-1, code, out)
		}
		st = m.status()
		resumedOn(t, fmt.Sprintf("child %d", i), m.addr, sess, gc, st.Child)
	}
	// Each child gets the keys twice: from the master's fd store and from its
	// predecessor over their link (graceful/masterlink.go), merged.
	if n := logs.Parse(m.log()).Count("tls_keys", "source=parent"); n != 10 {
		t.Errorf("%d children took the keys from their predecessor, want 10", n)
	}
	m.waitSettled(15 * time.Second)
	if code := m.stop(20 * time.Second); code != 0 {
		t.Errorf("the master exited %d", code)
	}
}

// TestSystemdTLSReload: the deploy units (socket unit, ExecReload=handover reload)
// under systemd: a session made with the first main process resumes on each of ten
// `systemctl reload`s' new main.
func TestSystemdTLSReload(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d, pool := startTLSSystemd(t, v, "")
		sess := filepath.Join(t.TempDir(), "session.pem")
		gc := newTLSClient(pool)
		first := openssl(t, d.addr, sess, true) // starts the service (socket activation)
		checkFull(t, "first main", first, gc.get(t, d.addr), d.mainPID())
		for i := 1; i <= 10; i++ {
			if out, code := d.reload(); code != 0 {
				t.Fatalf("reload %d: exit %d\n%s", i, code, out)
			}
			resumedOn(t, fmt.Sprintf("reload %d", i), d.addr, sess, gc, d.mainPID())
		}
		d.checkConsole()
	})
}

// startTLSSystemd boots systemd with the demo's units (variant as startSystemd),
// serving HTTPS with a certificate in the test systemd's directory.
func startTLSSystemd(t *testing.T, v sdns.Version, variant string) (*sdDemo, *x509.CertPool) {
	t.Helper()
	var pool *x509.CertPool
	d := startSystemdWith(t, v, variant, func(sd *sdns.Systemd) string {
		var cert, key string
		cert, key, pool = testcert.Files(t, sd.Dir())
		return "-tls-cert " + cert + " -tls-key " + key
	})
	return d, pool
}

// TestSystemdFDStoreTLSAndState: the fd-store unit (no socket unit) serving HTTPS:
// `systemctl restart` (twice), a reload, and a crash (kill -9: systemd restarts
// it) keep generation 1's session resumable; the served counter continues across
// restarts and the reload (the stopped process leaves its state in the fd store,
// the next one takes it out), and starts again from zero after the crash (no clean
// stop, no state).
func TestSystemdFDStoreTLSAndState(t *testing.T) {
	forEachSystemd(t, 252, func(t *testing.T, v sdns.Version) {
		d, pool := startTLSSystemd(t, v, "fdstore")
		if out, code, err := d.sd.Ctl("start", unit); err != nil || code != 0 {
			t.Fatalf("start: %v %d\n%s", err, code, out)
		}
		sess := filepath.Join(t.TempDir(), "session.pem")
		gc := newTLSClient(pool)
		served := 0
		count := func(what string, a tlsAnswer) {
			t.Helper()
			served++
			if a.served != served {
				t.Errorf("%s: served=%d, want %d", what, a.served, served)
				served = a.served
			}
		}
		o, g := openssl(t, d.addr, sess, true), gc.get(t, d.addr)
		checkFull(t, "first start", o, g, d.mainPID())
		count("first start, openssl", o)
		count("first start, Go", g)
		for i := 1; i <= 2; i++ {
			d.resetStartLimit()
			before := d.mainPID()
			if out, code, err := d.sd.Ctl("restart", unit); err != nil || code != 0 {
				t.Fatalf("restart %d: %v %d\n%s", i, err, code, out)
			}
			pid := d.mainPID()
			if pid == before {
				t.Fatalf("restart %d: MainPID still %d", i, pid)
			}
			o, g := openssl(t, d.addr, sess, false), gc.get(t, d.addr)
			checkResumed(t, fmt.Sprintf("restart %d", i), o, g, pid)
			count(fmt.Sprintf("restart %d, openssl", i), o)
			count(fmt.Sprintf("restart %d, Go", i), g)
		}
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload: exit %d\n%s", code, out)
		}
		o, g = openssl(t, d.addr, sess, false), gc.get(t, d.addr)
		checkResumed(t, "reload", o, g, d.mainPID())
		count("reload, openssl", o)
		count("reload, Go", g)
		log := d.events()
		if n := log.Count("state_loaded", "from=store"); n != 2 {
			t.Errorf("%d starts loaded the state from the fd store, want 2", n)
		}
		if n := log.Count("tls_keys", "source=store"); n != 2 {
			t.Errorf("%d starts took the keys from the fd store, want 2", n)
		}

		// A crash: systemd restarts the service; the keys were in the store.
		victim := d.mainPID()
		if err := syscall.Kill(d.hostPID(victim), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		restarted := d.waitRestarted(30*time.Second, victim)
		o, g = openssl(t, d.addr, sess, false), gc.get(t, d.addr)
		checkResumed(t, "after a crash", o, g, restarted)
		if o.served != 1 || g.served != 2 {
			t.Errorf("after a crash: served=%d, %d; want 1, 2 (the state of a crashed process is lost)", o.served, g.served)
		}
		d.checkConsole()
	})
}
