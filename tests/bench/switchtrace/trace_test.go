package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want event
	}{
		{"   handover-demo 11928/11930   909.123456: raw_syscalls:sys_enter: NR 47 (a, 236906d26c60, 40000000, 0, 0, 0)",
			event{t: 909.123456, comm: "handover-demo", pid: 11928, tid: 11930, kind: evEnter, nr: 47, args: []uint64{0xa, 0x236906d26c60, 0x40000000}}},
		{"   handover-demo 11928/11932   38.754: raw_syscalls:sys_exit: NR 288 = -11",
			event{t: 38.754, comm: "handover-demo", pid: 11928, tid: 11932, kind: evExit, nr: 288, ret: -11}},
		{"           bench 11898/11915   909.019794:   signal:signal_generate: sig=12 errno=0 code=0 comm=handover-demo pid=11907 grp=1 res=0",
			event{t: 909.019794, comm: "bench", pid: 11898, tid: 11915, kind: evGen, sig: 12, target: 11907}},
		{"   handover-demo 11907/11907   1.5: signal:signal_deliver: sig=12 errno=0 code=0 sa_handler=48ec20 sa_flags=1c000004",
			event{t: 1.5, comm: "handover-demo", pid: 11907, tid: 11907, kind: evDeliver, sig: 12}},
		{"   handover-demo 11907/11912   2.0: sched:sched_process_fork: comm=handover-demo pid=11912 child_comm=handover-demo child_pid=11916",
			event{t: 2, comm: "handover-demo", pid: 11907, tid: 11912, kind: evFork, target: 11916}},
		{"   handover-demo 11919/11919   3.0: sched:sched_process_exec: filename=/tmp/b/handover-demo pid=11919 old_pid=11919",
			event{t: 3, comm: "handover-demo", pid: 11919, tid: 11919, kind: evExec, file: "/tmp/b/handover-demo"}},
		{"   handover-demo 11916/11916   4.0: sched:sched_process_exit: comm=handover-demo pid=11916 prio=120 group_dead=true",
			event{t: 4, comm: "handover-demo", pid: 11916, tid: 11916, kind: evExitP, dead: true}},
		{"           empty 27855/27855  1743.950513: page-faults: ",
			event{t: 1743.950513, comm: "empty", pid: 27855, tid: 27855, kind: evFault}},
		{"   handover-demo 11919/11919   5.0:   hosw1:handover_demo__rtmain: (443c20)",
			event{t: 5, comm: "handover-demo", pid: 11919, tid: 11919, kind: evProbe, probe: "handover_demo__rtmain"}},
	} {
		got, ok := parseLine(c.line, "hosw1")
		if !ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseLine(%q) = %+v, %v\nwant %+v", c.line, got, ok, c.want)
		}
	}
	for _, bad := range []string{"", "garbage", "  x 1/1 2.0: hosw2:foo: (1)", "  x 1/1 2.0: sched:sched_switch: prev_comm=x"} {
		if _, ok := parseLine(bad, "hosw1"); ok {
			t.Errorf("parseLine(%q) accepted", bad)
		}
	}
}

// synthetic is a recording of one SIGUSR2 switch: the bench (pid 10) signals the old
// generation (100), which checks pidfd (a test child 101 that exits) and forks 102,
// which execs the demo, starts, accepts on fd 7 and answers.
const synthetic = `
 bench 10/10 1.000000: sched:sched_process_exec: filename=/w/bench pid=10 old_pid=10
 bench 10/11 2.000000: signal:signal_generate: sig=12 errno=0 code=0 comm=handover-demo pid=100 grp=1 res=0
 handover-demo 100/100 2.000100: signal:signal_deliver: sig=12 errno=0 code=0 sa_handler=1 sa_flags=1
 handover-demo 100/103 2.000300: hosw1:handover_demo__onSignal: (1)
 handover-demo 100/103 2.000400: hosw1:handover_demo__spawnChild: (1)
 handover-demo 100/104 2.001000: hosw1:handover_demo__startProcess: (1)
 handover-demo 100/104 2.001100: hosw1:handover_demo__checkPidfd: (1)
 handover-demo 100/104 2.001200: raw_syscalls:sys_enter: NR 56 (5100, 0, 0, 0, 0, 0)
 handover-demo 100/104 2.001300: sched:sched_process_fork: comm=handover-demo pid=104 child_comm=handover-demo child_pid=101
 handover-demo 101/101 2.001400: sched:sched_process_exit: comm=handover-demo pid=101 prio=120 group_dead=true
 handover-demo 100/104 2.002000: hosw1:handover_demo__forkExec: (1)
 handover-demo 100/104 2.002100: raw_syscalls:sys_enter: NR 56 (5111, 0, 0, 0, 0, 0)
 handover-demo 100/104 2.002200: sched:sched_process_fork: comm=handover-demo pid=104 child_comm=handover-demo child_pid=102
 handover-demo 102/102 2.002500: raw_syscalls:sys_enter: NR 59 (1, 2, 3, 0, 0, 0)
 handover-demo 102/102 2.003500: sched:sched_process_exec: filename=/w/bin/handover-demo pid=102 old_pid=102
 handover-demo 102/102 2.004000: raw_syscalls:sys_enter: NR 334 (1, 20, 0, 0, 0, 0)
 handover-demo 102/102 2.004500: page-faults: 
 handover-demo 102/102 2.004600: page-faults: 
 handover-demo 100/104 2.004700: page-faults: 
 handover-demo 99/99 2.004700: page-faults: 
 handover-demo 102/102 2.005000: hosw1:handover_demo__rtmain: (1)
 handover-demo 102/102 2.007000: hosw1:handover_demo__main: (1)
 handover-demo 102/102 2.007100: hosw1:handover_demo__New: (1)
 handover-demo 102/105 2.009000: raw_syscalls:sys_enter: NR 288 (4, 0, 0, 0, 0, 0)
 handover-demo 102/105 2.009100: raw_syscalls:sys_exit: NR 288 = -11
 handover-demo 102/105 2.009200: raw_syscalls:sys_enter: NR 1 (2, 0, 0, 0, 0, 0)
 handover-demo 102/105 2.009300: raw_syscalls:sys_exit: NR 288 = 7
 handover-demo 102/105 2.009400: raw_syscalls:sys_enter: NR 1 (7, 0, 0, 0, 0, 0)
 handover-demo 102/102 2.009500: hosw1:handover_demo__Ready: (1)
 handover-demo 100/103 2.010000: hosw1:handover_demo__handOver: (1)
 handover-demo 100/100 2.030000: sched:sched_process_exit: comm=handover-demo pid=100 prio=120 group_dead=true
`

func TestSwitchMarks(t *testing.T) {
	evs, err := readEvents(strings.NewReader(synthetic), "hosw1")
	if err != nil {
		t.Fatal(err)
	}
	tr := newTrace(evs)
	kills, cmds := tr.triggers(10)
	if len(kills) != 1 || kills[0].target != 100 || len(cmds) != 0 {
		t.Fatalf("triggers %+v %+v", kills, cmds)
	}
	m, faults := tr.switchMarks(kills[0], 3, 100, 0, 10.5)
	want := markers{"kill": 0, "signal delivered": 0.1, "onSignal": 0.3, "spawnChild": 0.4, "startProcess": 1, "checkPidfd": 1.1,
		"forkExec": 2, "clone": 2.1, "execve": 2.5, "exec": 3.5, "ld.so done": 4, "rtmain": 5, "main": 7, "New": 7.1,
		"accept loop": 9, "accepted": 9.3, "answered": 9.4, "Ready": 9.5, "handOver": 10, "probe read": 10.5, "old exit": 30}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("markers\n%v\nwant\n%v", m, want)
	}
	// The second switch had no pidfd check before its fork, but one after it.
	if !reflect.DeepEqual(faults, [2][]float64{{4.5, 4.6}, {4.7}}) {
		t.Errorf("faults %v", faults)
	}
	ps := phases(paths["lib"], []markers{m, {"kill": 0, "signal delivered": 0.2, "onSignal": 0.5, "spawnChild": 0.6, "startProcess": 1,
		"forkExec": 1.5, "checkPidfd": 3}}, [][2][]float64{faults, {}})
	var got []string
	for _, p := range ps {
		got = append(got, p.From+">"+p.To)
	}
	wantOrder := []string{"kill>signal delivered", "signal delivered>onSignal", "onSignal>spawnChild", "spawnChild>startProcess",
		"startProcess>checkPidfd", "startProcess>forkExec", "checkPidfd>forkExec", "forkExec>clone", "clone>execve", "execve>exec",
		"exec>ld.so done", "ld.so done>rtmain", "rtmain>main", "main>New", "New>accept loop", "accept loop>accepted",
		"accepted>answered", "answered>probe read"}
	if !reflect.DeepEqual(got, wantOrder) {
		t.Errorf("phases\n%v\nwant\n%v", got, wantOrder)
	}
	if ps[0].MS[0] != 0.1 || ps[0].MS[1] != 0.2 || len(ps[5].MS) != 1 || ps[5].MS[0] != 0.5 {
		t.Errorf("phase values %v %v", ps[0].MS, ps[5].MS)
	}
	// ld.so done (4) → rtmain (5): the new process's two faults and the old one's;
	// not those of another process (99).
	for _, p := range ps {
		if p.From == "ld.so done" && !reflect.DeepEqual(p.Faults, [2][]float64{{2}, {1}}) {
			t.Errorf("faults of ld.so done → rtmain: %v", p.Faults)
		}
	}
}

func TestStatsOf(t *testing.T) {
	if s := statsOf([]float64{5, 1, 4, 2, 3}); s != (summary{N: 5, Median: 3, P10: 1, P90: 5}) {
		t.Errorf("statsOf = %+v", s)
	}
	if s := statsOf(nil); s != (summary{}) {
		t.Errorf("statsOf(nil) = %+v", s)
	}
}

// TestCommandTriggers: a `handover` the bench runs is a trigger; a `handover run`
// master (it starts a program) is not.
func TestCommandTriggers(t *testing.T) {
	const rec = `
 bench 10/10 1.000000: sched:sched_process_exec: filename=/w/bench pid=10 old_pid=10
 bench 10/12 2.000000: sched:sched_process_fork: comm=bench pid=12 child_comm=bench child_pid=300
 handover 300/300 2.001000: sched:sched_process_exec: filename=/w/bin/handover pid=300 old_pid=300
 handover 300/300 2.100000: sched:sched_process_fork: comm=handover pid=300 child_comm=handover child_pid=301
 handover 301/301 2.101000: sched:sched_process_exec: filename=/w/bin/handover pid=301 old_pid=301
 bench 10/12 3.000000: sched:sched_process_fork: comm=bench pid=12 child_comm=bench child_pid=200
 handover 200/200 3.001000: sched:sched_process_exec: filename=/w/bin/handover pid=200 old_pid=200
 handover 200/200 3.002000: raw_syscalls:sys_enter: NR 334 (1, 20, 0, 0, 0, 0)
 handover 200/200 3.003000: hosw1:handover__rtmain: (1)
 handover 200/200 3.005000: hosw1:handover__main: (1)
 handover-demo 100/103 3.006000: hosw1:handover_demo__handleControl: (1)
 handover 200/200 3.050000: sched:sched_process_exit: comm=handover pid=200 prio=120 group_dead=true
 bench 10/12 4.000000: sched:sched_process_fork: comm=bench pid=12 child_comm=bench child_pid=400
 tableflip 400/400 4.001000: sched:sched_process_exec: filename=/w/bin/tableflip pid=400 old_pid=400
`
	evs, err := readEvents(strings.NewReader(rec), "hosw1")
	if err != nil {
		t.Fatal(err)
	}
	tr := newTrace(evs)
	sigs, cmds := tr.triggers(10)
	if len(sigs) != 0 || len(cmds) != 1 || cmds[0].cli != 200 || cmds[0].t != 3 {
		t.Fatalf("signals %+v, commands %+v", sigs, cmds)
	}
	m, _ := tr.switchMarks(cmds[0], 4, 100, 0, -1)
	want := markers{"kill": 0, "cli exec": 1, "cli ld.so done": 2, "cli rtmain": 3, "cli main": 5, "handleControl": 6, "cli exit": 50}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("markers %v\nwant %v", m, want)
	}
}

// TestCommitMarks: a commit's switch. The bench runs `handover prepare` (200), the
// old generation (100) forks the prepared one (102) before the trigger; then the
// bench runs `handover commit` (300): the markers run from the old process's commit
// to the prepared one's first answer, and the next switch's prepare, which forks
// 103 before the next trigger, is not taken for this one's new process.
func TestCommitMarks(t *testing.T) {
	const rec = `
 bench 10/10 1.000000: sched:sched_process_exec: filename=/w/bench pid=10 old_pid=10
 bench 10/12 2.000000: sched:sched_process_fork: comm=bench pid=12 child_comm=bench child_pid=200
 handover 200/200 2.001000: sched:sched_process_exec: filename=/w/bin/handover pid=200 old_pid=200
 handover-demo 100/104 2.002000: sched:sched_process_fork: comm=handover-demo pid=104 child_comm=handover-demo child_pid=102
 handover-demo 102/102 2.003000: sched:sched_process_exec: filename=/w/bin/handover-demo pid=102 old_pid=102
 handover-demo 102/105 2.100000: raw_syscalls:sys_enter: NR 288 (9, 0, 0, 0, 0, 0)
 handover 200/200 2.200000: sched:sched_process_exit: comm=handover pid=200 prio=120 group_dead=true
 bench 10/12 3.000000: sched:sched_process_fork: comm=bench pid=12 child_comm=bench child_pid=300
 handover 300/300 3.001000: sched:sched_process_exec: filename=/w/static/handover pid=300 old_pid=300
 handover-demo 100/103 3.004000: hosw1:handover_demo__handleControl: (1)
 handover-demo 100/103 3.005000: hosw1:handover_demo__answerControl: (1)
 handover-demo 100/101 3.006000: hosw1:handover_demo__commit: (1)
 handover-demo 100/101 3.007000: hosw1:handover_demo__goAhead: (1)
 handover-demo 100/106 3.008000: hosw1:handover_demo__handOver: (1)
 handover-demo 100/106 3.009000: hosw1:handover_demo__quiesce: (1)
 handover-demo 102/102 3.010000: hosw1:handover_demo__release: (1)
 handover-demo 102/105 3.011000: raw_syscalls:sys_enter: NR 288 (4, 0, 0, 0, 0, 0)
 handover-demo 102/105 3.011200: raw_syscalls:sys_exit: NR 288 = 7
 handover-demo 102/107 3.012000: raw_syscalls:sys_enter: NR 1 (7, 0, 0, 0, 0, 0)
 handover-demo 100/106 3.013000: hosw1:handover_demo__handedOver: (1)
 handover 300/300 3.020000: sched:sched_process_exit: comm=handover pid=300 prio=120 group_dead=true
 bench 10/12 3.500000: sched:sched_process_fork: comm=bench pid=12 child_comm=bench child_pid=201
 handover 201/201 3.501000: sched:sched_process_exec: filename=/w/bin/handover pid=201 old_pid=201
 handover-demo 102/104 3.502000: sched:sched_process_fork: comm=handover-demo pid=104 child_comm=handover-demo child_pid=103
 handover-demo 103/103 3.503000: sched:sched_process_exec: filename=/w/bin/handover-demo pid=103 old_pid=103
 handover-demo 103/105 3.600000: raw_syscalls:sys_enter: NR 288 (4, 0, 0, 0, 0, 0)
`
	evs, err := readEvents(strings.NewReader(rec), "hosw1")
	if err != nil {
		t.Fatal(err)
	}
	tr := newTrace(evs)
	sigs, cmds := tr.triggers(10)
	if len(sigs) != 0 || len(cmds) != 3 || cmds[1].cli != 300 {
		t.Fatalf("signals %+v, commands %+v", sigs, cmds)
	}
	trig := cmds[1]
	trig.commit = true
	m, _ := tr.switchMarks(trig, 4, 100, 102, 12.5)
	want := markers{"kill": 0, "cli exec": 1, "handleControl": 4, "answerControl": 5, "commit": 6, "goAhead": 7, "handOver": 8,
		"quiesce": 9, "release": 10, "accept loop": 11, "accepted": 11.2, "answered": 12, "probe read": 12.5, "handedOver": 13,
		"cli exit": 20}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("markers\n%v\nwant\n%v", m, want)
	}
}
