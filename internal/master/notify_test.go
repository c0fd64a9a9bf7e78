//go:build linux

package master

import (
	"os"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseNotify(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Field
	}{
		{"READY=1", []Field{{"READY", "1"}}},
		{"READY=1\nSTATUS=serving 3 clients\nMAINPID=42\n", []Field{{"READY", "1"}, {"STATUS", "serving 3 clients"}, {"MAINPID", "42"}}},
		{"STATUS=a=b", []Field{{"STATUS", "a=b"}}},
		{"STATUS=", []Field{{"STATUS", ""}}},
		{"\n\nWATCHDOG=1\n\n", []Field{{"WATCHDOG", "1"}}},
		{"garbage\n=x\nREADY=1", []Field{{"READY", "1"}}},
		{"KEY WITH SPACE=1\nRELOADING=1", []Field{{"RELOADING", "1"}}},
		{"READY=1\x00STOPPING=1", []Field{{"READY", "1"}}},
		{"", nil},
	} {
		if got := ParseNotify([]byte(c.in)); !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseNotify(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestNotifySocket: a datagram sent to the master's socket arrives with the sender's
// PID (SO_PASSCRED); descriptors attached to it are closed, not kept; the socket is
// in a private directory.
func TestNotifySocket(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	t.Setenv("RUNTIME_DIRECTORY", "")
	ns, err := listenNotify()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(ns.dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("notification directory %s: mode %v, %v; want 0700", ns.dir, st.Mode().Perm(), err)
	}
	type got struct {
		pid    int
		fields []Field
		fds    int
	}
	ch := make(chan got, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ns.serve(func(pid int, fields []Field, fds []int) {
			closeFDs(fds) // as the machine does with what it does not store
			ch <- got{pid, fields, len(fds)}
		})
	}()
	send := func(state string, fds ...int) {
		t.Helper()
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(s)
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: ns.path}, 0); err != nil {
			t.Fatal(err)
		}
	}
	send("READY=1\nSTATUS=hi")
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	send("FDSTORE=1", p[1])
	unix.Close(p[1])
	for i, want := range []got{
		{os.Getpid(), []Field{{"READY", "1"}, {"STATUS", "hi"}}, 0},
		{os.Getpid(), []Field{{"FDSTORE", "1"}}, 1},
	} {
		select {
		case g := <-ch:
			if g.pid != want.pid || !reflect.DeepEqual(g.fields, want.fields) || g.fds != want.fds {
				t.Errorf("datagram %d: got %+v, want %+v", i, g, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("datagram %d did not arrive", i)
		}
	}
	// The received copy of the pipe's write end was closed: the read end sees EOF.
	unix.SetNonblock(p[0], false)
	buf := make([]byte, 1)
	if n, err := unix.Read(p[0], buf); n != 0 || err != nil {
		t.Errorf("read from the pipe: %d, %v; want EOF (the passed descriptor closed)", n, err)
	}
	ns.close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after close")
	}
	if _, err := os.Stat(ns.dir); !os.IsNotExist(err) {
		t.Errorf("the directory is left: %v", err)
	}
}

func TestLineage(t *testing.T) {
	// The test process's lineage up to its parent's parent.
	pp := os.Getppid()
	got := lineage(os.Getpid(), parentOf(pp))
	if len(got) != 2 || got[0] != os.Getpid() || got[1] != pp {
		t.Errorf("lineage = %v, want [%d %d]", got, os.Getpid(), pp)
	}
	if got := lineage(os.Getpid(), pp); len(got) != 1 {
		t.Errorf("lineage stopping at the parent = %v, want just the process", got)
	}
	if got := lineage(1<<30, 1); len(got) != 1 {
		t.Errorf("lineage of a process that does not exist = %v", got)
	}
}
