// Package shard runs the top-level tests of a test binary at the same time, each in
// a process of its own, for packages of end-to-end tests that mostly wait (for
// processes to start, drain, time out) rather than compute.
//
// A TestMain hands its work to Main. For a run of several tests (`go test ./tests/`,
// or a -run pattern without '/' that matches several), the test binary becomes a
// coordinator: it lists its tests (-test.list), runs each one as the same binary with
// -test.run=^Name$, up to Jobs processes at a time, and prints each test's output
// whole when the test ends (so `go test -v` and `go test -json` read as usual, in the
// order the tests end). Each test still has a process to itself: its children and
// their reaping, its child-subreaper status, its descriptors, environment, working
// directory, rlimits and signal handlers are its own, as in a serial run.
//
// Tests for which Config.Serial reports true (tests that share something global,
// such as the cgroups of a systemd they boot) never overlap one another: they run
// one at a time, in list order, started before any other waiting test so that
// their lane, the longest one, never waits.
//
// The coordinator is a child subreaper: a process a test leaves running when its
// process ends (a server it did not stop and reap) is reparented to it. After each
// test it kills and reaps such processes and fails the run, naming the test.
//
// Everything else runs the tests in this process, as a TestMain without shard would
// (Config.Run): a single test (-run TestX), a -run pattern with '/', -test.list,
// benchmarks, profiles, -shuffle, and HANDOVER_TEST_JOBS=1.
//
// Flags passed through to every test process: -test.v (also -json's test2json),
// -test.count, -test.short, -test.failfast, -test.paniconexit0, -test.parallel,
// -test.cpu, -test.skip, -test.fullpath, -test.gocoverdir and the package's own
// flags. -test.timeout bounds the whole run, as it does a serial one: each test
// process gets what is left of it, so a test still running at the deadline panics
// with its goroutines, as a serial run's would. A run of the coordinator is never
// cached by go test (the tests' inputs are read by other processes).
package shard

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// JobsEnv names the variable that sets how many test processes run at a time
// (default Config.Jobs). 1 runs the tests in this process, one after another.
const JobsEnv = "HANDOVER_TEST_JOBS"

// workerEnv marks a test process started by a coordinator (it must not coordinate
// in turn). It is removed from the environment before the tests run.
const workerEnv = "HANDOVER_TEST_SHARD_WORKER"

// Config says how Main runs a test binary's tests.
type Config struct {
	// Run runs the tests in this process: what the TestMain did before shard
	// (set up, m.Run, clean up). It returns the exit code.
	Run func() int
	// Serial reports whether a top-level test must never run at the same time as
	// another one for which it reports true. Nil: none.
	Serial func(name string) bool
	// Jobs is how many test processes run at a time when JobsEnv is unset. 0
	// means twice GOMAXPROCS: the tests this is for mostly wait.
	Jobs int
	// Setup, if set, runs once in the coordinator before the first test
	// process starts. env is added to every test process's environment; done,
	// if not nil, runs after the last one ended.
	Setup func() (env []string, done func(), err error)
}

// Main runs the tests as Config says and returns the exit code for os.Exit.
func Main(c Config) int {
	if os.Getenv(workerEnv) != "" {
		os.Unsetenv(workerEnv)
		return c.Run()
	}
	co, why := plan(c)
	if co == nil {
		if why != "" && testVerbose() {
			fmt.Printf("shard: running the tests in one process: %s\n", why)
		}
		return c.Run()
	}
	return co.run()
}

func testVerbose() bool {
	f := flag.Lookup("test.v")
	return f != nil && f.Value.String() != "false"
}

// passed are the testing flags given on to each test process as they are; handled
// are those the coordinator interprets. Any other testing flag that is set makes
// the run an in-process one.
var (
	passed = []string{"test.v", "test.count", "test.short", "test.failfast", "test.paniconexit0",
		"test.parallel", "test.cpu", "test.skip", "test.fullpath", "test.gocoverdir"}
	handled = []string{"test.run", "test.timeout", "test.testlogfile"}
)

// coordinator runs the tests as child processes.
type coordinator struct {
	self     string
	out      io.Writer
	flags    []string // given to every test process
	env      []string // added to every test process's environment
	setup    func() (env []string, done func(), err error)
	parallel []string // tests that may overlap, in list order
	serial   []string // tests that run one at a time, in list order
	jobs     int
	deadline time.Time // zero: no -test.timeout
	failfast bool
	prefix   string // "\x16" before PASS/FAIL under -json (test2json's framing)

	mu      sync.Mutex     // guards running and serializes output
	running map[int]string // test processes: pid -> test
}

// plan decides whether to coordinate, and how; a nil coordinator comes with why
// not (empty when there is nothing to say: a single test, a worker).
func plan(c Config) (*coordinator, string) {
	if !flag.Parsed() {
		flag.Parse()
	}
	jobs := c.Jobs
	if jobs <= 0 {
		jobs = 2 * runtime.GOMAXPROCS(0)
	}
	if v := os.Getenv(JobsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Sprintf("%s=%q is not a positive number", JobsEnv, v)
		}
		jobs = n
	}
	if jobs == 1 {
		return nil, JobsEnv + "=1"
	}
	co := &coordinator{out: os.Stdout, jobs: jobs, setup: c.Setup, running: map[int]string{}}
	if why := co.takeFlags(); why != "" {
		return nil, why
	}
	run := flag.Lookup("test.run").Value.String()
	if strings.Contains(run, "/") {
		return nil, "the -run pattern names subtests"
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Sprintf("cannot find the test binary: %v", err)
	}
	co.self = self
	names, err := co.list(run)
	if err != nil {
		return nil, err.Error()
	}
	if skip := flag.Lookup("test.skip").Value.String(); skip != "" && !strings.Contains(skip, "/") {
		re, err := regexp.Compile(skip)
		if err != nil {
			return nil, fmt.Sprintf("-skip %q: %v", skip, err)
		}
		names = slices.DeleteFunc(names, re.MatchString)
	}
	if len(names) <= 1 {
		return nil, ""
	}
	for _, n := range names {
		if c.Serial != nil && c.Serial(n) {
			co.serial = append(co.serial, n)
		} else {
			co.parallel = append(co.parallel, n)
		}
	}
	return co, ""
}

// takeFlags reads the flags set on the command line: those given on to the test
// processes, and what the coordinator makes of -v, -failfast and -timeout. A
// reason not to coordinate comes back when a flag it does not know is set.
func (co *coordinator) takeFlags() (why string) {
	flag.Visit(func(f *flag.Flag) {
		name, val := f.Name, f.Value.String()
		switch {
		case why != "":
		case !strings.HasPrefix(name, "test."), slices.Contains(passed, name):
			co.flags = append(co.flags, "-"+name+"="+val)
		case !slices.Contains(handled, name):
			why = "-" + name + " is set"
		}
		switch name {
		case "test.v":
			if val == "test2json" {
				co.prefix = "\x16"
			}
		case "test.failfast":
			co.failfast = val == "true"
		case "test.timeout":
			if d, _ := f.Value.(flag.Getter).Get().(time.Duration); d > 0 {
				co.deadline = time.Now().Add(d)
			}
		}
	})
	return why
}

// list runs the test binary with -test.list and returns the tests, fuzz targets
// and examples a run with -run pattern runs (benchmarks do not run).
func (co *coordinator) list(pattern string) ([]string, error) {
	if pattern == "" {
		pattern = "."
	}
	cmd := exec.Command(co.self, "-test.list", pattern)
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("listing the tests: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if testName.MatchString(l) {
			names = append(names, l)
		}
	}
	return names, nil
}

var testName = regexp.MustCompile(`^(Test|Fuzz|Example)[\p{L}\p{N}_]*$`)

// result is how one test process ended.
type result struct {
	name   string
	serial bool
	err    error // from Wait: nil when it exited 0
	output []byte
	took   time.Duration
	// leaks describes the processes left behind when the test process ended;
	// alsoEnded names other tests whose processes had ended by then.
	leaks, alsoEnded []string
}

// run starts the tests, at most jobs at a time, the serial ones one at a time,
// prints each test's output as it ends, and returns the exit code.
func (co *coordinator) run() int {
	if err := proc.SetSubreaper(); err != nil {
		fmt.Fprintf(co.out, "shard: %v\n", err)
		return 1
	}
	if co.setup != nil {
		env, done, err := co.setup()
		if err != nil {
			fmt.Fprintf(co.out, "shard: setting up: %v\n%sFAIL\n", err, co.prefix)
			return 1
		}
		co.env = env
		if done != nil {
			defer done()
		}
	}
	if testVerbose() {
		fmt.Fprintf(co.out, "shard: %d tests, %d processes at a time; %d of them one at a time: %s\n",
			len(co.parallel)+len(co.serial), co.jobs, len(co.serial), strings.Join(co.serial, " "))
	}
	results := make(chan result)
	running, serialBusy, failed := 0, false, false
	var late []string // not started: the -test.timeout had run out
	for {
		for running < co.jobs && !(failed && co.failfast) {
			name, serial := co.next(serialBusy)
			if name == "" {
				break
			}
			left := time.Duration(0)
			if !co.deadline.IsZero() {
				if left = time.Until(co.deadline); left < time.Second {
					late = append(late, name)
					continue
				}
			}
			running++
			serialBusy = serialBusy || serial
			go func() { results <- co.test(name, serial, left) }()
		}
		if running == 0 {
			break
		}
		r := <-results
		running--
		serialBusy = serialBusy && !r.serial
		failed = !co.report(r) || failed
	}
	if len(late) > 0 {
		fmt.Fprintf(co.out, "shard: the -test.timeout ran out before these tests started: %s\n", strings.Join(late, " "))
		failed = true
	}
	if failed {
		fmt.Fprintf(co.out, "%sFAIL\n", co.prefix)
		return 1
	}
	fmt.Fprintf(co.out, "%sPASS\n", co.prefix)
	return 0
}

// next takes the next test to start: a serial one if none runs, else one that
// may overlap. "" when none can start now.
func (co *coordinator) next(serialBusy bool) (string, bool) {
	if !serialBusy && len(co.serial) > 0 {
		n := co.serial[0]
		co.serial = co.serial[1:]
		return n, true
	}
	if len(co.parallel) > 0 {
		n := co.parallel[0]
		co.parallel = co.parallel[1:]
		return n, false
	}
	return "", false
}
