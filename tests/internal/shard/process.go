package shard

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// killGrace is how long past the -test.timeout a test process may run (its own
// timeout panics, prints its goroutines and exits well before) until it is killed.
const killGrace = 30 * time.Second

// test runs one test in a process of its own, with left of the -test.timeout (0:
// none), and returns how it ended.
func (co *coordinator) test(name string, serial bool, left time.Duration) result {
	r := result{name: name, serial: serial}
	f, err := os.CreateTemp("", "shard-*.out")
	if err != nil {
		r.err = err
		return r
	}
	defer os.Remove(f.Name())
	defer f.Close()
	args := append([]string{"-test.run=^" + name + "$"}, co.flags...)
	ctx := context.Background()
	if left > 0 {
		args = append(args, "-test.timeout="+left.String())
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, left+killGrace)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, co.self, args...)
	cmd.Env = append(append(os.Environ(), co.env...), workerEnv+"=1")
	// A file, not a pipe: a process the test leaves behind holding its output
	// cannot keep the coordinator waiting.
	cmd.Stdout, cmd.Stderr = f, f
	start := time.Now()
	co.mu.Lock()
	err = cmd.Start()
	if err == nil {
		co.running[cmd.Process.Pid] = name
	}
	co.mu.Unlock()
	if err != nil {
		r.err = err
		return r
	}
	r.err = cmd.Wait()
	r.took = time.Since(start)
	co.mu.Lock()
	delete(co.running, cmd.Process.Pid)
	r.leaks, r.alsoEnded = co.reapOrphans()
	co.mu.Unlock()
	r.output, err = os.ReadFile(f.Name())
	if err != nil && r.err == nil {
		r.err = err
	}
	return r
}

// reapOrphans kills and reaps the coordinator's children that are not test
// processes: processes a test left running (or unreaped) when its process ended,
// reparented here. It describes each; alsoEnded names the tests whose processes
// ended too but were not reaped yet (they may have left them instead). Called with
// co.mu held, right after a test process was reaped.
func (co *coordinator) reapOrphans() (leaks, alsoEnded []string) {
	for round := 0; round < 20; round++ {
		var found []int
		for _, p := range proc.Children(os.Getpid()) {
			if _, ok := co.running[p]; !ok {
				found = append(found, p)
			}
		}
		if len(found) == 0 {
			break
		}
		// Killing a process reparents its own children here: look again.
		for _, p := range found {
			what := fmt.Sprintf("pid %d (state %s): %q", p, proc.State(p), proc.Cmdline(p))
			if _, err := proc.KillAndReap(p, 10*time.Second); err != nil {
				what += ": " + err.Error()
			}
			leaks = append(leaks, what)
		}
	}
	if len(leaks) > 0 {
		for p, name := range co.running {
			if st := proc.State(p); st == "Z" || st == "" {
				alsoEnded = append(alsoEnded, name)
			}
		}
		slices.Sort(alsoEnded)
	}
	return leaks, alsoEnded
}

// report prints a test's output and whatever the coordinator has to add, and
// says whether the test passed.
func (co *coordinator) report(r result) bool {
	out := co.trimResult(r.output)
	co.out.Write(out)
	ok := r.err == nil
	if !ok && !bytes.Contains(out, []byte("--- FAIL")) {
		fmt.Fprintf(co.out, "shard: %s: its test process ended after %v: %v\n", r.name, r.took.Round(time.Millisecond), r.err)
	}
	if len(r.leaks) > 0 {
		who := r.name
		if len(r.alsoEnded) > 0 {
			who += " (or " + strings.Join(r.alsoEnded, ", ") + ", which ended at the same moment)"
		}
		fmt.Fprintf(co.out, "shard: %s left processes behind; killed and reaped them:\n  %s\n", who, strings.Join(r.leaks, "\n  "))
		ok = false
	}
	return ok
}

// trimResult drops the PASS or FAIL line that ends a test process's output: the
// coordinator prints one for the whole run.
func (co *coordinator) trimResult(out []byte) []byte {
	body := bytes.TrimSuffix(out, []byte("\n"))
	i := bytes.LastIndexByte(body, '\n') + 1
	switch string(bytes.TrimPrefix(body[i:], []byte("\x16"))) {
	case "PASS", "FAIL":
		return out[:i]
	}
	return out
}
