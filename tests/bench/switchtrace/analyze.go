package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sort"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/stats"
)

// trace indexes the events of a recording.
type trace struct {
	byPid map[int][]event // each process's events (tgid), in time order
	execs map[int][]event // each process's sched_process_exec events
	forks []event         // every sched_process_fork (threads too)
	gens  []event         // signal_generate events
}

func newTrace(evs []event) *trace {
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].t < evs[j].t })
	tr := &trace{byPid: map[int][]event{}, execs: map[int][]event{}}
	for _, e := range evs {
		tr.byPid[e.pid] = append(tr.byPid[e.pid], e)
		switch e.kind {
		case evExec:
			tr.execs[e.pid] = append(tr.execs[e.pid], e)
		case evFork:
			tr.forks = append(tr.forks, e)
		case evGen:
			tr.gens = append(tr.gens, e)
		}
	}
	return tr
}

// first returns the first event of process pid in [from, to) that matches, or nil.
func (tr *trace) first(pid int, from, to float64, match func(*event) bool) *event {
	evs := tr.byPid[pid]
	i := sort.Search(len(evs), func(i int) bool { return evs[i].t >= from })
	for ; i < len(evs) && evs[i].t < to; i++ {
		if match(&evs[i]) {
			return &evs[i]
		}
	}
	return nil
}

// last returns the last event of process pid in [from, to] that matches, or nil.
func (tr *trace) last(pid int, from, to float64, match func(*event) bool) *event {
	evs := tr.byPid[pid]
	i := sort.Search(len(evs), func(i int) bool { return evs[i].t > to }) - 1
	for ; i >= 0 && evs[i].t >= from; i-- {
		if match(&evs[i]) {
			return &evs[i]
		}
	}
	return nil
}

// trigger is what started a switch: a signal the bench sent (SIGHUP, SIGUSR2), or
// a `handover` command it ran (e.g. handover reload -control PATH).
type trigger struct {
	t      float64
	sig    int  // a signal: which
	target int  // a signal: the process signalled
	cli    int  // a command: its process
	commit bool // a command: a commit, whose new generation was prepared before it
}

// triggers returns the bench's (process bench) signals and commands, in time
// order. A command is a process the bench forked that ran a binary named handover
// and started no program itself (a `handover run` master does).
func (tr *trace) triggers(bench int) (signals, commands []trigger) {
	for _, e := range tr.gens {
		if e.pid == bench && (e.sig == 1 || e.sig == 12) {
			signals = append(signals, trigger{t: e.t, sig: e.sig, target: e.target})
		}
	}
	for _, f := range tr.forks {
		if f.pid != bench {
			continue
		}
		xs := tr.execs[f.target]
		if len(xs) == 0 || filepath.Base(xs[0].file) != "handover" {
			continue
		}
		if c, _ := tr.childOf(f.target, f.t, math.Inf(1)); c == 0 {
			commands = append(commands, trigger{t: f.t, cli: f.target})
		}
	}
	return signals, commands
}

// markers are the times of named points of one switch, in ms since the trigger.
type markers map[string]float64

// switchMarks finds the markers of the switch triggered by kill; until bounds the
// search (the next trigger). oldPID is the generation being replaced (the master's
// child under handover run), newPID the one that took over (the prepared one of a
// commit, which the old process forked before the trigger); switchMS is the
// bench's measure (-1 if none). faults are the page faults of the new process ([0])
// and of the signalled one ([1]), in ms since the trigger.
func (tr *trace) switchMarks(trig trigger, until float64, oldPID, newPID int, switchMS float64) (m markers, faults [2][]float64) {
	m = markers{"kill": 0}
	t0 := trig.t
	at := func(name string, e *event) {
		if e != nil {
			m[name] = round3((e.t - t0) * 1000)
		}
	}
	probes := func(pid int, prefix string, names ...string) {
		for _, n := range names {
			at(prefix+n, tr.first(pid, t0, until, func(e *event) bool { return e.kind == evProbe && shortOf(e.probe) == n }))
		}
	}
	target := trig.target
	if trig.cli != 0 {
		target = oldPID
		for _, x := range tr.execs[trig.cli] {
			at("cli exec", &x)
			at("cli ld.so done", tr.first(trig.cli, x.t, until, func(e *event) bool {
				return e.tid == trig.cli && e.kind == evEnter && e.nr == sysRseq
			}))
			break
		}
		probes(trig.cli, "cli ", "rtmain", "main")
		at("cli exit", tr.first(trig.cli, t0, until+60, func(e *event) bool { return e.kind == evExitP && e.dead }))
	} else {
		at("signal delivered", tr.first(target, t0, until, func(e *event) bool { return e.kind == evDeliver && e.sig == trig.sig }))
	}
	probes(target, "", "handleControl", "answerControl", "onSignal", "beginUpgrade", "startAttempt", "spawnChild", "startProcess",
		"checkPidfd", "forkExec", "mOnSignal", "mBeginUpgrade", "mStartCandidate", "mOpenBuild", "mDirect", "mSpawn", "doUpgrade",
		"onAttemptReady", "commit", "goAhead", "handOver", "quiesce", "handedOver", "startDrains", "mOnNotify", "mTakeOver", "mStopChild")
	var child int
	var fork *event
	if trig.commit {
		// Nothing is forked: the prepared generation serves. (The next switch's
		// prepare forks the next one before until.)
		child = newPID
		tr.servingMarks(m, child, t0, until, t0)
		at("release", tr.first(child, t0, until, func(e *event) bool { return e.kind == evProbe && shortOf(e.probe) == "release" }))
	} else {
		child, fork = tr.childOf(target, t0, until)
	}
	if fork != nil {
		at("clone", tr.last(target, t0, fork.t, func(e *event) bool {
			return e.tid == fork.tid && e.kind == evEnter && (e.nr == sysClone || e.nr == sysClone3)
		}))
		tr.childMarks(m, child, fork.t, until, t0)
	}
	if switchMS >= 0 {
		m["probe read"] = switchMS
	}
	if e := tr.first(oldPID, t0, until+60, func(e *event) bool { return e.kind == evExitP && e.dead }); e != nil {
		at("old exit", e)
	}
	for i, pid := range []int{child, target} {
		for _, t := range tr.faults(pid, t0, until) {
			faults[i] = append(faults[i], round3((t-t0)*1000))
		}
	}
	return m, faults
}

// faults returns the times of pid's page faults in [from, to).
func (tr *trace) faults(pid int, from, to float64) []float64 {
	var out []float64
	evs := tr.byPid[pid]
	for i := sort.Search(len(evs), func(i int) bool { return evs[i].t >= from }); i < len(evs) && evs[i].t < to; i++ {
		if evs[i].kind == evFault {
			out = append(out, evs[i].t)
		}
	}
	return out
}

// childOf returns the process that parent forked after from and that then ran a
// program (an exec), and the fork event.
func (tr *trace) childOf(parent int, from, until float64) (int, *event) {
	for i := range tr.forks {
		f := &tr.forks[i]
		if f.pid != parent || f.t < from || f.t >= until {
			continue
		}
		for _, x := range tr.execs[f.target] {
			if x.t >= f.t && x.t < until {
				return f.target, f
			}
		}
	}
	return 0, nil
}

// childMarks adds the new process's markers: each exec (a second one is the
// program the `handover run` shim runs), the runtime's and main's start, the
// library's steps, and its first answer.
func (tr *trace) childMarks(m markers, child int, from, until, t0 float64) {
	at := func(name string, e *event) {
		if e != nil {
			m[name] = round3((e.t - t0) * 1000)
		}
	}
	var execs []event
	for _, x := range tr.execs[child] {
		if x.t >= from && x.t < until {
			execs = append(execs, x)
		}
	}
	start := from
	for i, x := range execs {
		suffix := ""
		if i > 0 {
			suffix = fmt.Sprintf("#%d", i+1)
		}
		end := until
		if i+1 < len(execs) {
			end = execs[i+1].t
		}
		at("execve"+suffix, tr.last(child, start, x.t, func(e *event) bool {
			return e.kind == evEnter && (e.nr == sysExecve || e.nr == sysExecveat)
		}))
		at("exec"+suffix, &execs[i])
		at("ld.so done"+suffix, tr.first(child, x.t, end, func(e *event) bool {
			return e.tid == child && e.kind == evEnter && e.nr == sysRseq
		}))
		for _, n := range []string{"rtmain", "main"} {
			at(n+suffix, tr.first(child, x.t, end, func(e *event) bool { return e.kind == evProbe && shortOf(e.probe) == n }))
		}
		start = x.t
	}
	if len(execs) == 0 {
		return
	}
	tr.servingMarks(m, child, execs[len(execs)-1].t, until, t0)
}

// servingMarks adds the markers of the new process from its program's start (or,
// for a prepared one, the commit), from: the library's steps and its first answer.
func (tr *trace) servingMarks(m markers, child int, from, until, t0 float64) {
	at := func(name string, e *event) {
		if e != nil {
			m[name] = round3((e.t - t0) * 1000)
		}
	}
	for _, n := range []string{"New", "inherit", "readInit", "setUp", "startCarriers", "openControl", "status",
		"Listen", "serve", "Ready", "peerReady"} {
		at(n, tr.first(child, from, until, func(e *event) bool { return e.kind == evProbe && shortOf(e.probe) == n }))
	}
	loop := tr.first(child, from, until, func(e *event) bool {
		return e.kind == evEnter && (e.nr == sysAccept4 || e.nr == sysAccept)
	})
	at("accept loop", loop)
	if loop == nil {
		return
	}
	acc := tr.first(child, loop.t, until, func(e *event) bool {
		return e.kind == evExit && (e.nr == sysAccept4 || e.nr == sysAccept) && e.ret >= 0
	})
	at("accepted", acc)
	if acc == nil {
		return
	}
	fds := map[uint64]bool{}
	at("answered", tr.first(child, acc.t, until, func(e *event) bool {
		if e.kind == evExit && (e.nr == sysAccept4 || e.nr == sysAccept) && e.ret >= 0 {
			fds[uint64(e.ret)] = true
		}
		return e.kind == evEnter && (e.nr == sysWrite || e.nr == sysWritev || e.nr == sysSendto) && len(e.args) > 0 && fds[e.args[0]]
	}))
}

// countIn counts the values of sorted vs in [from, to).
func countIn(vs []float64, from, to float64) int {
	return sort.SearchFloat64s(vs, to) - sort.SearchFloat64s(vs, from)
}

// outOfOrder reports whether a marker of later has a time before v.
func outOfOrder(m markers, v float64, later []string) bool {
	for _, n := range later {
		if w, ok := m[n]; ok && w < v {
			return true
		}
	}
	return false
}

func shortOf(probe string) string {
	_, s, _ := splitEvent(probe)
	return s
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// phase is the time between two markers of a switch, and the page faults in it of
// the new process ([0]) and of the old one ([1]).
type phase struct {
	From, To string
	MS       []float64
	Faults   [2][]float64
}

// phases turns each switch's markers into the times between consecutive markers of
// path that are present, pooled over the switches; ordered along the path. A
// marker later than one after it on the path is not on this switch's path (e.g. a
// peer that checks pidfd support only after it forked) and is left out.
//
// faults, if not nil, holds each switch's page faults (sorted, ms since the
// trigger) of the new process and of the old one, counted per phase.
func phases(path []string, switches []markers, faults [][2][]float64) []*phase {
	byKey := map[[2]string]*phase{}
	var out []*phase
	for si, m := range switches {
		prev := ""
		for i, name := range path {
			v, ok := m[name]
			if !ok || outOfOrder(m, v, path[i+1:]) {
				continue
			}
			if prev != "" {
				k := [2]string{prev, name}
				p := byKey[k]
				if p == nil {
					p = &phase{From: prev, To: name}
					byKey[k] = p
					out = append(out, p)
				}
				p.MS = append(p.MS, round3(v-m[prev]))
				if faults != nil {
					for k := range p.Faults {
						p.Faults[k] = append(p.Faults[k], float64(countIn(faults[si][k], m[prev], v)))
					}
				}
			}
			prev = name
		}
	}
	pos := map[string]int{}
	for i, n := range path {
		pos[n] = i
	}
	slices.SortStableFunc(out, func(a, b *phase) int {
		if c := pos[a.From] - pos[b.From]; c != 0 {
			return c
		}
		return pos[a.To] - pos[b.To]
	})
	return out
}

// summary is ms values summed up: n, median, p10, p90 (nearest rank).
type summary struct {
	N                int
	Median, P10, P90 float64
}

func statsOf(vs []float64) summary {
	s := summary{N: len(vs)}
	if len(vs) == 0 {
		return s
	}
	vs = stats.Sorted(vs)
	s.Median, s.P10, s.P90 = stats.Quantile(vs, 0.5), stats.Quantile(vs, 0.1), stats.Quantile(vs, 0.9)
	return s
}
