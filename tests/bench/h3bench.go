package main

// The HTTP/3 comparison (-http3): the clients of the HTTP/3 upgrade tests
// (tests/quic/h3load: long-lived quic-go connections, a round of requests every
// -http3-interval each, never retried) against handover's HTTP/3 demo
// (quic/cmd/handover-h3demo, kill -USR2) and against quic-go's http3.Server on a
// UDP socket passed by tableflip (servers/tableflip-h3, kill -HUP), through
// -http3-upgrades upgrades each, in one run.
//
//	cd tests/bench && go run . -http3 -out /tmp/h3   # 1 to 3 minutes

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
	"github.com/seed-a7250cfa/handover/tests/quic/h3load"
)

// h3Approach is one HTTP/3 server and how it is upgraded.
type h3Approach struct {
	Name, Label string
	bin         string
	args        func(addr, cert, key, pidfile string) []string
	sig         syscall.Signal
}

var h3Approaches = []h3Approach{
	{Name: "handover", Label: "handover: handover-h3demo, kill -USR2", bin: "handover-h3demo", sig: syscall.SIGUSR2,
		args: func(addr, cert, key, pidfile string) []string {
			return []string{"-listen", addr, "-tls-cert", cert, "-tls-key", key, "-pidfile", pidfile, "-drain-timeout", "30s"}
		}},
	{Name: "tableflip", Label: "tableflip v1.2.3 + quic-go http3.Server, kill -HUP", bin: "tableflip-h3", sig: syscall.SIGHUP,
		args: func(addr, cert, key, pidfile string) []string {
			return []string{"-listen", addr, "-tls-cert", cert, "-tls-key", key, "-pid-file", pidfile}
		}},
}

// H3Report is what -http3 writes into http3.json.
type H3Report struct {
	Tool       string     `json:"tool"`
	Command    string     `json:"command"`
	Started    string     `json:"started"`
	Finished   string     `json:"finished"`
	Machine    Machine    `json:"machine"`
	Clients    int        `json:"clients"`
	IntervalMS float64    `json:"interval_ms"`
	Upgrades   int        `json:"upgrades"`
	GapS       float64    `json:"gap_s"`
	Approaches []H3Result `json:"approaches"`
}

// H3Result is one server's run.
type H3Result struct {
	Name  string `json:"name"`
	Label string `json:"label"`
	// Upgrades is how many upgrades were triggered and named a new PID.
	Upgrades int `json:"upgrades"`
	// The requests (h3load.Tally).
	Sent      int `json:"sent"`
	OK        int `json:"ok"`
	Failed    int `json:"failed"`
	TimedOut  int `json:"timed_out"`
	Rejected  int `json:"rejected"`
	NotSent   int `json:"not_sent"`
	Dials     int `json:"dials"`
	DialFails int `json:"dial_fails"`
	// How the clients' connections ended.
	Resets       int `json:"resets"`
	IdleTimeouts int `json:"idle_timeouts"`
	OtherCloses  int `json:"other_closes"`
	// Generations is how many PIDs the line had (1 + upgrades); Reached, how
	// many of them answered a connection dialed after they took over.
	Generations int     `json:"generations"`
	Reached     int     `json:"reached"`
	LoadS       float64 `json:"load_s"` // how long the load ran
	// OldExitS is, per upgrade, the time from the signal to the old process's
	// exit.
	OldExitS  []float64 `json:"old_exit_s"`
	ServerCPU float64   `json:"server_cpu_s"`
	Errors    []string  `json:"errors,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// runH3 runs the HTTP/3 comparison and writes http3.json and http3.md into o.out.
func runH3(ctx context.Context, o options) error {
	repo, err := findRepo(o.repo)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "handover-bench-h3-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("keeping the work directory %s (servers' logs: NAME.log)", work)
	} else {
		defer os.RemoveAll(work)
	}
	bin := filepath.Join(work, "bin")
	for _, b := range []struct{ dir, pkg string }{{filepath.Join(repo, "quic"), "./cmd/handover-h3demo"}, {filepath.Join(repo, "tests", "bench"), "./servers/tableflip-h3"}} {
		cmd := exec.Command("go", "build", "-o", bin+string(filepath.Separator), b.pkg)
		cmd.Dir = b.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s in %s: %v\n%s", b.pkg, b.dir, err, out)
		}
	}
	cert, key, pool, err := tlsCert(work, "ecdsa")
	if err != nil {
		return err
	}
	rep := &H3Report{Tool: "tests/bench -http3", Command: runinfo.CommandLine("."), Started: time.Now().UTC().Format(time.RFC3339),
		Machine: machineInfo(sdns.Version{}, bin), Clients: o.h3Clients, IntervalMS: float64(o.h3Interval) / 1e6, Upgrades: o.h3Upgrades, GapS: o.h3Gap.Seconds()}
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h3"}}
	for _, a := range h3Approaches {
		if ctx.Err() != nil {
			break
		}
		logf("=== %s", a.Label)
		res := runH3Approach(ctx, o, a, bin, work, cert, key, clientTLS)
		logf("%s: %d sent, %d failed (%d timed out), %d resets, %d idle timeouts; new connections reached %d of %d PIDs",
			a.Name, res.Sent, res.Failed, res.TimedOut, res.Resets, res.IdleTimeouts, res.Reached, res.Generations)
		rep.Approaches = append(rep.Approaches, res)
	}
	rep.Finished = time.Now().UTC().Format(time.RFC3339)
	md := h3Markdown(rep)
	if err := writeReport(o.out, "http3", rep, md); err != nil {
		return err
	}
	fmt.Print(md)
	logf("wrote %s and %s", filepath.Join(o.out, "http3.json"), filepath.Join(o.out, "http3.md"))
	return ctx.Err()
}

// h3Line is a running server line: its PIDs, as the PID file names them.
type h3Line struct {
	pidfile string
	mu      sync.Mutex
	gens    []int // every PID the PID file named, in order
}

// pids returns every PID the PID file named, in order.
func (l *h3Line) pids() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.gens)
}

// newest returns the newest PID.
func (l *h3Line) newest() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.gens) == 0 {
		return 0
	}
	return l.gens[len(l.gens)-1]
}

// waitNext waits until the PID file names a live process other than the last
// one, and records it.
func (l *h3Line) waitNext(timeout time.Duration) (int, error) {
	last := l.newest()
	var pid int
	err := proc.WaitFor(func() bool {
		b, _ := os.ReadFile(l.pidfile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid != 0 && pid != last && proc.Alive(pid)
	}, timeout, "the PID file to name a new process")
	if err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.gens = append(l.gens, pid)
	l.mu.Unlock()
	return pid, nil
}

// runH3Approach starts the server, puts the load on it, upgrades it, and stops it.
func runH3Approach(ctx context.Context, o options, a h3Approach, bin, work, cert, key string, clientTLS *tls.Config) (res H3Result) {
	res = H3Result{Name: a.Name, Label: a.Label}
	addr, err := freePort()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	logPath := filepath.Join(work, a.Name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer lf.Close()
	line := &h3Line{pidfile: filepath.Join(work, a.Name+".pid")}
	cmd := exec.Command(filepath.Join(bin, a.bin), a.args(addr, cert, key, line.pidfile)...)
	cmd.Env, cmd.Stdout, cmd.Stderr, cmd.Dir = cleanEnv(), lf, lf, work
	if err := cmd.Start(); err != nil {
		res.Error = err.Error()
		return res
	}
	first := cmd.Process.Pid
	cmd.Process.Release() // reaped by PID (cpuMeter)
	meter := newCPUMeter(first, line.pids)
	defer func() {
		if err := stopTLSServer(meter, o.exitTimeout); err != nil && res.Error == "" {
			res.Error = err.Error()
		}
		meter.close()
		if res.Error != "" {
			b, _ := os.ReadFile(logPath)
			logf("%s: %s\n%s", a.Name, res.Error, tail(string(b), 20))
		}
	}()
	if _, err := line.waitNext(20 * time.Second); err != nil {
		res.Error = fmt.Sprintf("the server did not start: %v", err)
		return res
	}
	udp, _ := net.ResolveUDPAddr("udp", addr)
	h3Upgrades(ctx, o, a, line, udp, clientTLS, meter, &res)
	return res
}

// h3Upgrades runs the load through the upgrades and fills res.
func h3Upgrades(ctx context.Context, o options, a h3Approach, line *h3Line, addr *net.UDPAddr, clientTLS *tls.Config, meter *cpuMeter, res *H3Result) {
	cpu0, began := meter.total(), time.Now()
	lctx, stop := context.WithTimeout(ctx, time.Minute+time.Duration(o.h3Upgrades)*(o.exitTimeout+o.h3Gap+20*time.Second))
	defer stop()
	l, err := h3load.Run(lctx, h3load.Config{Addr: addr, TLS: clientTLS, Clients: o.h3Clients, Inflight: 4, Rounds: 1 << 20, Interval: o.h3Interval})
	if err != nil {
		res.Error = err.Error()
		return
	}
	defer func() {
		stop()
		t := l.Wait()
		res.Sent, res.OK, res.Failed, res.TimedOut, res.Rejected, res.NotSent = t.Sent, t.OK, t.Failed, t.TimedOut, t.Rejected, t.NotSent
		res.Dials, res.DialFails, res.Errors = t.Dials, t.DialFails, t.Errs
		res.Resets, res.IdleTimeouts, res.OtherCloses = t.Closes[h3load.ClosedReset], t.Closes[h3load.ClosedIdle], t.Closes[h3load.ClosedOther]
		res.ServerCPU, res.LoadS = meter.total()-cpu0, time.Since(began).Seconds()
		gens := line.pids()
		res.Generations = len(gens)
		reached := map[int]bool{}
		for _, c := range t.NewConns {
			reached[c.PID] = true
		}
		for _, p := range gens {
			if reached[p] {
				res.Reached++
			}
		}
	}()
	if err := proc.WaitFor(func() bool { return l.OKFromPID(line.newest()) >= 5*o.h3Clients || lctx.Err() != nil }, 20*time.Second, "the load's first answers"); err != nil {
		res.Error = err.Error()
		return
	}
	for i := 1; i <= o.h3Upgrades && lctx.Err() == nil; i++ {
		cur := line.newest()
		signaled := time.Now()
		if err := syscall.Kill(cur, a.sig); err != nil {
			res.Error = fmt.Sprintf("upgrade %d: kill -%d %d: %v", i, a.sig, cur, err)
			return
		}
		if _, err := line.waitNext(20 * time.Second); err != nil {
			res.Error = fmt.Sprintf("upgrade %d: %v", i, err)
			return
		}
		res.Upgrades++
		// tableflip refuses an upgrade until the old process has exited: each
		// server's old process exits before the next upgrade.
		if err := proc.WaitFor(func() bool { return !slices.Contains(meter.unreaped(), cur) || lctx.Err() != nil }, o.exitTimeout, "the old process to exit"); err != nil {
			res.Error = fmt.Sprintf("upgrade %d: PID %d: %v", i, cur, err)
			return
		}
		res.OldExitS = append(res.OldExitS, time.Since(signaled).Seconds())
		sleepCtx(lctx, o.h3Gap)
	}
	sleepCtx(lctx, 2*time.Second)
}

// h3Markdown is the table of the HTTP/3 comparison.
func h3Markdown(rep *H3Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/3 over upgrades: %d long-lived quic-go clients (half send one request every %.0f ms, half 4 at once), never retried, %d upgrades per server, each %.1f s after the old process exited. A request is failed when its headers left the client and no 200 came back (H3_REQUEST_REJECTED included: the load never retries).\n\n",
		rep.Clients, rep.IntervalMS, rep.Upgrades, rep.GapS)
	b.WriteString("| server | upgrades | requests | failed | rejected | timed out | stateless resets | idle timeouts | dial failures | PIDs reached by new connections | old process exits after (median, max) | load | server CPU |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Approaches {
		fmt.Fprintf(&b, "| %s | %d | %d | **%d** | %d | %d | %d | %d | %d | %d of %d | %.1f s, %.1f s | %.0f s | %.2f s |\n", r.Label, r.Upgrades, r.Sent, r.Failed, r.Rejected, r.TimedOut,
			r.Resets, r.IdleTimeouts, r.DialFails, r.Reached, r.Generations, medianF(r.OldExitS), slices.Max(append([]float64{0}, r.OldExitS...)), r.LoadS, r.ServerCPU)
	}
	for _, r := range rep.Approaches {
		if r.Error != "" {
			fmt.Fprintf(&b, "\n%s: %s\n", r.Name, r.Error)
		}
	}
	fmt.Fprintf(&b, "\n`%s` (%s).\n", rep.Command, rep.Started)
	return b.String()
}
