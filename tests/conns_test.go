package tests

import (
	"fmt"
	"net"
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

// dialRaw dials addr for bytes written by hand.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

var _ = fmt.Sprint
var _ = strings.Cut
var _ = syscall.SIGUSR2
