//go:build linux

package master

import (
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

func TestParseListen(t *testing.T) {
	cwd, _ := os.Getwd()
	for _, c := range []struct {
		in   string
		want Listen
	}{
		{"http=127.0.0.1:8080", Listen{"http", "tcp", "127.0.0.1:8080"}},
		{"http=:8080", Listen{"http", "tcp", ":8080"}},
		{"api=localhost:80", Listen{"api", "tcp", "localhost:80"}},
		{"v6=[::1]:8443", Listen{"v6", "tcp", "[::1]:8443"}},
		{"any6=[::]:1", Listen{"any6", "tcp", "[::]:1"}},
		{"t=tcp:0.0.0.0:65535", Listen{"t", "tcp", "0.0.0.0:65535"}},
		{"dns=udp:127.0.0.1:5353", Listen{"dns", "udp", "127.0.0.1:5353"}},
		{"dns6=udp:[::1]:53", Listen{"dns6", "udp", "[::1]:53"}},
		{"sock=unix:/run/app/app.sock", Listen{"sock", "unix", "/run/app/app.sock"}},
		{"rel=unix:app.sock", Listen{"rel", "unix", filepath.Join(cwd, "app.sock")}},
		{"abs=unix:@handover-test", Listen{"abs", "unix", "@handover-test"}},
		{"a.b-c_d=127.0.0.1:1", Listen{"a.b-c_d", "tcp", "127.0.0.1:1"}},
		{"eq=unix:/tmp/a=b", Listen{"eq", "unix", "/tmp/a=b"}},
	} {
		got, err := ParseListen(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseListen(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if err == nil && c.want.Network != "unix" {
			// String gives back a form that parses to the same.
			again, err := ParseListen(got.String())
			if err != nil || again != got {
				t.Errorf("ParseListen(%q.String() = %q) = %+v, %v", c.in, got.String(), again, err)
			}
		}
	}
}

func TestParseListenErrors(t *testing.T) {
	for _, c := range []struct {
		in, want string // want: a word the error must contain
	}{
		{"127.0.0.1:8080", "NAME=ADDR"},
		{"=127.0.0.1:8080", "empty"},
		{"http=", "empty address"},
		{"http=127.0.0.1", "no port"},
		{"http=localhost", "no port"},
		{"http=::1:8080", "brackets"},
		{"http=127.0.0.1:http", "not a number"},
		{"http=127.0.0.1:0", "out of range"},
		{"http=127.0.0.1:65536", "out of range"},
		{"http=127.0.0.1:-1", "not a number"},
		{"http=127.0.0.1:+80", "not a number"},
		{"http=unix:", "needs a path"},
		{"http=udp:", "empty address"},
		{"http=udp:127.0.0.1", "no port"},
		{"a:b=127.0.0.1:1", "':'"},
		{"a b=127.0.0.1:1", "':'"},
		{"h\x01=127.0.0.1:1", "printable"},
		{"handover-control=127.0.0.1:1", "reserved"},
		{strings.Repeat("n", 256) + "=127.0.0.1:1", "255"},
		{"s=unix:/" + strings.Repeat("x", 110), "107"},
	} {
		_, err := ParseListen(c.in)
		if err == nil {
			t.Errorf("ParseListen(%q) succeeded", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "-listen") {
			t.Errorf("ParseListen(%q): %v; want the flag and %q named", c.in, err, c.want)
		}
	}
}

func TestCheckListens(t *testing.T) {
	parse := func(ss ...string) []Listen {
		var out []Listen
		for _, s := range ss {
			l, err := ParseListen(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, l)
		}
		return out
	}
	if err := CheckListens(parse("a=127.0.0.1:1", "b=127.0.0.1:2", "c=udp:127.0.0.1:1")); err != nil {
		t.Errorf("distinct sockets: %v", err)
	}
	if err := CheckListens(parse("a=127.0.0.1:1", "a=127.0.0.1:2")); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a name twice: %v", err)
	}
	if err := CheckListens(parse("a=127.0.0.1:1", "b=tcp:127.0.0.1:1")); err == nil || !strings.Contains(err.Error(), "same address") {
		t.Errorf("an address twice: %v", err)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"SIGTERM": syscall.SIGTERM, "TERM": syscall.SIGTERM, "term": syscall.SIGTERM,
		"sigquit": syscall.SIGQUIT, "INT": syscall.SIGINT, "SIGUSR1": syscall.SIGUSR1, "15": syscall.SIGTERM,
	} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "SIGFOO", "0", "-1", "65", "TERM "} {
		if _, err := ParseSignal(in); err == nil || !strings.Contains(err.Error(), "-stop-signal") {
			t.Errorf("ParseSignal(%q): %v; want an error naming -stop-signal", in, err)
		}
	}
}

// TestDescribe: the sockets the master binds are described as status shows them;
// a descriptor that is not a socket is an error.
func TestDescribe(t *testing.T) {
	for _, l := range []Listen{
		{"t", "tcp", lowPort(t, "tcp")},
		{"u", "udp", lowPort(t, "udp")},
		{"x", "unix", filepath.Join(t.TempDir(), "x.sock")},
	} {
		f, err := fds.Bind(l.Network, l.Address)
		if err != nil {
			t.Fatalf("%v: %v", l, err)
		}
		k, err := describe(f, l.Name, fds.Bound)
		if err != nil || k.network != l.Network || k.addr != l.Address || k.source != "bound" || k.name != l.Name {
			t.Errorf("%v: described as %+v, %v", l, k, err)
		}
		f.Close()
	}
	f, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := describe(f, "f", fds.Systemd); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("describe of a regular file: %v", err)
	}
}

// lowPort returns a loopback address with a port below 32768 (outside the
// ephemeral range) that is free right now.
func lowPort(t *testing.T, network string) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000)))
		var c io.Closer
		var err error
		if network == "udp" {
			c, err = net.ListenPacket("udp", addr)
		} else {
			c, err = net.Listen("tcp", addr)
		}
		if err == nil {
			c.Close()
			return addr
		}
	}
	t.Fatal("no free port below 32768")
	return ""
}

// passed makes *os.Files as go-systemd's activation.Files returns them: bound sockets
// (and, for "file", a regular file) under the given names.
func passed(t *testing.T, names ...string) []*os.File {
	t.Helper()
	var out []*os.File
	for _, name := range names {
		var fd int
		if name == "file" {
			f, err := os.CreateTemp(t.TempDir(), "f")
			if err != nil {
				t.Fatal(err)
			}
			fd, _ = syscall.Dup(int(f.Fd()))
			f.Close()
		} else {
			f, err := fds.Bind("tcp", lowPort(t, "tcp"))
			if err != nil {
				t.Fatal(err)
			}
			fd, _ = syscall.Dup(int(f.Fd()))
			f.Close()
		}
		out = append(out, os.NewFile(uintptr(fd), name))
	}
	return out
}

// TestFromSystemd: sockets from a socket unit are matched to -listen by name (the
// others are not passed on), or all passed on without -listen; the control socket is
// kept by the master; a missing name, or a descriptor that is not a socket, is an
// error that says what to fix.
func TestFromSystemd(t *testing.T) {
	s, err := fromSystemd(passed(t, "http", "admin", handoff.ControlName), nil)
	if err != nil || len(s.list) != 2 || s.list[0].name != "http" || s.list[1].name != "admin" || s.control == nil || !s.systemd {
		t.Errorf("without -listen: %+v, %v", s, err)
	} else {
		if s.list[0].source != "systemd" || s.list[0].network != "tcp" || s.list[0].addr == "" {
			t.Errorf("described as %+v", *s.list[0])
		}
		s.close()
	}

	s, err = fromSystemd(passed(t, "admin", "http"), []Listen{{Name: "http", Network: "tcp", Address: "127.0.0.1:1"}})
	if err != nil || len(s.list) != 1 || s.list[0].name != "http" {
		t.Errorf("-listen http: %+v, %v", s, err)
	} else {
		warned := s.warn
		if len(warned) != 2 || !strings.Contains(strings.Join(warned, "\n"), `"admin"`) {
			t.Errorf("warnings %q: want the unused admin socket and the address mismatch", warned)
		}
		s.close()
	}

	_, err = fromSystemd(passed(t, "admin"), []Listen{{Name: "http", Network: "tcp", Address: "127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "FileDescriptorName=http") {
		t.Errorf("a missing name: %v", err)
	}
	_, err = fromSystemd(passed(t, "file"), nil)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a regular file: %v", err)
	}
}
