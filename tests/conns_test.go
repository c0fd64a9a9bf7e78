package tests

import (
	"bufio"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/pool"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// Issue 20: idle keep-alive connections move to the new generation. A pool of
// keep-alive connections like a load balancer's (package pool: each connection sends a
// request every 50 ms on its own connection, never retried, never redialled) runs
// across upgrades: no request fails, the server closes no connection, and each
// connection is answered by every generation in turn.

const (
	poolConns    = 64
	poolUpgrades = 10
)

// startPool starts the pool on addr.
func startPool(t *testing.T, addr string, conns int) *pool.Pool {
	t.Helper()
	p, err := pool.Start(pool.Config{Addr: addr, Conns: conns, Duration: 60 * time.Second, MaxRequests: 200000})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// checkPool checks that no request failed, that the server closed no connection,
// and that each connection was answered by the generations gens, in order, each of
// them (none skipped: a connection moves at each handover).
func checkPool(t *testing.T, res pool.Result, gens []int) {
	t.Helper()
	t.Log(res.Summary())
	req, _, failed, closed, redials := res.Totals()
	if failed > 0 || closed > 0 || redials > 0 {
		t.Errorf("%d failed requests, %d connections closed by the server, %d redials (want 0): %v", failed, closed, redials, res.Errors(10))
	}
	if req < len(res.Conns)*len(gens) {
		t.Errorf("only %d requests for %d connections over %d generations", req, len(res.Conns), len(gens))
	}
	bad := 0
	for i, c := range res.Conns {
		if !slices.Equal(c.PIDs, gens) {
			if bad++; bad <= 5 {
				t.Errorf("connection %d was answered by %v; want every generation in turn %v", i, c.PIDs, gens)
			}
		}
	}
}

// checkHandedOver checks that each old generation logged its drain with n connections
// handed over, and that the handover records in the newest generation's history say so.
func checkHandedOver(t *testing.T, log logs.Log, olds []int, n int) {
	t.Helper()
	for _, pid := range olds {
		ls := log.Where("drained", logs.KV("pid", pid))
		if len(ls) == 0 {
			t.Errorf("generation %d logged no drained event", pid)
			continue
		}
		if got := ls[len(ls)-1].Get("handed_over"); got != strconv.Itoa(n) {
			t.Errorf("generation %d handed over %s connections; want %d", pid, got, n)
		}
	}
}

// TestConnsUpgradeSIGUSR2: the pool across ten SIGUSR2 upgrades.
func TestConnsUpgradeSIGUSR2(t *testing.T) {
	d := startDemo(t, demoOpts{})
	p := startPool(t, d.addr, poolConns)
	pace(200 * time.Millisecond)
	for i := 0; i < poolUpgrades; i++ {
		d.upgrade()
		pace(250 * time.Millisecond)
	}
	res := p.Stop()
	checkPool(t, res, d.pids)
	for _, old := range d.pids[:len(d.pids)-1] {
		if err := waitGone(old, 10*time.Second); err != nil {
			t.Error(err)
		}
	}
	checkHandedOver(t, d.events(), d.pids[:len(d.pids)-1], poolConns)
	d.stop()
}

// TestConnsUpgradeUnix: the same over a unix socket.
func TestConnsUpgradeUnix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "demo.sock")
	d := startDemoUnix(t, sock)
	p := startPool(t, "unix:"+sock, 16)
	pace(200 * time.Millisecond)
	for i := 0; i < 3; i++ {
		d.upgrade()
		pace(250 * time.Millisecond)
	}
	res := p.Stop()
	checkPool(t, res, d.pids)
	d.stop()
}

// startDemoUnix starts the demo on the unix socket sock.
func startDemoUnix(t *testing.T, sock string) *demo {
	t.Helper()
	d := startDemo(t, demoOpts{args: []string{"-listen", "unix:" + sock}})
	if err := proc.WaitFor(func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, "the unix socket"); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConnsPartialRequest: a connection whose request the old generation had
// started to read when the upgrade came is not handed over: the old generation
// answers it (keeping the connection alive) once the rest comes, and the connection
// goes on with the new one.
func TestConnsPartialRequest(t *testing.T) {
	d := startDemo(t, demoOpts{})
	old := d.current()
	c := dialRaw(t, d.addr)
	if pid := exchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); pid != old {
		t.Fatalf("first request answered by %d, want %d", pid, old)
	}
	if _, err := io.WriteString(c.Conn, "GET / HTTP/1.1\r\nHo"); err != nil {
		t.Fatal(err)
	}
	// The old generation has read the bytes: none waits in its socket.
	if err := proc.WaitFor(func() bool { return recvQueue(t, d.addr, c.LocalAddr().String()) == 0 }, 5*time.Second, "the partial request read"); err != nil {
		t.Fatal(err)
	}
	_, cur := d.upgrade()
	// Once the old generation drains, the connection goes on with the new one after
	// its request (see checkDrainedAsBefore).
	d.waitEvent(0, 10*time.Second, "drain_start", logs.KV("pid", old))
	if pid := exchange(t, c, "st: x\r\n\r\n"); pid != old {
		t.Errorf("the partial request was answered by %d; want the old generation %d", pid, old)
	}
	// Answered, the connection is idle and moves: the old generation's drain ends
	// with it handed over. (A request sent in the instant before, and read by the
	// old generation, would be answered there, with "Connection: close".)
	d.waitEvent(0, 10*time.Second, "drained", logs.KV("pid", old), logs.KV("handed_over", "1"))
	if pid := exchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); pid != cur {
		t.Errorf("the next request was answered by %d; want the new generation %d", pid, cur)
	}
	d.stop()
}

// TestConnsDrainedAsBefore: a TLS connection, and a connection of a demo with
// handing over turned off, are drained as before: the next request after the upgrade
// is answered by the old generation with "Connection: close".
func TestConnsDrainedAsBefore(t *testing.T) {
	t.Run("tls", func(t *testing.T) {
		d, certs, _ := startTLSDemo(t)
		nc, err := tls.Dial("tcp", d.addr, &tls.Config{RootCAs: certs, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		checkDrainedAsBefore(t, d, &rawConn{Conn: nc, br: bufio.NewReader(nc)})
	})
	t.Run("disabled", func(t *testing.T) {
		d := startDemo(t, demoOpts{args: []string{"-no-conn-handover"}})
		checkDrainedAsBefore(t, d, dialRaw(t, d.addr))
	})
}

func checkDrainedAsBefore(t *testing.T, d *demo, c *rawConn) {
	t.Helper()
	old := d.current()
	if pid := exchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); pid != old {
		t.Fatalf("answered by %d, want %d", pid, old)
	}
	d.upgrade()
	// The new generation is ready a moment before the old one starts its drain
	// (and stops keep-alive): the request goes once it has.
	d.waitEvent(0, 20*time.Second, "drain_start", logs.KV("pid", old))
	if _, err := io.WriteString(c.Conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if pid, _ := strconv.Atoi(resp.Header.Get("X-Pid")); pid != old || !resp.Close {
		t.Errorf("after the upgrade: answered by %d (close %v); want the old generation %d, Connection: close", pid, resp.Close, old)
	}
	d.stop()
}

// TestConnsSuccessorDies: the new generation dies after it took the connections
// over: they end with it (each client sees its connection close, none hangs), and
// the old generation, still draining a slow request, serves again.
func TestConnsSuccessorDies(t *testing.T) {
	d := startDemo(t, demoOpts{drain: 20 * time.Second})
	old := d.current()
	slow := slowOn(t, d.addr, old, "/slow?ms=3000", 10*time.Second)
	p := startPool(t, d.addr, 8)
	answered := func(pid int) func(c pool.Conn) bool {
		return func(c pool.Conn) bool { return slices.Contains(c.PIDs, pid) }
	}
	if err := p.Wait(answered(old), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	_, cur := d.upgrade()
	if err := p.Wait(answered(cur), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(cur, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(func(c pool.Conn) bool { return c.Failed > 0 }, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	d.waitEvent(0, 10*time.Second, "resumed", logs.KV("pid", old))
	if pid := d.answer(); pid != old {
		t.Errorf("a new connection after the successor died was answered by %d; want the old generation %d", pid, old)
	}
	res := p.Stop()
	t.Log(res.Summary())
	for i, c := range res.Conns {
		if !slices.Equal(c.PIDs, []int{old, cur}) || c.Failed != 1 || c.Closed != 1 {
			t.Errorf("connection %d: answered by %v, %d failed, %d closed; want %v, then closed once", i, c.PIDs, c.Failed, c.Closed, []int{old, cur})
		}
	}
	if r := <-slow; r.err != nil || r.resp.PID() != old {
		t.Errorf("the slow request: %v; want it answered by the old generation", r.err)
	}
	d.pids = d.pids[:len(d.pids)-1] // the dead one; the old one serves again
	waitGone(cur, 5*time.Second)
	d.stop()
}

// answer makes one request on a new connection and returns who answered.
func (d *demo) answer() int {
	d.t.Helper()
	resp, err := rawhttp.Get(d.addr, "/", 5*time.Second)
	if err != nil {
		d.t.Fatal(err)
	}
	return resp.PID()
}

// rawConn is a connection for requests written by hand.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

// exchange writes req on c, reads the response and returns who answered (failing
// t if the response is not a 200 that keeps the connection).
func exchange(t *testing.T, c *rawConn, req string) int {
	t.Helper()
	if _, err := io.WriteString(c.Conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("%d (close %v); want 200, kept alive", resp.StatusCode, resp.Close)
	}
	pid, _ := strconv.Atoi(resp.Header.Get("X-Pid"))
	return pid
}

// recvQueue returns the bytes waiting in the receive queue of the server side of
// the loopback TCP connection from client to server (/proc/net/tcp), -1 if none.
func recvQueue(t *testing.T, server, client string) int {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	local, remote := procAddr(t, server), procAddr(t, client)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 4 && f[1] == local && f[2] == remote {
			_, rx, _ := strings.Cut(f[4], ":")
			n, _ := strconv.ParseInt(rx, 16, 64)
			return int(n)
		}
	}
	return -1
}

// procAddr formats a 127.x IPv4 address as /proc/net/tcp does ("0100007F:1F90").
func procAddr(t *testing.T, addr string) string {
	a, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	ip := a.IP.To4()
	return strings.ToUpper(hex.EncodeToString([]byte{ip[3], ip[2], ip[1], ip[0]})) + fmt.Sprintf(":%04X", a.Port)
}

// dialRaw dials addr for requests written by hand.
func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}
