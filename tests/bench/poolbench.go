package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"github.com/seed-a7250cfa/handover/tests/internal/pool"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// The pool benchmark (-pool), issue 20's load: a client like a load balancer's
// connection pool (tests/internal/pool: 64 HTTP/1.1 keep-alive connections, each
// sending a request every 50 ms on its own connection, raw HTTP/1.1, never retried; a
// connection the server closed, or whose request failed, is dialled again) on each
// server while it is upgraded 10 times in 30 s. It counts, per upgrade, the failed
// requests, the connections the server closed and the redials, and the connections
// that were answered by every generation without a redial.
//
//	cd tests/bench && go run . -pool                  # into results/pool, about 2 minutes
//	cd tests/bench && go run . -pool -report results/pool/pool.json

// poolOptions are the -pool flags.
type poolOptions struct {
	on         bool
	approaches string
	conns      int
	every      time.Duration
	upgrades   int
	interval   time.Duration
	reqTimeout time.Duration
}

var poolOpts poolOptions

func init() {
	flag.BoolVar(&poolOpts.on, "pool", false, "run the pool benchmark instead: 64 keep-alive connections, a request every 50 ms each, across 10 upgrades (pool.json, pool.md in -out, default results/pool)")
	flag.StringVar(&poolOpts.approaches, "pool-approaches", "handover-usr2,tableflip,gracehttp", "with -pool: the approaches, in this order")
	flag.IntVar(&poolOpts.conns, "pool-conns", 64, "with -pool: keep-alive connections")
	flag.DurationVar(&poolOpts.every, "pool-every", 50*time.Millisecond, "with -pool: each connection's period")
	flag.IntVar(&poolOpts.upgrades, "pool-upgrades", 10, "with -pool: upgrades per approach")
	flag.DurationVar(&poolOpts.interval, "pool-interval", 3*time.Second, "with -pool: time from one upgrade to the next (and before the first, and after the last)")
	flag.DurationVar(&poolOpts.reqTimeout, "pool-request-timeout", 5*time.Second, "with -pool: bound on one request")
}

// PoolReport is everything a -pool run measured; it is written as pool.json.
type PoolReport struct {
	RunHeader
	Config      poolConfig   `json:"config"`
	Definitions []string     `json:"definitions"`
	Approaches  []PoolResult `json:"approaches"`
}

type poolConfig struct {
	Conns            int     `json:"conns"`
	EveryMS          float64 `json:"every_ms"`
	Upgrades         int     `json:"upgrades"`
	IntervalMS       float64 `json:"interval_ms"`
	RequestTimeoutMS float64 `json:"request_timeout_ms"`
}

// PoolResult is one approach's run.
type PoolResult struct {
	Name     string `json:"name"`
	Label    string `json:"label"`
	Restart  string `json:"restart"`
	Error    string `json:"error,omitempty"`
	Upgrades int    `json:"upgrades"` // done
	PIDs     int    `json:"pids"`     // generations that answered
	Requests int    `json:"requests"`
	OK       int    `json:"ok"`
	Failed   int    `json:"failed"`
	Closed   int    `json:"closed_by_server"`
	Redials  int    `json:"redials"`
	// Followed counts the connections answered by every generation, never redialled.
	Followed int      `json:"followed_every_generation"`
	Errors   []string `json:"errors,omitempty"`
}

func (r PoolResult) perUpgrade(n int) string {
	if r.Upgrades == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(n)/float64(r.Upgrades))
}

// runPoolMain runs the pool benchmark (or, with -report, writes its tables again)
// and exits on failure.
func runPoolMain(o options) {
	out := o.out
	if out == "results" {
		out = filepath.Join("results", "pool")
	}
	if o.report != "" {
		rep, err := runinfo.ReadJSON[PoolReport](o.report)
		if err == nil {
			err = writePoolOutputs(out, rep)
		}
		if err != nil {
			fatalf("%v", err)
		}
		fmt.Print(poolMarkdown(rep))
		return
	}
	for _, n := range splitList(poolOpts.approaches) {
		if _, ok := approachByName(n); !ok {
			fatalf("-pool-approaches: unknown approach %q", n)
		}
	}
	runCommand(func(ctx context.Context) error {
		rep, err := runPool(ctx, o)
		if rep != nil {
			if werr := writePoolOutputs(out, rep); werr != nil {
				return errors.Join(err, werr)
			}
			fmt.Print(poolMarkdown(rep))
		}
		return err
	})
}

func runPool(ctx context.Context, o options) (*PoolReport, error) {
	began := time.Now()
	e, cleanup, err := setUp(o, "handover-pool-", "")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	po := poolOpts
	names := splitList(po.approaches)
	sdErr := checkSystemd(e, slices.ContainsFunc(names, func(n string) bool { a, _ := approachByName(n); return a.Systemd }))
	rep := &PoolReport{RunHeader: newHeader("tests/bench -pool", began, machineInfo(e.systemd, e.bin)),
		Config: poolConfig{Conns: po.conns, EveryMS: ms(po.every), Upgrades: po.upgrades, IntervalMS: ms(po.interval), RequestTimeoutMS: ms(po.reqTimeout)},
		Definitions: []string{
			fmt.Sprintf("pool: %d HTTP/1.1 keep-alive connections, each sending GET / every %v on its own connection (raw HTTP/1.1, never retried); a connection the server closed, or whose request failed, is dialled again", po.conns, po.every),
			fmt.Sprintf("schedule: %v of load, then an upgrade every %v (%d), then %v of load", po.interval, po.interval, po.upgrades, po.interval),
			"failed: a request without a complete 2xx response (error or status)",
			"closed by the server: a response with Connection: close, or a connection found closed (EOF, reset)",
			"followed every generation: connections answered by every PID in turn, never redialled",
		}}
	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		a, _ := approachByName(name)
		if a.Systemd && sdErr != nil {
			rep.Approaches = append(rep.Approaches, PoolResult{Name: a.Name, Label: a.Label, Restart: a.Restart, Error: fmt.Sprintf("not run: %v", sdErr)})
			continue
		}
		logf("=== %s (%s): %d upgrades under the pool", a.Name, a.Label, po.upgrades)
		r := poolRun(ctx, e, a)
		logf("%s: %d upgrades, %d requests, %d failed, %d closed, %d redials, %d/%d connections followed every generation %s",
			a.Name, r.Upgrades, r.Requests, r.Failed, r.Closed, r.Redials, r.Followed, po.conns, r.Error)
		rep.Approaches = append(rep.Approaches, r)
	}
	rep.Finished = time.Now().UTC().Format(time.RFC3339)
	return rep, finished(ctx, began)
}

// poolRun starts a fresh server of a, runs the pool across its upgrades, and stops it.
func poolRun(ctx context.Context, e *env, a approach) (r PoolResult) {
	po := poolOpts
	r = PoolResult{Name: a.Name, Label: a.Label, Restart: a.Restart}
	fail := func(err error) {
		if err != nil {
			r.Error = strings.TrimPrefix(r.Error+"; "+err.Error(), "; ")
		}
	}
	srv, err := a.new(e)
	if err != nil {
		fail(err)
		return r
	}
	defer func() {
		fail(srv.Stop())
		if err := proc.LeakCheck(); err != nil {
			fail(err)
			for _, p := range proc.Children(os.Getpid()) {
				proc.KillAndReap(p, 5*time.Second)
			}
		}
		if r.Error != "" {
			logf("%s: server log (last lines):\n%s", a.Name, srv.Log())
		}
	}()
	cur, err := srv.Start()
	if err != nil {
		fail(err)
		return r
	}
	gens := []int{cur}
	p, err := pool.Start(pool.Config{Addr: srv.Addr(), Conns: po.conns, Every: po.every, Timeout: po.reqTimeout, Redial: true,
		Duration: time.Duration(po.upgrades+3) * po.interval, MaxRequests: 1_000_000})
	if err != nil {
		fail(err)
		return r
	}
	start := time.Now()
	for i := 1; i <= po.upgrades && ctx.Err() == nil; i++ {
		sleepUntil(ctx, start.Add(time.Duration(i)*po.interval))
		next, err := poolUpgrade(e, srv, cur, gens)
		if err != nil {
			fail(fmt.Errorf("upgrade %d: %w", i, err))
			break
		}
		r.Upgrades++
		cur, gens = next, append(gens, next)
	}
	sleepUntil(ctx, start.Add(time.Duration(po.upgrades+1)*po.interval))
	res := p.Stop()
	r.PIDs = len(res.PIDsSeen())
	r.Requests, r.OK, r.Failed, r.Closed, r.Redials = res.Totals()
	r.Errors = res.Errors(10)
	for _, c := range res.Conns {
		if c.Redials == 0 && len(c.PIDs) == len(gens) {
			r.Followed++
		}
	}
	return r
}

// poolUpgrade upgrades srv, whose generation pid serves, and returns the new one
// once it answers; the old one is reaped in the background once it exits.
func poolUpgrade(e *env, srv server, pid int, gens []int) (int, error) {
	host, err := srv.Host(pid)
	if err != nil {
		return 0, err
	}
	exited := watchExit(host, e.opts.exitTimeout)
	if err := srv.Restart(pid); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := rawhttp.Get(srv.Addr(), "/", 2*time.Second)
		if err == nil && resp.PID() != 0 && !containsInt(gens, resp.PID()) {
			go func() {
				if !(<-exited).IsZero() && srv.Reaps() {
					reapWhenOrphaned(host, e.opts.exitTimeout)
				}
			}()
			return resp.PID(), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, errors.New("no new PID answered within 30s")
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func sleepUntil(ctx context.Context, t time.Time) {
	sleep(ctx, time.Until(t))
}

// writePoolOutputs writes pool.json and pool.md into dir.
func writePoolOutputs(dir string, rep *PoolReport) error {
	return writeReport(dir, "pool", rep, poolMarkdown(rep))
}

// writeReport writes rep as NAME.json and md as NAME.md into dir (made if missing).
func writeReport(dir, name string, rep any, md string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".md"), []byte(md), 0o644)
}

// poolMarkdown is the report's table.
func poolMarkdown(rep *PoolReport) string {
	var b strings.Builder
	c := rep.Config
	fmt.Fprintf(&b, "%d keep-alive connections, a request every %.0f ms each (never retried; redialled after a close or a failure), %d upgrades %.0f s apart. Per upgrade:\n\n",
		c.Conns, c.EveryMS, c.Upgrades, c.IntervalMS/1000)
	b.WriteString("| approach | upgrades | requests | failed requests | closed by the server | redials | connections that followed every generation |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Approaches {
		fmt.Fprintf(&b, "| %s | %d | %d | %d (%s per upgrade) | %d (%s) | %d (%s) | %d of %d |\n", r.Label, r.Upgrades, r.Requests,
			r.Failed, r.perUpgrade(r.Failed), r.Closed, r.perUpgrade(r.Closed), r.Redials, r.perUpgrade(r.Redials), r.Followed, c.Conns)
	}
	for _, r := range rep.Approaches {
		if r.Error != "" {
			fmt.Fprintf(&b, "\n%s: %s\n", r.Name, r.Error)
		}
	}
	fmt.Fprintf(&b, "\n%s, %s; %s\n", rep.Machine.CPUModel, fmt.Sprint(rep.Machine.CPUs)+" CPUs", rep.Command)
	return b.String()
}
