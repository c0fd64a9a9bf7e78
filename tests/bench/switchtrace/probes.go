package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Function-entry uprobes (perf's probe events, through tracefs) mark where a
// process is, without changing the binaries: a probe fires when the function is
// called, in whichever process runs that binary. Only entries: a return probe would
// break Go's moving stacks.

const (
	lib    = "github.com/seed-a7250cfa/handover/graceful."
	fdsPkg = "github.com/seed-a7250cfa/handover/internal/fds."
	ctlPkg = "github.com/seed-a7250cfa/handover/internal/control."
	master = "github.com/seed-a7250cfa/handover/internal/master."
)

// probeSpec is one function to probe: its symbol and the short name of its marker.
type probeSpec struct {
	symbol string
	short  string
}

// everyBinary are probed in every server binary.
var everyBinary = []probeSpec{
	{"runtime.main", "rtmain"},
	{"main.main", "main"},
	{"os.checkPidfd", "checkPidfd"},
	{"syscall.forkExec", "forkExec"},
	{"syscall.Exec", "Exec"},
}

// binaryProbes are the functions probed in each binary, besides everyBinary.
var binaryProbes = map[string][]probeSpec{
	"handover-demo": {
		// The new generation, in order.
		{lib + "New", "New"},
		{fdsPkg + "inheritProcess", "inherit"},
		{lib + "(*Upgrader).readInit", "readInit"},
		{lib + "(*Upgrader).setUp", "setUp"},
		{lib + "(*Upgrader).startCarriers", "startCarriers"},
		{lib + "(*Upgrader).openControl", "openControl"},
		{lib + "(*Upgrader).Status", "status"},
		{lib + "(*Upgrader).Listen", "Listen"},
		{lib + "(*Server).serve", "serve"},
		{lib + "(*Upgrader).Ready", "Ready"},
		{lib + "(*Upgrader).release", "release"}, // a prepared one, committed
		// The old generation, in order.
		{ctlPkg + "Serve", "handleControl"},
		{lib + "controlServer.Upgrade", "answerControl"},
		{lib + "(*machine).onSignal", "onSignal"},
		{lib + "(*machine).beginUpgrade", "beginUpgrade"},
		{lib + "(*machine).startAttempt", "startAttempt"},
		{lib + "spawnChild", "spawnChild"},
		{lib + "startProcess", "startProcess"},
		{lib + "(*machine).onAttemptReady", "onAttemptReady"},
		{lib + "(*machine).commit", "commit"},
		{lib + "(*machine).goAhead", "goAhead"},
		{lib + "handOver", "handOver"},
		{lib + "(*Drainer).quiesce", "quiesce"},
		{lib + "(*machine).handedOver", "handedOver"},
		{lib + "(*machine).startDrains", "startDrains"},
	},
	"handover": {
		{master + "Shim", "Shim"},
		{master + "(*machine).onSignal", "mOnSignal"},
		{master + "(*machine).beginUpgrade", "mBeginUpgrade"},
		{master + "(*machine).startCandidate", "mStartCandidate"},
		{master + "openBuild", "mOpenBuild"},
		{master + "carriesMarks", "mDirect"},
		{master + "(*host).spawn", "mSpawn"},
		{master + "(*machine).onNotify", "mOnNotify"},
		{master + "(*machine).takeOver", "mTakeOver"},
		{master + "(*machine).stopChild", "mStopChild"},
	},
	"tableflip": {
		{"github.com/cloudflare/tableflip.(*Upgrader).doUpgrade", "doUpgrade"},
		{"github.com/cloudflare/tableflip.(*Upgrader).Ready", "peerReady"},
	},
	"gracehttp": {},
	"endless":   {},
}

func init() {
	// The peers' server with handover as its restarter: the library's new
	// generation, as in the demo.
	binaryProbes["handover-lean"] = binaryProbes["handover-demo"]
}

// eventName is the probe event's name for the binary and marker: [a-z0-9_] only.
func eventName(bin, short string) string {
	return sanitize(bin) + "__" + short
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9_]`)

func sanitize(s string) string { return nonWord.ReplaceAllString(s, "_") }

// splitEvent splits "bin__short" back.
func splitEvent(name string) (bin, short string, ok bool) {
	return strings.Cut(name, "__")
}

// uprobes is a set of probe events registered in tracefs under one group.
type uprobes struct {
	tracefs string
	group   string
	names   []string // registered, for removal
	missing []string // symbols not found (inlined or absent)
}

// tracefsDir returns where tracefs is mounted.
func tracefsDir() (string, error) {
	for _, d := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(filepath.Join(d, "uprobe_events")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no tracefs with uprobe_events (mount -t tracefs nodev /sys/kernel/tracing; needs CONFIG_UPROBE_EVENTS)")
}

// switchProbes are the functions probed in a server binary of the switch trace.
func switchProbes(bin string) []probeSpec {
	return append(append([]probeSpec(nil), everyBinary...), binaryProbes[bin]...)
}

// addProbes registers, for every binary in bins (a key for the events' names →
// path), the probes specs gives for its file name.
func addProbes(group string, bins map[string]string, specs func(bin string) []probeSpec) (*uprobes, error) {
	dir, err := tracefsDir()
	if err != nil {
		return nil, err
	}
	u := &uprobes{tracefs: dir, group: group}
	for name, path := range bins {
		specs := specs(filepath.Base(path))
		offs, err := symbolOffsets(path, specs)
		if err != nil {
			u.remove()
			return nil, err
		}
		for _, s := range specs {
			off, ok := offs[s.symbol]
			if !ok {
				u.missing = append(u.missing, name+": "+s.symbol)
				continue
			}
			ev := eventName(name, s.short)
			def := fmt.Sprintf("p:%s/%s %s:0x%x\n", group, ev, path, off)
			if err := appendFile(filepath.Join(dir, "uprobe_events"), def); err != nil {
				u.remove()
				return nil, fmt.Errorf("adding the uprobe %q: %w", strings.TrimSpace(def), err)
			}
			u.names = append(u.names, ev)
		}
	}
	return u, nil
}

// events are the perf event names of the probes (group:name).
func (u *uprobes) events() []string {
	var out []string
	for _, n := range u.names {
		out = append(out, u.group+":"+n)
	}
	return out
}

// remove deletes every probe this set registered.
func (u *uprobes) remove() error {
	var errs []error
	for _, n := range u.names {
		if err := appendFile(filepath.Join(u.tracefs, "uprobe_events"), fmt.Sprintf("-:%s/%s\n", u.group, n)); err != nil {
			errs = append(errs, err)
		}
	}
	u.names = nil
	return errors.Join(errs...)
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(s)
	cerr := f.Close()
	return errors.Join(werr, cerr)
}

// symbolOffsets returns the file offsets of the symbols of specs found in the ELF
// binary at path (uprobes take file offsets).
func symbolOffsets(path string, specs []probeSpec) (map[string]uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	want := map[string]bool{}
	for _, s := range specs {
		want[s.symbol] = true
	}
	out := map[string]uint64{}
	for _, s := range syms {
		if !want[s.Name] || elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && s.Value >= p.Vaddr && s.Value < p.Vaddr+p.Memsz {
				out[s.Name] = s.Value - p.Vaddr + p.Off
			}
		}
	}
	return out, nil
}
