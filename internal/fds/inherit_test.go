package fds

import (
	"fmt"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"os"
	"slices"
	"strings"
	"testing"
)

// fakeEnv is an env with a made-up environment and process IDs.
type fakeEnv struct {
	vars      map[string]string
	pid, ppid int
	unset     []string
}

func (e *fakeEnv) Lookup(k string) (string, bool) { v, ok := e.vars[k]; return v, ok }
func (e *fakeEnv) Unset(k string)                 { delete(e.vars, k); e.unset = append(e.unset, k) }
func (e *fakeEnv) Getpid() int                    { return e.pid }
func (e *fakeEnv) Getppid() int                   { return e.ppid }

// closedFD is a descriptor number that is not open in the test process.
const closedFD = 999999

// runInherit calls inherit with vars and checks what must hold whatever the outcome:
// no panic, a non-nil Set, and every variable of the protocol cleared.
func runInherit(t *testing.T, vars map[string]string) (*Set, error) {
	t.Helper()
	e := &fakeEnv{vars: map[string]string{"PATH": "/bin"}, pid: 4242, ppid: 4000}
	for k, v := range vars {
		e.vars[k] = v
	}
	var s *Set
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("inherit(%q) panicked: %v", vars, r)
			}
		}()
		s, err = inherit(e, func() []*os.File { return nil })
	}()
	if s == nil {
		t.Fatalf("inherit(%q) returned a nil Set (err %v)", vars, err)
	}
	for _, k := range []string{handoff.ListenPIDEnv, handoff.ListenFDsEnv, handoff.ListenFDNamesEnv, handoff.MarkerEnv, handoff.MasterEnv, handoff.GenerationEnv, handoff.DirectEnv} {
		if _, ok := e.vars[k]; ok || !slices.Contains(e.unset, k) {
			t.Errorf("inherit(%q): %s was not cleared", vars, k)
		}
	}
	if e.vars["PATH"] != "/bin" {
		t.Errorf("inherit(%q) touched an unrelated variable", vars)
	}
	if err == nil && s.Source() == Bound && len(s.Files()) != 0 {
		t.Errorf("inherit(%q): source bound but %d files", vars, len(s.Files()))
	}
	return s, err
}

func TestInheritNothing(t *testing.T) {
	s, err := runInherit(t, nil)
	if err != nil || s.Source() != Bound || s.Ignored() != "" || s.Marker() != nil || s.Channel() != nil {
		t.Errorf("empty environment: source %v, ignored %q, marker %v, err %v", s.Source(), s.Ignored(), s.Marker(), err)
	}
}

// TestInheritIgnored: descriptors meant for someone else are not adopted, and the Set
// says why.
func TestInheritIgnored(t *testing.T) {
	for _, c := range []struct {
		name  string
		vars  map[string]string
		parts []string
	}{
		{
			"LISTEN_PID of another process",
			map[string]string{handoff.ListenPIDEnv: "17", handoff.ListenFDsEnv: "2", handoff.ListenFDNamesEnv: "a:b"},
			[]string{"LISTEN_PID=17", "not this process (4242)"},
		},
		{
			"LISTEN_PID of another process, even with a marker",
			map[string]string{handoff.ListenPIDEnv: "17", handoff.ListenFDsEnv: "1", handoff.MarkerEnv: "pid=4000,ppid=4000,chan=4,gen=2"},
			[]string{"LISTEN_PID=17"},
		},
		{
			"LISTEN_FDS without LISTEN_PID",
			map[string]string{handoff.ListenFDsEnv: "1"},
			[]string{"LISTEN_FDS is set but LISTEN_PID is not"},
		},
		{
			"LISTEN_FDS without LISTEN_PID, malformed",
			map[string]string{handoff.ListenFDsEnv: "garbage", handoff.ListenFDNamesEnv: "x:y"},
			[]string{"LISTEN_FDS is set but LISTEN_PID is not"},
		},
		{
			"marker for another parent",
			map[string]string{handoff.ListenFDsEnv: "1", handoff.MarkerEnv: "pid=17,ppid=17,chan=4,gen=2"},
			[]string{"HANDOVER_PARENT", "parent 17", "parent is 4000"},
		},
		{
			"marker for another parent, as a sibling",
			map[string]string{handoff.ListenFDsEnv: "1", handoff.MarkerEnv: "pid=4000,ppid=1,chan=4,gen=2"},
			[]string{"HANDOVER_PARENT", "parent 1", "parent is 4000"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := runInherit(t, c.vars)
			if err != nil {
				t.Fatalf("err %v; want the descriptors ignored", err)
			}
			if s.Source() != Bound || len(s.Files()) != 0 || s.Marker() != nil {
				t.Errorf("source %v, %d files, marker %v; want nothing adopted", s.Source(), len(s.Files()), s.Marker())
			}
			why := s.Ignored()
			if why == "" {
				t.Fatal("Ignored() is empty; want a reason")
			}
			for _, p := range c.parts {
				if !strings.Contains(why, p) {
					t.Errorf("Ignored() = %q; does not mention %q", why, p)
				}
			}
		})
	}
}

// TestInheritMalformed: a malformed environment meant for this process is an error
// that says what is wrong, not a panic and not a silent fallback.
func TestInheritMalformed(t *testing.T) {
	marker := func(rest string) string { return "pid=4000,ppid=4000," + rest }
	for _, c := range []struct {
		name  string
		vars  map[string]string
		parts []string
	}{
		{"LISTEN_PID not a number", map[string]string{handoff.ListenPIDEnv: "abc", handoff.ListenFDsEnv: "1"}, []string{"LISTEN_PID", `"abc"`}},
		{"LISTEN_PID zero", map[string]string{handoff.ListenPIDEnv: "0", handoff.ListenFDsEnv: "1"}, []string{"LISTEN_PID=0"}},
		{"LISTEN_PID empty", map[string]string{handoff.ListenPIDEnv: "", handoff.ListenFDsEnv: "1"}, []string{"LISTEN_PID", `""`}},
		{"LISTEN_PID without LISTEN_FDS", map[string]string{handoff.ListenPIDEnv: "4242"}, []string{"LISTEN_PID is set but LISTEN_FDS is not"}},
		{"LISTEN_FDS not a number", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "two"}, []string{"LISTEN_FDS", `"two"`}},
		{"LISTEN_FDS negative", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "-3"}, []string{"LISTEN_FDS=-3", "negative"}},
		{"LISTEN_FDS huge", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "99999999999999999999"}, []string{"LISTEN_FDS", "99999999999999999999"}},
		{"LISTEN_FDS empty", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: ""}, []string{"LISTEN_FDS is empty"}},
		{"too many names", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "1", handoff.ListenFDNamesEnv: "a:b"}, []string{"LISTEN_FDNAMES", `"a:b"`, "LISTEN_FDS=1"}},
		{"too few names", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "2", handoff.ListenFDNamesEnv: "a"}, []string{"LISTEN_FDNAMES", `"a"`, "LISTEN_FDS=2"}},
		{"master PID malformed", map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "0", handoff.MasterEnv: "x"}, []string{"HANDOVER_MASTER", `"x"`}},
		{"marker malformed", map[string]string{handoff.ListenFDsEnv: "1", handoff.MarkerEnv: "pid=1"}, []string{"HANDOVER_PARENT", `"pid=1"`}},
		{"marker without LISTEN_FDS", map[string]string{handoff.MarkerEnv: marker("chan=3,gen=2")}, []string{"HANDOVER_PARENT is set but LISTEN_FDS is not"}},
		{"marker, bad LISTEN_FDS", map[string]string{handoff.ListenFDsEnv: "x", handoff.MarkerEnv: marker("chan=4,gen=2")}, []string{"LISTEN_FDS", `"x"`}},
		{"marker own beyond LISTEN_FDS", map[string]string{handoff.ListenFDsEnv: "1", handoff.MarkerEnv: marker("chan=4,gen=2,own=1")}, []string{"own index 1", "LISTEN_FDS=1"}},
		{"marker chan among the sockets", map[string]string{handoff.ListenFDsEnv: "2", handoff.MarkerEnv: marker("chan=4,gen=2")}, []string{"chan=4", "LISTEN_FDS=2"}},
		{"marker chan not open", map[string]string{handoff.ListenFDsEnv: "0", handoff.MarkerEnv: marker(fmt.Sprintf("chan=%d,gen=2", closedFD))}, []string{"channel fd 999999", "not a unix seqpacket socket", "bad file descriptor"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := runInherit(t, c.vars)
			if err == nil {
				t.Fatalf("no error (source %v, ignored %q); want one", s.Source(), s.Ignored())
			}
			for _, p := range c.parts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not mention %q", err, p)
				}
			}
		})
	}
}

// TestInheritZero: LISTEN_FDS=0 for this process is valid and passes nothing.
func TestInheritZero(t *testing.T) {
	s, err := runInherit(t, map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "0", handoff.ListenFDNamesEnv: ""})
	if err != nil || s.Source() != Systemd || len(s.Files()) != 0 || s.Ignored() != "" || s.Master() != 0 {
		t.Errorf("LISTEN_FDS=0: source %v, %d files, ignored %q, master %d, err %v; want systemd, none", s.Source(), len(s.Files()), s.Ignored(), s.Master(), err)
	}
}

// TestInheritDirect: a `handover run` master that starts a program carrying the
// direct mark passes no LISTEN_PID but HANDOVER_DIRECT, the mark's version: the
// sockets are the master's when HANDOVER_MASTER names our real parent, and the
// version is ours; otherwise they are ignored, and the Set says why.
func TestInheritDirect(t *testing.T) {
	v := handoff.DirectVersion()
	if v == "" || !strings.HasSuffix(string(handoff.DirectMark[:]), " "+v) {
		t.Fatalf("DirectVersion %q, mark %q", v, handoff.DirectMark)
	}
	s, err := runInherit(t, map[string]string{handoff.DirectEnv: v, handoff.ListenFDsEnv: "0", handoff.MasterEnv: "4000", handoff.GenerationEnv: "7"})
	if err != nil || s.Source() != Master || s.Master() != 4000 || s.Generation() != 7 || s.Ignored() != "" {
		t.Errorf("direct start by our parent: source %v, master %d, gen %d, ignored %q, err %v; want master 4000, gen 7", s.Source(), s.Master(), s.Generation(), s.Ignored(), err)
	}
	for _, c := range []struct {
		name  string
		vars  map[string]string
		parts []string
	}{
		{"master not our parent", map[string]string{handoff.DirectEnv: v, handoff.ListenFDsEnv: "1", handoff.MasterEnv: "17"}, []string{"HANDOVER_MASTER=17", "not this process's parent (4000)"}},
		{"another version", map[string]string{handoff.DirectEnv: v + "9", handoff.ListenFDsEnv: "1", handoff.MasterEnv: "4000"}, []string{"HANDOVER_DIRECT=", "version"}},
	} {
		s, err := runInherit(t, c.vars)
		if err != nil || s.Source() != Bound || len(s.Files()) != 0 {
			t.Errorf("%s: source %v, %d files, err %v; want nothing adopted", c.name, s.Source(), len(s.Files()), err)
		}
		for _, p := range c.parts {
			if !strings.Contains(s.Ignored(), p) {
				t.Errorf("%s: ignored %q does not mention %q", c.name, s.Ignored(), p)
			}
		}
	}
	for _, c := range []struct {
		name string
		vars map[string]string
		part string
	}{
		{"without HANDOVER_MASTER", map[string]string{handoff.DirectEnv: v, handoff.ListenFDsEnv: "1"}, "HANDOVER_DIRECT is set but HANDOVER_MASTER is not"},
		{"without LISTEN_FDS", map[string]string{handoff.DirectEnv: v, handoff.MasterEnv: "4000"}, "HANDOVER_MASTER is set but LISTEN_FDS is not"},
		{"master malformed", map[string]string{handoff.DirectEnv: v, handoff.ListenFDsEnv: "1", handoff.MasterEnv: "x"}, `HANDOVER_MASTER="x"`},
		{"generation malformed", map[string]string{handoff.DirectEnv: v, handoff.ListenFDsEnv: "0", handoff.MasterEnv: "4000", handoff.GenerationEnv: "0"}, "HANDOVER_GENERATION=0"},
	} {
		if _, err := runInherit(t, c.vars); err == nil || !strings.Contains(err.Error(), c.part) {
			t.Errorf("%s: error %v; want one saying %q", c.name, err, c.part)
		}
	}
}

// TestInheritMaster: a `handover run` master's sockets come by systemd's protocol;
// HANDOVER_MASTER makes them the master's only when it names our real parent.
func TestInheritMaster(t *testing.T) {
	s, err := runInherit(t, map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "0", handoff.MasterEnv: "4000", handoff.GenerationEnv: "7"})
	if err != nil || s.Source() != Master || s.Master() != 4000 || s.Generation() != 7 {
		t.Errorf("master = our parent: source %v, master %d, err %v; want master 4000", s.Source(), s.Master(), err)
	}
	s, err = runInherit(t, map[string]string{handoff.ListenPIDEnv: "4242", handoff.ListenFDsEnv: "0", handoff.MasterEnv: "17"})
	if err != nil || s.Source() != Systemd || s.Master() != 0 {
		t.Errorf("master = not our parent: source %v, master %d, err %v; want systemd, no master", s.Source(), s.Master(), err)
	}
}
