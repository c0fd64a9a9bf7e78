package tests

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// Issue 20 under systemd: the pool across `systemctl reload` (the handover channel,
// as SIGUSR2) and `systemctl restart` with the fd store (the stopping process leaves
// its idle connections there, the next start serves them), and kill -9 of the main
// process with the connections kept in the fd store all along. These run under the
// installed systemd only (the paths do not depend on its version).

// TestSystemdConnsReload: the pool across ten `systemctl reload`; the status of the
// last generation counts the connections it received, and its history those each
// upgrade handed over.
func TestSystemdConnsReload(t *testing.T) {
	d := startSystemd(t, sdns.RequireInstalled(t), "", "")
	gens := []int{d.answer()}
	p := startPool(t, d.addr, poolConns)
	pace(200 * time.Millisecond)
	for i := 0; i < poolUpgrades; i++ {
		if out, code := d.reload(); code != 0 {
			t.Fatalf("reload %d: exit %d\n%s", i+1, code, out)
		}
		gens = append(gens, d.mainPID())
		pace(250 * time.Millisecond)
	}
	res := p.Stop()
	checkPool(t, res, gens)
	d.waitSingle(15 * time.Second)
	checkHandedOver(t, d.events(), gens[:len(gens)-1], poolConns)
	st, err := d.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Connections.Received != poolConns {
		t.Errorf("the last generation's status: %+v; want %d connections received", st.Connections, poolConns)
	}
	for _, u := range st.Upgrades {
		if u.Drained && u.ConnsHandedOver != poolConns {
			t.Errorf("upgrade %d→%d: %d connections handed over, %d closed; want %d handed over", u.From, u.To, u.ConnsHandedOver, u.ConnsClosed, poolConns)
		}
	}
	d.checkConsole()
}

// TestSystemdConnsRestart: the pool across ten `systemctl restart` of the fd-store
// unit: each restarted process serves the connections its predecessor left in the
// store.
func TestSystemdConnsRestart(t *testing.T) {
	d := startSystemd(t, sdns.RequireInstalled(t), "fdstore", "")
	if _, err := d.sd.CtlOK("start", unit); err != nil {
		t.Fatal(err)
	}
	gens := []int{d.answer()}
	p := startPool(t, d.addr, poolConns)
	pace(200 * time.Millisecond)
	for i := 0; i < poolUpgrades; i++ {
		// systemd refuses more than 5 starts in 10s (StartLimitBurst=); the
		// counter starts again after reset-failed.
		d.sd.Ctl("reset-failed", unit)
		if out, code, err := d.sd.Ctl("restart", unit); err != nil || code != 0 {
			t.Fatalf("restart %d: %v %d\n%s", i+1, err, code, out)
		}
		gens = append(gens, d.mainPID())
		pace(250 * time.Millisecond)
	}
	res := p.Stop()
	checkPool(t, res, gens)
	logConnCost(t, d, "-fdstore")
	log := d.events()
	checkHandedOver(t, log, gens[:len(gens)-1], poolConns)
	for _, pid := range gens[1:] {
		l, ok := log.Last("conns_restored", logs.KV("pid", pid))
		if !ok || l.Get("served") != strconv.Itoa(poolConns) || l.Get("closed") != "0" {
			t.Errorf("generation %d: conns_restored %q; want served=%d closed=0", pid, l.Raw, poolConns)
		}
	}
	d.checkConsole()
}

// TestSystemdConnsKillMain: with -fdstore-conns, kill -9 of the main process: the
// idle keep-alive connections wait in the fd store, and the restarted process answers
// their next requests; the one whose request was in flight in the killed process is
// closed (its request is lost with the process), not left hanging.
func TestSystemdConnsKillMain(t *testing.T) {
	const n = 16
	d := startSystemd(t, sdns.RequireInstalled(t), "fdstore", "-fdstore-conns")
	if _, err := d.sd.CtlOK("start", unit); err != nil {
		t.Fatal(err)
	}
	logConnCost(t, d, "-fdstore -fdstore-conns")
	victim := d.answer()
	var cs []*rawhttp.Conn
	for i := 0; i < n; i++ {
		c, err := rawhttp.Dial(d.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if resp, err := c.Do("GET", "/", nil, 5*time.Second); err != nil || resp.PID() != victim {
			t.Fatalf("connection %d: %v, answered by %d; want %d", i, err, respPID(resp), victim)
		}
		cs = append(cs, c)
	}
	slow := slowOn(t, d.addr, victim, "/slow?ms=20000", 30*time.Second)
	host := d.systemdChild(victim)
	// Every connection idle in the table but the slow one (busy), and all in the
	// store (the http socket, the table, the keys once used: at least n+3).
	if err := proc.WaitFor(func() bool {
		idle, busy := keptStates(t, host)
		stored, _ := d.sd.Show(unit, "NFileDescriptorStore")
		k, _ := strconv.Atoi(stored)
		return idle == n && busy == 1 && k >= n+3
	}, 10*time.Second, "the connections kept in the fd store"); err != nil {
		idle, busy := keptStates(t, host)
		stored, _ := d.sd.Show(unit, "NFileDescriptorStore")
		t.Fatalf("%v: %d idle, %d busy, %s stored", err, idle, busy, stored)
	}
	if err := syscall.Kill(host, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	restarted := d.waitRestarted(30*time.Second, victim)
	for i, c := range cs {
		resp, err := c.Do("GET", "/", nil, 10*time.Second)
		if err != nil || resp.PID() != restarted {
			t.Errorf("connection %d after the kill: %v, answered by %d; want the restarted %d", i, err, respPID(resp), restarted)
		}
	}
	select {
	case r := <-slow:
		if k := rawhttp.Classify(r.err); k != rawhttp.EOF && k != rawhttp.Reset {
			t.Errorf("the request in flight in the killed process: %v (%v); want the connection closed", k, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Error("the connection whose request was in flight in the killed process was left open")
	}
	l, ok := d.events().Last("conns_restored", logs.KV("pid", restarted))
	if !ok || l.Get("served") != strconv.Itoa(n) || l.Get("closed") != "1" {
		t.Errorf("conns_restored %q; want served=%d closed=1", l.Raw, n)
	}
	d.checkConsole()
}

// keptStates counts the idle and busy connections in the table of kept connections
// of the process pid (graceful/connkeep.go: a memfd "handover-conns", a 64-byte
// header, then a word per slot whose low two bits are the state: 1 busy, 2 idle).
func keptStates(t *testing.T, pid int) (idle, busy int) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if !strings.HasPrefix(target, "/memfd:handover-conns") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || len(b) < 64 {
			continue
		}
		for off := 64; off+8 <= len(b); off += 8 {
			switch binary.NativeEndian.Uint64(b[off:]) & 3 {
			case 1:
				busy++
			case 2:
				idle++
			}
		}
		return idle, busy
	}
	return 0, 0
}

// logConnCost logs what a connection costs (dialled, one request, closed by the
// client), 500 in a row: its time, and the CPU time systemd (PID 1 of the
// namespace) spent meanwhile, per connection. With -fdstore-conns systemd stores and
// removes each connection; without, it hears nothing of them.
func logConnCost(t *testing.T, d *sdDemo, flags string) {
	t.Helper()
	const n = 500
	cpu0, start := cpuTime(t, d.sd.PID()), time.Now()
	for i := 0; i < n; i++ {
		c, err := rawhttp.Dial(d.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Do("GET", "/", nil, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	wall, cpu := time.Since(start), cpuTime(t, d.sd.PID())-cpu0
	t.Logf("connection cost with %s: %d connections (dial, GET /, close) in %v: %v each; systemd's CPU time: %v, %v per connection",
		flags, n, wall.Round(time.Millisecond), (wall / n).Round(time.Microsecond), cpu, (cpu / n).Round(time.Microsecond))
}

// cpuTime returns the CPU time (user and system) pid has used (/proc/PID/stat).
func cpuTime(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
