package handoff

import (
	"reflect"
	"strings"
	"testing"
)

// wantErr fails t unless err is non-nil and its message contains every one of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func TestParseListenFDsCount(t *testing.T) {
	valid := []struct {
		fds  string
		want int
	}{
		{"0", 0},
		{"1", 1},
		{"3", 3},
		{"4096", 4096},
	}
	for _, c := range valid {
		n, names, err := ParseListenFDs(c.fds, "", false)
		if err != nil || n != c.want || names != nil {
			t.Errorf("ParseListenFDs(%q) = %d, %q, %v; want %d, nil, nil", c.fds, n, names, err, c.want)
		}
	}
	bad := []struct {
		fds   string
		parts []string // besides the variable name
	}{
		{"", []string{"empty"}},
		{"abc", []string{`"abc"`, "not a decimal number"}},
		{"-1", []string{"-1", "negative"}},
		{"+1", []string{`"+1"`, "not a decimal number"}},
		{" 1", []string{`" 1"`, "not a decimal number"}},
		{"1 ", []string{`"1 "`, "not a decimal number"}},
		{"0x3", []string{`"0x3"`, "not a decimal number"}},
		{"1.0", []string{`"1.0"`, "not a decimal number"}},
		{"99999999999999999999", []string{"99999999999999999999", "larger than 4096"}},
		{"-99999999999999999999", []string{"-99999999999999999999", "negative"}},
		{"4097", []string{"4097", "larger than 4096"}},
		{strings.Repeat("7", 200), []string{"77777777", "...", "larger than 4096"}},
	}
	for _, c := range bad {
		n, names, err := ParseListenFDs(c.fds, "", false)
		if err == nil {
			t.Errorf("ParseListenFDs(%q) = %d, %q; want an error", c.fds, n, names)
			continue
		}
		wantErr(t, err, append([]string{"LISTEN_FDS"}, c.parts...)...)
		if len(err.Error()) > 200 {
			t.Errorf("ParseListenFDs(%q): error is %d bytes long; a bad value must be clipped: %q", c.fds, len(err.Error()), err)
		}
	}
}

func TestParseListenFDsNames(t *testing.T) {
	valid := []struct {
		fds, names string
		want       []string
	}{
		{"1", "http", []string{"http"}},
		{"3", "http:https:dns", []string{"http", "https", "dns"}},
		{"2", "unknown:http", []string{"unknown", "http"}},
		// systemd allows empty names; the count still has to match.
		{"1", "", []string{""}},
		{"2", ":", []string{"", ""}},
		{"3", "a::b", []string{"a", "", "b"}},
		{"2", "dns:dns", []string{"dns", "dns"}},
		{"0", "", nil},
		{"1", "with space and ~!@#$%^&*()", []string{"with space and ~!@#$%^&*()"}},
		{"1", strings.Repeat("n", 255), []string{strings.Repeat("n", 255)}},
	}
	for _, c := range valid {
		n, names, err := ParseListenFDs(c.fds, c.names, true)
		if err != nil || !reflect.DeepEqual(names, c.want) || n != len(c.want) {
			t.Errorf("ParseListenFDs(%q, %q) = %d, %q, %v; want %d, %q", c.fds, c.names, n, names, err, len(c.want), c.want)
		}
	}
	bad := []struct {
		fds, names string
		parts      []string
	}{
		// Fewer names than descriptors.
		{"2", "http", []string{"LISTEN_FDNAMES", "1 names", `"http"`, "LISTEN_FDS=2"}},
		{"3", "a:b", []string{"LISTEN_FDNAMES", "2 names", `"a:b"`, "LISTEN_FDS=3"}},
		// More names than descriptors.
		{"1", "http:https", []string{"LISTEN_FDNAMES", "2 names", `"http:https"`, "LISTEN_FDS=1"}},
		{"0", "http", []string{"LISTEN_FDNAMES", "1 names", `"http"`, "LISTEN_FDS=0"}},
		{"1", ":", []string{"LISTEN_FDNAMES", "2 names", `":"`, "LISTEN_FDS=1"}},
		{"2", "a:b:", []string{"LISTEN_FDNAMES", "3 names", `"a:b:"`, "LISTEN_FDS=2"}},
		// Names systemd would not have produced.
		{"1", "ht\ntp", []string{"LISTEN_FDNAMES", "name 0", `"ht\ntp"`, "control character"}},
		{"2", "ok:b\x00d", []string{"LISTEN_FDNAMES", "name 1", `"b\x00d"`, "control character"}},
		{"1", "tab\there", []string{"LISTEN_FDNAMES", `"tab\there"`}},
		{"1", "del\x7f", []string{"LISTEN_FDNAMES", `"del\x7f"`}},
		{"1", "caf\u00e9", []string{"LISTEN_FDNAMES", "name 0"}},
		{"1", strings.Repeat("n", 256), []string{"LISTEN_FDNAMES", "longer than 255 bytes"}},
		// A bad count is reported before the names.
		{"x", "http", []string{"LISTEN_FDS", `"x"`}},
	}
	for _, c := range bad {
		n, names, err := ParseListenFDs(c.fds, c.names, true)
		if err == nil {
			t.Errorf("ParseListenFDs(%q, %q) = %d, %q; want an error", c.fds, c.names, n, names)
			continue
		}
		wantErr(t, err, c.parts...)
	}
	// Unset LISTEN_FDNAMES is no names at all, whatever the value argument says.
	if n, names, err := ParseListenFDs("2", "ignored", false); err != nil || n != 2 || names != nil {
		t.Errorf("ParseListenFDs(2, unset) = %d, %q, %v; want 2, nil, nil", n, names, err)
	}
}

func TestParsePID(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{{"1", 1}, {"4194304", 4194304}} {
		if pid, err := ParsePID("LISTEN_PID", c.in); err != nil || pid != c.want {
			t.Errorf("ParsePID(%q) = %d, %v; want %d", c.in, pid, err, c.want)
		}
	}
	for _, c := range []struct {
		in   string
		part string
	}{
		{"", `""`},
		{"abc", `"abc"`},
		{"0", "0"},
		{"-5", "-5"},
		{"+5", `"+5"`},
		{" 5", `" 5"`},
		{"5\n", `"5\n"`},
		{"99999999999999999999", "99999999999999999999"},
	} {
		pid, err := ParsePID("WATCHDOG_PID", c.in)
		if err == nil {
			t.Errorf("ParsePID(%q) = %d; want an error", c.in, pid)
			continue
		}
		wantErr(t, err, "WATCHDOG_PID", c.part)
	}
}

func TestMarkerRoundTrip(t *testing.T) {
	for _, m := range []Marker{
		{PID: 10, PPID: 10, Channel: 4, Generation: 2},
		{PID: 10, PPID: 1, Channel: 7, Generation: 99, Owned: []int{0}},
		{PID: 2147483647, PPID: 2147483647, Channel: 2147483647, Generation: 2147483647, Owned: []int{3, 0, 4095}},
	} {
		s := m.String()
		got, err := ParseMarker(s)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Errorf("ParseMarker(%q) = %+v, %v; want %+v", s, got, err, m)
		}
	}
	if s := (Marker{PID: 1, PPID: 2, Channel: 3, Generation: 4, Owned: []int{0, 2}}).String(); s != "pid=1,ppid=2,chan=3,gen=4,own=0+2" {
		t.Errorf("Marker.String() = %q", s)
	}
	// Field order does not matter.
	m, err := ParseMarker("own=1,gen=3,chan=5,ppid=7,pid=8")
	if want := (Marker{PID: 8, PPID: 7, Channel: 5, Generation: 3, Owned: []int{1}}); err != nil || !reflect.DeepEqual(m, want) {
		t.Errorf("ParseMarker (reordered) = %+v, %v; want %+v", m, err, want)
	}
}

func TestParseMarkerErrors(t *testing.T) {
	const ok = "pid=10,ppid=10,chan=4,gen=2"
	if _, err := ParseMarker(ok); err != nil {
		t.Fatalf("ParseMarker(%q): %v", ok, err)
	}
	for _, c := range []struct {
		in    string
		parts []string // besides HANDOVER_PARENT
	}{
		{"", []string{"empty"}},
		// Missing fields.
		{"ppid=10,chan=4,gen=2", []string{"field pid is missing"}},
		{"pid=10,chan=4,gen=2", []string{"field ppid is missing"}},
		{"pid=10,ppid=10,gen=2", []string{"field chan is missing"}},
		{"pid=10,ppid=10,chan=4", []string{"field gen is missing"}},
		// Unknown and repeated fields.
		{ok + ",color=red", []string{`unknown field "color"`}},
		{ok + ",=1", []string{`unknown field ""`}},
		{ok + ",PID=1", []string{`unknown field "PID"`}},
		{ok + ",pid=10", []string{`field "pid" is repeated`}},
		{ok + ",gen=3", []string{`field "gen" is repeated`}},
		{ok + ",own=0,own=1", []string{`field "own" is repeated`}},
		// Not key=value.
		{ok + ",", []string{`field "" is not key=value`}},
		{"pid", []string{`field "pid" is not key=value`}},
		{ok + ";own=0", []string{`gen="2;own=0"`}},
		// Bad numbers.
		{"pid=abc,ppid=10,chan=4,gen=2", []string{`pid="abc" is not a non-negative number`}},
		{"pid=-1,ppid=10,chan=4,gen=2", []string{`pid="-1"`}},
		{"pid=+1,ppid=10,chan=4,gen=2", []string{`pid="+1"`}},
		{"pid=,ppid=10,chan=4,gen=2", []string{`pid=""`}},
		{"pid= 1,ppid=10,chan=4,gen=2", []string{`pid=" 1"`}},
		{"pid=10,ppid=99999999999999999999,chan=4,gen=2", []string{`ppid="99999999999999999999"`}},
		{"pid=10,ppid=10,chan=4294967299,gen=2", []string{`chan="4294967299"`, "at most 2147483647"}},
		{"pid=10,ppid=10,chan=-0,gen=2", []string{`chan="-0"`}},
		{"pid=0,ppid=10,chan=4,gen=2", []string{"pid=0", "positive"}},
		{"pid=10,ppid=0,chan=4,gen=2", []string{"ppid=0", "positive"}},
		// chan must not be a standard descriptor.
		{"pid=10,ppid=10,chan=0,gen=2", []string{"chan=0", "standard descriptor"}},
		{"pid=10,ppid=10,chan=2,gen=2", []string{"chan=2", "standard descriptor"}},
		// A child is generation 2 or later.
		{"pid=10,ppid=10,chan=4,gen=1", []string{"gen=1", "at least 2"}},
		{"pid=10,ppid=10,chan=4,gen=0", []string{"gen=0", "at least 2"}},
		// The own list.
		{ok + ",own=", []string{`own entry ""`}},
		{ok + ",own=1+", []string{`own entry ""`}},
		{ok + ",own=+1", []string{`own entry ""`}},
		{ok + ",own=a", []string{`own entry "a"`}},
		{ok + ",own=-1", []string{`own entry "-1"`}},
		{ok + ",own=4096", []string{`own entry "4096"`, "0 to 4095"}},
		{ok + ",own=1+1", []string{"own entry 1 is repeated"}},
		{ok + ",own=0:1", []string{`own entry "0:1"`}},
	} {
		m, err := ParseMarker(c.in)
		if err == nil {
			t.Errorf("ParseMarker(%q) = %+v; want an error", c.in, m)
			continue
		}
		parts := append([]string{"HANDOVER_PARENT"}, c.parts...)
		if c.in != "" {
			parts = append(parts, clip(c.in)) // the whole value is quoted for context
		}
		wantErr(t, err, parts...)
	}
	// A long value is clipped in the message.
	long := ok + ",own=" + strings.Repeat("1+", 3000) + "x"
	_, err := ParseMarker(long)
	wantErr(t, err, "HANDOVER_PARENT", "...")
	if len(err.Error()) > 300 {
		t.Errorf("error for a %d-byte marker is %d bytes: %q", len(long), len(err.Error()), err)
	}
}
