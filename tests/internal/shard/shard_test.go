package shard

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// fakeBinary builds testdata/fake's test binary once.
var fakeBinary = func() func(t *testing.T) string {
	var bin string
	var err error
	built := false
	return func(t *testing.T) string {
		t.Helper()
		if !built {
			built = true
			dir, e := os.MkdirTemp("", "shard-fake-")
			if e != nil {
				t.Fatal(e)
			}
			bin = filepath.Join(dir, "fake.test")
			out, e := exec.Command("go", "test", "-c", "-o", bin, "./testdata/fake").CombinedOutput()
			if e != nil {
				err = fmt.Errorf("building the fake tests: %v\n%s", e, out)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		return bin
	}
}()

func TestMain(m *testing.M) {
	if err := proc.SetSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := proc.LeakCheck(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// run is one run of the fake test binary.
type run struct {
	dir  string
	pid  int
	code int
	out  string
	took time.Duration
}

// runFake runs the fake tests with args and the environment additions env.
func runFake(t *testing.T, env []string, args ...string) run {
	t.Helper()
	r := run{dir: t.TempDir()}
	cmd := exec.Command(fakeBinary(t), args...)
	cmd.Env = append(append(os.Environ(), "FAKE_DIR="+r.dir), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.pid = cmd.Process.Pid
	err := cmd.Wait()
	r.took, r.out = time.Since(start), out.String()
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// ran returns the PID each test that ran recorded, and what it saw of $FAKE_SETUP
// and of the worker marker.
func (r run) ran(t *testing.T) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	files, _ := filepath.Glob(filepath.Join(r.dir, "*.ran"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[strings.TrimSuffix(filepath.Base(f), ".ran")] = strings.Split(strings.TrimSuffix(string(b), "\n"), " ")
	}
	return m
}

var allTests = []string{"TestSerialA", "TestSerialB", "TestSerialC", "TestMeetOne", "TestMeetTwo", "TestFails", "TestLeaks", "TestSlow"}

// TestCoordinated: a run of all the tests runs each in a process of its own (not
// the coordinator's), with Setup's environment and without the worker marker; the
// serial ones one at a time (each fails if another holds its lock), two others at
// the same time (each waits for the other to start); the output has every test's
// result and one PASS at the end; Setup's done ran.
func TestCoordinated(t *testing.T) {
	r := runFake(t, nil, "-test.v", "-test.timeout=2m")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.out)
	}
	ran := r.ran(t)
	pids := map[string]bool{}
	for _, name := range allTests {
		rec, ok := ran[name]
		switch {
		case !ok:
			t.Errorf("%s did not run", name)
		case len(rec) != 3 || rec[0] == strconv.Itoa(r.pid) || pids[rec[0]]:
			t.Errorf("%s ran in pid %v: want a process of its own (the coordinator is %d; others %v)", name, rec, r.pid, pids)
		case rec[1] != "yes" || rec[2] != "":
			t.Errorf("%s saw FAKE_SETUP=%q and the worker marker %q: want Setup's value and no marker", name, rec[1], rec[2])
		}
		if ok {
			pids[rec[0]] = true
		}
		if n := strings.Count(r.out, "--- PASS: "+name+" "); n != 1 {
			t.Errorf("%d lines --- PASS: %s in the output", n, name)
		}
	}
	if !strings.HasSuffix(r.out, "\nPASS\n") || strings.Count(r.out, "\nPASS\n") != 1 {
		t.Errorf("the output does not end with one PASS:\n%s", r.out)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "setup-done")); err != nil {
		t.Errorf("Setup's done did not run: %v", err)
	}
}

// TestJSON: under go test -json's flag (-test.v=test2json), the coordinator's output
// is what test2json turns into one pass event per test and one for the package.
func TestJSON(t *testing.T) {
	r := runFake(t, nil, "-test.v=test2json", "-test.timeout=2m")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.out)
	}
	cmd := exec.Command("go", "tool", "test2json", "-p", "fake")
	cmd.Stdin = strings.NewReader(r.out)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("test2json: %v", err)
	}
	for _, name := range allTests {
		if n := strings.Count(string(out), `"Action":"pass","Package":"fake","Test":"`+name+`"`); n != 1 {
			t.Errorf("%d pass events for %s", n, name)
		}
	}
	if !strings.Contains(string(out), `"Action":"pass","Package":"fake","Elapsed"`) && !bytes.Contains(out, []byte(`"Action":"pass","Package":"fake"}`)) {
		t.Errorf("no pass event for the package:\n%s", out)
	}
}

// TestFailure: a failing test fails the run (exit 1, its --- FAIL line, FAIL at the
// end); the others still run.
func TestFailure(t *testing.T) {
	r := runFake(t, []string{"FAKE_FAIL=1"}, "-test.timeout=2m")
	if r.code != 1 || !strings.Contains(r.out, "--- FAIL: TestFails") || !strings.HasSuffix(r.out, "\nFAIL\n") {
		t.Fatalf("exit %d, want 1 with TestFails failed and FAIL at the end:\n%s", r.code, r.out)
	}
	if n := len(r.ran(t)); n != len(allTests) {
		t.Errorf("%d tests ran, want all %d", n, len(allTests))
	}
}

// TestLeak: a process a test leaves running when its process ends is killed and
// reaped by the coordinator, which fails the run naming the test.
func TestLeak(t *testing.T) {
	r := runFake(t, []string{"FAKE_LEAK=1"}, "-test.timeout=2m")
	b, err := os.ReadFile(filepath.Join(r.dir, "leaked.pid"))
	if err != nil {
		t.Fatalf("%v\n%s", err, r.out)
	}
	pid, _ := strconv.Atoi(string(b))
	if r.code != 1 || !strings.Contains(r.out, "TestLeaks") || !strings.Contains(r.out, "left processes behind") ||
		!strings.Contains(r.out, "pid "+string(b)+" ") {
		t.Errorf("exit %d, want 1 with TestLeaks named for leaving pid %d behind:\n%s", r.code, pid, r.out)
	}
	if st := proc.State(pid); st != "" {
		t.Errorf("the leaked sleep %d is still there (state %s)", pid, st)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// TestTimeout: -test.timeout bounds the whole run: a test still running at the
// deadline panics in its own process, with the testing package's message, and the
// run fails.
func TestTimeout(t *testing.T) {
	r := runFake(t, []string{"FAKE_SLOW=1"}, "-test.timeout=5s")
	if r.code == 0 || !strings.Contains(r.out, "panic: test timed out") || !strings.Contains(r.out, "TestSlow") {
		t.Errorf("exit %d after %v, want a failure with TestSlow's timeout panic:\n%s", r.code, r.took, r.out)
	}
	if r.took > time.Minute {
		t.Errorf("the run took %v, for a timeout of 5s", r.took)
	}
}

// TestInProcess: a -run naming one test, a -run with subtests, -test.list and
// HANDOVER_TEST_JOBS=1 run the tests in the process that was started.
func TestInProcess(t *testing.T) {
	for _, c := range []struct {
		env  []string
		args []string
		want []string
	}{
		{nil, []string{"-test.run=^TestFails$"}, []string{"TestFails"}},
		{nil, []string{"-test.run=TestFails/x|TestSlow/y"}, []string{"TestFails", "TestSlow"}},
		{[]string{JobsEnv + "=1"}, []string{"-test.run=TestSerial"}, []string{"TestSerialA", "TestSerialB", "TestSerialC"}},
	} {
		r := runFake(t, c.env, append(c.args, "-test.timeout=2m")...)
		if r.code != 0 {
			t.Errorf("%v %v: exit %d\n%s", c.env, c.args, r.code, r.out)
			continue
		}
		ran := r.ran(t)
		var names []string
		for name, rec := range ran {
			names = append(names, name)
			if rec[0] != strconv.Itoa(r.pid) {
				t.Errorf("%v %v: %s ran in pid %s, want the process started (%d)", c.env, c.args, name, rec[0], r.pid)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, c.want) {
			t.Errorf("%v %v: ran %v, want %v", c.env, c.args, names, c.want)
		}
	}
	r := runFake(t, nil, "-test.list=Serial")
	if r.code != 0 || r.out != "TestSerialA\nTestSerialB\nTestSerialC\n" {
		t.Errorf("-test.list: exit %d\n%s", r.code, r.out)
	}
}

// TestRunPattern: a -run pattern without '/' that matches several tests runs them
// coordinated, and only them.
func TestRunPattern(t *testing.T) {
	r := runFake(t, nil, "-test.run=Meet|SerialB", "-test.timeout=2m")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.out)
	}
	ran := r.ran(t)
	if len(ran) != 3 || ran["TestMeetOne"] == nil || ran["TestMeetTwo"] == nil || ran["TestSerialB"] == nil {
		t.Errorf("ran %v, want TestMeetOne, TestMeetTwo and TestSerialB", ran)
	}
	for name, rec := range ran {
		if rec[0] == strconv.Itoa(r.pid) {
			t.Errorf("%s ran in the coordinator", name)
		}
	}
}
