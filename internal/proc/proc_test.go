//go:build linux

package proc

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFind: a name is looked up in $PATH, a path made absolute without resolving
// its symlinks; a name not in $PATH is an error that says so.
func TestFind(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "current")
	if err := os.Symlink("app", link); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	for in, want := range map[string]string{"app": bin, link: link} {
		if got, err := Find(in); err != nil || got != want {
			t.Errorf("Find(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	t.Chdir(dir)
	if got, err := Find("./current"); err != nil || got != link {
		t.Errorf("Find(./current) = %q, %v; want %q", got, err, link)
	}
	if _, err := Find("nope"); err == nil || !strings.Contains(err.Error(), `"nope" not found in $PATH (`+dir+")") {
		t.Errorf("Find(nope): %v", err)
	}
}

// TestCheck: what cannot be started is an error naming the file and what is wrong
// with it.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("#!/bin/sh\n"), 0o755)
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644)
	dangling := filepath.Join(dir, "dangling")
	os.Symlink("gone", dangling)
	if err := Check("program", good); err != nil {
		t.Errorf("an executable file: %v", err)
	}
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "program " + dir + "/missing does not exist (was it removed or renamed during the deploy?)"},
		{dangling, "does not exist"},
		{dir, "program " + dir + " is not a regular file (a directory)"},
		{plain, "program " + plain + " is not executable (mode -rw-r--r--): " + syscall.EACCES.Error()},
	} {
		if err := Check("program", c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%s): %v; want %q", c.path, err, c.want)
		}
	}
}

// TestStart: a started child is watched until it exits, and reaped: its exit status
// says how it ended; Kill kills it, and does nothing once Release was called. An
// interpreter that is missing is named as what is missing. The same without pidfds
// (an old kernel), where the child is waited for by PID.
func TestStart(t *testing.T) {
	t.Run("pidfd", func(t *testing.T) {
		if !pidfdWorks() {
			t.Skip("no pidfd on this system")
		}
		testStart(t)
	})
	t.Run("pid", func(t *testing.T) {
		saved := pidfdWorks
		pidfdWorks = func() bool { return false }
		defer func() { pidfdWorks = saved }()
		testStart(t)
		if _, err := Start(Spec{Path: "/bin/true", Args: []string{"true"}, Sibling: true}); err == nil || !strings.Contains(err.Error(), "needs pidfd support") {
			t.Errorf("a sibling without pidfds: %v", err)
		}
	})
}

func testStart(t *testing.T) {
	p, err := Start(Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, p)
	if got := p.ExitStatus(); got != "exit status 3" {
		t.Errorf("exit status %q", got)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(p.Pid())); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the exited child %d was not reaped: %v", p.Pid(), err)
	}

	r, w, _ := os.Pipe()
	defer r.Close()
	p, err = Start(Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "echo ready >&3; exec sleep 60"}, Files: []*os.File{w}})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	r.Read(buf)
	p.Kill()
	wait(t, p)
	if got := p.ExitStatus(); got != "signal: killed" {
		t.Errorf("killed: exit status %q", got)
	}

	p, err = Start(Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "exec sleep 60"}})
	if err != nil {
		t.Fatal(err)
	}
	p.Release()
	p.Kill()
	if syscall.Kill(p.Pid(), 0) != nil {
		t.Errorf("Kill after Release killed %d", p.Pid())
	}
	syscall.Kill(p.Pid(), syscall.SIGKILL)
	var ws syscall.WaitStatus
	syscall.Wait4(p.Pid(), &ws, 0, nil)

	script := filepath.Join(t.TempDir(), "script")
	os.WriteFile(script, []byte("#!/no/such/interpreter\n"), 0o755)
	_, err = Start(Spec{Path: script, Args: []string{script}})
	if err == nil || !strings.Contains(err.Error(), "the interpreter on its #! line, or its ELF loader, is missing") || !strings.Contains(err.Error(), script) {
		t.Errorf("a script whose interpreter is missing: %v", err)
	}
	if _, err := Start(Spec{Path: "/no/such/file", Args: []string{"x"}}); err == nil || strings.Contains(err.Error(), "interpreter") {
		t.Errorf("a missing file: %v; want an error that does not blame an interpreter", err)
	}
}

func wait(t *testing.T, p *Process) {
	t.Helper()
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		p.Kill()
		t.Fatalf("process %d did not exit", p.Pid())
	}
}

// TestDescribe: how a process ended, as a shell and os.ProcessState say it.
func TestDescribe(t *testing.T) {
	for _, c := range []struct {
		ws   syscall.WaitStatus
		say  string
		code int
	}{
		{syscall.WaitStatus(3 << 8), "exit status 3", 3},
		{syscall.WaitStatus(syscall.SIGKILL), "signal: killed", 128 + 9},
		{syscall.WaitStatus(syscall.SIGSEGV | 0x80), "signal: segmentation fault (core dumped)", 128 + 11},
	} {
		if got, code := Describe(c.ws), ExitCode(c.ws); got != c.say || code != c.code {
			t.Errorf("%#x: %q, %d; want %q, %d", uint32(c.ws), got, code, c.say, c.code)
		}
	}
}

// TestFailure: a failure prints its error and the last lines on stderr, and stays
// what it was made of.
func TestFailure(t *testing.T) {
	cause := errors.New("new child PID 7 exited before it was ready (exit status 1)")
	f := &Failure{Cause: "exited", Err: cause, Stderr: []string{"one", "two"}}
	if got := f.Error(); got != cause.Error()+"; its last lines on stderr:\n  one\n  two" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(f, cause) {
		t.Errorf("a failure does not unwrap to its error")
	}
	if got := (&Failure{Err: cause}).Error(); got != cause.Error() {
		t.Errorf("without stderr: %q", got)
	}
}
