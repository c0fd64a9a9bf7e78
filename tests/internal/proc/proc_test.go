package proc

import (
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
)

const waitTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	if err := SetSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	CleanupBuilds()
	if err := LeakCheck(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// start starts a command and returns its pid; the test must reap it by pid.
func start(t *testing.T, name string, args ...string) int {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release() // reaped with Reap, never with cmd.Wait
	t.Cleanup(func() {
		if State(pid) != "" && PPid(pid) == os.Getpid() {
			KillAndReap(pid, waitTimeout)
		}
	})
	return pid
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestReparentedGrandchild: sh starts a background sleep and exits; the
// sleep is reparented to the test (a subreaper), which kills and reaps it.
func TestReparentedGrandchild(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 60 >/dev/null 2>&1 </dev/null & echo $!")
	out, err := cmd.Output() // waits for (and reaps) sh
	must(t, err)
	gc, err := strconv.Atoi(strings.TrimSpace(string(out)))
	must(t, err)
	t.Cleanup(func() {
		if State(gc) != "" {
			KillAndReap(gc, waitTimeout)
		}
	})

	self := os.Getpid()
	must(t, WaitFor(func() bool { return PPid(gc) == self }, waitTimeout, "sleep to be reparented to the test"))
	if !slices.Contains(Children(self), gc) || !slices.Contains(Descendants(self), gc) {
		t.Fatalf("grandchild %d not in Children %v / Descendants %v", gc, Children(self), Descendants(self))
	}
	if !Alive(gc) || Zombie(gc) || FDCount(gc) < 3 || !strings.HasPrefix(Cmdline(gc), "sleep 60") {
		t.Fatalf("alive=%v zombie=%v fds=%d cmdline=%q", Alive(gc), Zombie(gc), FDCount(gc), Cmdline(gc))
	}
	if err := LeakCheck(); err == nil || !strings.Contains(err.Error(), strconv.Itoa(gc)) {
		t.Fatalf("LeakCheck() = %v, want it to name %d", err, gc)
	}
	must(t, LeakCheck(gc))

	ws, err := KillAndReap(gc, waitTimeout)
	must(t, err)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("wait status %v", ws)
	}
	if Alive(gc) || State(gc) != "" {
		t.Fatalf("pid %d still present after reap: state %q", gc, State(gc))
	}
	must(t, LeakCheck())
}

func TestReapTimeoutThenZombie(t *testing.T) {
	pid := start(t, "sleep", "60")
	if _, err := Reap(pid, 20*time.Millisecond); err == nil || !strings.Contains(err.Error(), "did not exit") {
		t.Fatalf("Reap of running process = %v", err)
	}
	if !Alive(pid) || PPid(pid) != os.Getpid() {
		t.Fatalf("alive=%v ppid=%d", Alive(pid), PPid(pid))
	}
	must(t, syscall.Kill(pid, syscall.SIGTERM))
	must(t, WaitFor(func() bool { return Zombie(pid) }, waitTimeout, "sleep to become a zombie"))
	if Alive(pid) {
		t.Fatal("zombie reported alive")
	}
	if err := LeakCheck(pid); err == nil || !strings.Contains(err.Error(), "zombie") {
		t.Fatalf("LeakCheck with a zombie = %v", err)
	}
	ws, err := Reap(pid, waitTimeout)
	must(t, err)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("wait status %v", ws)
	}
	if State(pid) != "" {
		t.Fatalf("state after reap %q", State(pid))
	}
}

func TestReapExitStatus(t *testing.T) {
	pid := start(t, "sh", "-c", "exit 7")
	ws, err := Reap(pid, waitTimeout)
	must(t, err)
	if !ws.Exited() || ws.ExitStatus() != 7 {
		t.Fatalf("wait status %v", ws)
	}
}

func TestRefusals(t *testing.T) {
	if _, err := Reap(1, time.Millisecond); err == nil {
		t.Error("Reap(1) succeeded: pid 1 is not our child")
	}
	for _, pid := range []int{-1, 0, 1, os.Getpid()} {
		if _, err := KillAndReap(pid, time.Millisecond); err == nil || !strings.Contains(err.Error(), "refusing") {
			t.Errorf("KillAndReap(%d) = %v", pid, err)
		}
	}
}

// TestDescendantsTree: sh with two sleeps; killing sh reparents both sleeps
// to the test, which reaps each by pid.
func TestDescendantsTree(t *testing.T) {
	sh := start(t, "sh", "-c", "sleep 60 & sleep 60 & wait")
	must(t, WaitFor(func() bool { return len(Children(sh)) == 2 }, waitTimeout, "sh to start two sleeps"))
	kids := Children(sh)
	for _, k := range kids {
		t.Cleanup(func() {
			if State(k) != "" {
				KillAndReap(k, waitTimeout)
			}
		})
		if !slices.Contains(Descendants(os.Getpid()), k) || PPid(k) != sh {
			t.Fatalf("sleep %d: ppid %d, descendants %v", k, PPid(k), Descendants(os.Getpid()))
		}
	}
	_, err := KillAndReap(sh, waitTimeout)
	must(t, err)
	for _, k := range kids {
		must(t, WaitFor(func() bool { return PPid(k) == os.Getpid() }, waitTimeout, fmt.Sprintf("sleep %d to be reparented", k)))
		_, err := KillAndReap(k, waitTimeout)
		must(t, err)
	}
	must(t, LeakCheck())
}

func TestWaitFor(t *testing.T) {
	n := 0
	must(t, WaitFor(func() bool { n++; return n >= 3 }, waitTimeout, "three polls"))
	err := WaitFor(func() bool { return false }, 20*time.Millisecond, "the impossible")
	if err == nil || !strings.Contains(err.Error(), "waiting for the impossible") {
		t.Fatalf("WaitFor = %v", err)
	}
}

func TestBuildOnce(t *testing.T) {
	bin := Binary(t, "./testdata/hello")
	if filepath.Dir(bin) != Build(t, "./testdata/hello") {
		t.Fatalf("Binary %s not in Build dir", bin)
	}
	fi1, err := os.Stat(bin)
	must(t, err)
	out, err := exec.Command(bin).Output()
	must(t, err)
	if string(out) != "hello\n" {
		t.Fatalf("output %q", out)
	}
	Build(t, "./testdata/hello") // cached: must not rebuild
	fi2, err := os.Stat(bin)
	must(t, err)
	if !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Fatal("binary was rebuilt")
	}
	if _, err := BuildE("./testdata/nonexistent"); err == nil {
		t.Fatal("building a missing package succeeded")
	}
}

// TestVariant: a variant is built once per name with its flags; another package or
// other flags under the same name are refused, in this process and in a shared
// directory (as ShareBuilds makes for test processes) that records what each binary
// was built from.
func TestVariant(t *testing.T) {
	bin := Variant(t, "./testdata/hello", "hello-bonjour", "-ldflags", "-X main.greeting=bonjour")
	out, err := exec.Command(bin).Output()
	must(t, err)
	if string(out) != "bonjour\n" {
		t.Fatalf("variant output %q", out)
	}
	if again := Variant(t, "./testdata/hello", "hello-bonjour", "-ldflags", "-X main.greeting=bonjour"); again != bin {
		t.Fatalf("the same variant again: %s, was %s", again, bin)
	}
	if _, err := build([]target{{pkg: "./testdata/hello", name: "hello-bonjour", flags: []string{"-ldflags", "-X main.greeting=hi"}}}); err == nil ||
		!strings.Contains(err.Error(), "would both build") {
		t.Fatalf("other flags under a built variant's name: %v", err)
	}

	env, done, err := ShareBuilds("./testdata/hello")
	must(t, err)
	dir := strings.TrimPrefix(env[0], BuildsEnv+"=")
	if !built(dir, plain([]string{"./testdata/hello"})) {
		t.Fatalf("ShareBuilds did not build hello into %s", dir)
	}
	clash := []target{{pkg: "./testdata/hello", name: "hello", flags: []string{"-ldflags", "-X main.greeting=hi"}}}
	if err := buildInto(dir, clash); err == nil || !strings.Contains(err.Error(), "would both build") {
		t.Fatalf("a variant named like a shared binary: %v", err)
	}
	done()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("done left %s: %v", dir, err)
	}
}
