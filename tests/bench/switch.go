package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// The switch benchmark (-switch) times one thing, the way issue 18 measured it: from
// the upgrade's trigger to the first answer from the new process, on an idle server
// watched by a probe that dials a new connection every -switch-every. Each approach
// starts a fresh server per round; the approaches take turns, round after round.

// switchApproach is one way of switching a server to a new process.
type switchApproach struct {
	Name    string // flag and JSON name
	Label   string // for tables
	Server  string // what serves
	Trigger string // what starts the switch
	Systemd bool   // runs under a real systemd (needs root and namespaces)
	new     func(e *env) (server, error)
	// prepare, if set, runs before the clock starts and is not timed (e.g. a
	// two-phase upgrade's prepare); it gets the serving PID.
	prepare func(srv server, pid int) error
	// trigger starts the switch; the clock starts just before it is called. It
	// may return at once (a signal) or when a command has finished (systemctl
	// reload). nil means srv.Restart.
	trigger func(srv server, pid int) error
}

// switchApproaches reuse the servers of the load benchmark (approaches.go), and add
// the control socket's path.
var switchApproaches = []switchApproach{
	fromLoadApproach("handover-usr2"),
	fromLoadApproach("handover-lean"),
	fromLoadApproach("handover-run"),
	fromLoadApproach("handover-reload"),
	{
		Name:    "handover-ctl",
		Label:   "handover: handover reload -control",
		Server:  "cmd/handover-demo -control PATH -drain-timeout 30s -probation 200ms",
		Trigger: "handover reload -control PATH: the command's own start is timed; it returns once the new generation has taken over",
		new:     func(e *env) (server, error) { return newCtlServer(e) },
	},
	fromLoadApproach("tableflip"),
	fromLoadApproach("gracehttp"),
	fromLoadApproach("endless"),
}

// ctlServer is handover-demo with a control socket, upgraded by the command
// `handover reload -control PATH` (a later two-phase upgrade's prepare and commit
// go through the same socket).
type ctlServer struct {
	*procServer
	ctl string
}

func newCtlServer(e *env) (*ctlServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	ctl := filepath.Join(e.work, "ctl-"+port+".sock")
	p, err := newProcServer(e, "handover-demo", syscall.SIGUSR2, false, slices.Concat(demoFlags, []string{"-control", ctl})...)
	if err != nil {
		return nil, err
	}
	return &ctlServer{procServer: p, ctl: ctl}, nil
}

// Restart runs `handover reload -control PATH` and returns once it has exited.
func (s *ctlServer) Restart(int) error {
	return s.handover("reload")
}

// handover runs `handover VERB -control PATH`, bounded by the exit timeout.
func (s *ctlServer) handover(verb string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.e.opts.exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.e.bin, "handover"), verb, "-control", s.ctl, "-timeout", "30s")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("handover %s -control %s: %v: %s", verb, s.ctl, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// fromLoadApproach makes a switch approach of a load benchmark's approach: the same
// server, its restart as the trigger.
func fromLoadApproach(name string) switchApproach {
	a, ok := approachByName(name)
	if !ok {
		panic("no approach " + name)
	}
	return switchApproach{Name: a.Name, Label: a.Label, Server: a.Server, Trigger: a.Restart, Systemd: a.Systemd, new: a.new}
}

func switchApproachNames() []string {
	return namesOf(switchApproaches, func(a switchApproach) string { return a.Name })
}

func switchApproachByName(name string) (switchApproach, bool) {
	return byName(switchApproaches, func(a switchApproach) string { return a.Name }, name)
}

// approach returns the approach called name: one of switchApproaches, or
// APPROACH@VARIANT, the same approach with the servers of the -switch-variant
// VARIANT (another build: a static one, a patched one), so that a run compares two
// builds turn by turn.
func (o switchOptions) approach(name string) (switchApproach, bool) {
	base, variant, ok := strings.Cut(name, "@")
	if !ok {
		return switchApproachByName(name)
	}
	dir, known := o.variants[variant]
	a, found := switchApproachByName(base)
	if !known || !found {
		return switchApproach{}, false
	}
	a.Name, a.Label = name, a.Label+" ["+variant+"]"
	newServer := a.new
	a.new = func(e *env) (server, error) {
		ve := *e
		ve.bin = dir
		return newServer(&ve)
	}
	return a, true
}

// switchOptions are the -switch flags.
type switchOptions struct {
	approaches  string
	rounds      int
	upgrades    int // per approach and round
	every       time.Duration
	lead        time.Duration // probing before the trigger
	gap         time.Duration // idle time between the old process's exit and the next switch
	timeout     time.Duration // bound on one switch (trigger → new PID answering)
	reqTimeout  time.Duration
	maxInFlight int
	bin         string            // the servers are there already (not built)
	env         []string          // added to the servers' environment
	variants    map[string]string // -switch-variant: name → directory of servers
}

func checkSwitchOptions(o switchOptions) error {
	switch {
	case o.rounds < 1 || o.rounds > 100:
		return fmt.Errorf("-switch-rounds %d: want 1..100", o.rounds)
	case o.upgrades < 1 || o.upgrades > 1000:
		return fmt.Errorf("-switch-upgrades %d: want 1..1000", o.upgrades)
	case o.every < 50*time.Microsecond || o.every > time.Second:
		return fmt.Errorf("-switch-every %v: want 50µs..1s", o.every)
	case o.timeout < time.Second || o.timeout > 5*time.Minute:
		return fmt.Errorf("-switch-timeout %v: want 1s..5m", o.timeout)
	case o.lead < 0 || o.gap < 0:
		return errors.New("-switch-lead and -switch-gap cannot be negative")
	case o.maxInFlight < 1 || o.maxInFlight > 1024:
		return fmt.Errorf("-switch-max-in-flight %d: want 1..1024", o.maxInFlight)
	case o.reqTimeout <= 0 || o.reqTimeout > time.Minute:
		return fmt.Errorf("-switch-request-timeout %v: want up to 1m", o.reqTimeout)
	}
	for _, n := range splitList(o.approaches) {
		if _, ok := o.approach(n); !ok {
			return fmt.Errorf("-switch-approaches: unknown approach %q (known: %s, each also as NAME@VARIANT with -switch-variant VARIANT=DIR)", n, strings.Join(switchApproachNames(), ", "))
		}
	}
	for v, dir := range o.variants {
		if err := checkServers(dir); err != nil {
			return fmt.Errorf("-switch-variant %s=%s: %w", v, dir, err)
		}
	}
	for _, kv := range o.env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("-server-env %q: want NAME=VALUE", kv)
		}
	}
	if o.bin != "" {
		if err := checkServers(o.bin); err != nil {
			return fmt.Errorf("-switch-bin %s: %w (build the servers there, or leave it out)", o.bin, err)
		}
	}
	return nil
}

// checkServers checks that dir holds the servers' binaries.
func checkServers(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%s is not an absolute path", dir)
	}
	for _, b := range []string{"handover-demo", "handover", "tableflip", "gracehttp", "endless"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return err
		}
	}
	return nil
}

// runSwitch builds the servers and times the switches of every approach asked for,
// the approaches taking turns in rounds.
func runSwitch(ctx context.Context, o options) (*SwitchReport, error) {
	began := time.Now()
	e, cleanup, err := setUp(o, "handover-switch-", o.sw.bin)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	e.serverEnv = o.sw.env
	names := splitList(o.sw.approaches)
	sdErr := checkSystemd(e, slices.ContainsFunc(names, func(n string) bool { a, _ := o.sw.approach(n); return a.Systemd }))
	rep := &SwitchReport{RunHeader: newHeader("tests/bench -switch", began, machineInfo(e.systemd, e.bin)),
		Config: switchConfigOf(o.sw), Definitions: switchDefinitions(o.sw)}
	runs := map[string][]switchRun{}
	var rounds = map[string][]string{}
	errs := map[string][]string{}
	for round := 1; round <= o.sw.rounds && ctx.Err() == nil; round++ {
		for _, name := range names {
			a, _ := o.sw.approach(name)
			if ctx.Err() != nil || a.Systemd && sdErr != nil {
				continue
			}
			logf("=== round %d/%d: %s (%s), %d switches", round, o.sw.rounds, a.Name, a.Label, o.sw.upgrades)
			before := runinfo.LoadAvg()
			rs, err := switchRound(ctx, e, a, round)
			runs[name] = append(runs[name], rs...)
			rounds[name] = append(rounds[name], before+" → "+runinfo.LoadAvg())
			if err != nil {
				logf("%s: round %d: %v", a.Name, round, err)
				errs[name] = append(errs[name], fmt.Sprintf("round %d: %v", round, err))
			}
		}
	}
	for _, name := range names {
		a, _ := o.sw.approach(name)
		res := switchResultOf(a, runs[name], rounds[name], errs[name])
		if a.Systemd && sdErr != nil {
			res.Error = fmt.Sprintf("not run: %v", sdErr)
		}
		logf("%s: %s", a.Name, res.oneLine())
		rep.Approaches = append(rep.Approaches, res)
	}
	rep.Finished = time.Now().UTC().Format(time.RFC3339)
	return rep, finished(ctx, began)
}

// switchRound starts a fresh server of a, switches it o.sw.upgrades times, and
// stops it.
func switchRound(ctx context.Context, e *env, a switchApproach, round int) (runs []switchRun, err error) {
	srv, err := a.new(e)
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			ab, ok := r.(tbAbort)
			if !ok {
				panic(r)
			}
			err = errors.Join(err, errors.New(ab.msg))
		}
		if serr := srv.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the server: %w", serr))
		}
		if lerr := proc.LeakCheck(); lerr != nil {
			err = errors.Join(err, lerr)
			for _, p := range proc.Children(os.Getpid()) {
				proc.KillAndReap(p, 5*time.Second)
			}
		}
		if err != nil {
			logf("%s: server log (last lines):\n%s", a.Name, srv.Log())
		}
	}()
	cur, err := srv.Start()
	if err != nil {
		return nil, err
	}
	known := map[int]bool{cur: true}
	var lingering []error
	for i := 1; i <= e.opts.sw.upgrades && ctx.Err() == nil; i++ {
		sleep(ctx, e.opts.sw.gap)
		r := switchOnce(ctx, e, a, srv, cur, known)
		r.Round, r.Index = round, i
		runs = append(runs, r)
		if r.NewPID == 0 {
			return runs, errors.Join(append(lingering, fmt.Errorf("switch %d: no new PID answered: %s", i, r.Err))...)
		}
		if r.ExitMS < 0 {
			// It no longer serves (a new PID answered); stopping the server ends it.
			lingering = append(lingering, fmt.Errorf("switch %d: the old PID %d did not exit within %v", i, r.OldPID, e.opts.sw.timeout))
		}
		known[r.NewPID] = true
		cur = r.NewPID
	}
	return runs, errors.Join(lingering...)
}

// switchOnce switches srv, whose serving generation is pid, once, and waits for the
// old generation to exit (and reaps it when it ends up this process's child).
func switchOnce(ctx context.Context, e *env, a switchApproach, srv server, pid int, known map[int]bool) switchRun {
	o := e.opts.sw
	r := switchRun{OldPID: pid, SwitchMS: -1, ExitMS: -1, LoadAvg: runinfo.LoadAvg()}
	host, err := srv.Host(pid)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if a.prepare != nil {
		if err := a.prepare(srv, pid); err != nil {
			r.Err = "prepare: " + err.Error()
			return r
		}
	}
	trigger := a.trigger
	if trigger == nil {
		trigger = func(s server, pid int) error { return s.Restart(pid) }
	}
	isNew := func(p int) bool { return !known[p] }
	max := int((o.lead+o.timeout)/o.every) + 1
	p := newPacedProbe(srv.Addr(), o.every, o.reqTimeout, o.maxInFlight, max, isNew)
	stop := make(chan struct{})
	probed := make(chan struct{})
	exited := watchExit(host, o.timeout)
	var hold int
	var cpu0 time.Duration
	if h, ok := srv.(holder); ok {
		hold = h.Holder()
		cpu0 = taskCPU(hold)
	}
	began := time.Now()
	go func() {
		p.run(stop, time.Now().Add(o.lead+o.timeout))
		close(probed)
	}()
	sleep(ctx, o.lead)
	trigc := make(chan error, 1)
	t0 := time.Now()
	go func() {
		err := trigger(srv, pid)
		r.CommandMS = ms(time.Since(t0))
		trigc <- err
	}()
	var terr error
	select {
	case <-p.found:
		terr = <-trigc
	case terr = <-trigc:
		if terr != nil {
			// A failed command may have switched anyway: a moment to see it.
			sleep(ctx, 2*time.Second)
			break
		}
		select {
		case <-p.found:
		case <-probed:
		case <-ctx.Done():
		}
	case <-probed:
		terr = <-trigc
	case <-ctx.Done():
		terr = <-trigc
	}
	close(stop)
	<-probed
	if hold != 0 {
		// The holder's CPU while the probe ran, as a share of one CPU.
		pct := 100 * float64(taskCPU(hold)-cpu0) / float64(time.Since(began))
		r.HolderCPU = &pct
	}
	if terr != nil {
		r.Err = terr.Error()
	}
	samples, skipped := p.result()
	t := tallyProbe(samples, t0, isNew)
	r.Requests, r.Skipped, r.Failures, r.OldAfter, r.NewPID = t.Requests, skipped, t.Failures, t.OldAfter, t.NewPID
	if t.First >= 0 {
		r.SwitchMS = ms(t.First)
		r.OldLastMS = ms(t.OldLast)
	} else if r.Err == "" {
		r.Err = fmt.Sprintf("no answer from a new PID within %v (%d requests, %d answered by the old generation)", o.timeout, t.Requests, t.OldAfter)
	}
	if at := <-exited; !at.IsZero() {
		r.ExitMS = ms(at.Sub(t0))
		if srv.Reaps() {
			if err := reapWhenOrphaned(host, o.timeout); err != nil {
				r.Err = strings.TrimPrefix(r.Err+"; reaping: "+err.Error(), "; ")
			}
		}
	}
	return r
}

// taskCPU returns the CPU time pid's threads have used (the first field of each
// /proc/PID/task/TID/schedstat, in nanoseconds): 0 if it cannot be read.
func taskCPU(pid int) time.Duration {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue
		}
		var ns int64
		if _, err := fmt.Sscan(string(b), &ns); err == nil {
			total += time.Duration(ns)
		}
	}
	return total
}
