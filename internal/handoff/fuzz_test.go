package handoff

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseListenFDs: ParseListenFDs never panics, every error names the variable
// it is about, and a successful parse is within bounds and reads back the same from
// its canonical form. Seeds: testdata/fuzz/FuzzParseListenFDs.
func FuzzParseListenFDs(f *testing.F) {
	f.Add("1", "http", true)
	f.Add("0", "", true)
	f.Add("3", "a::b", true)
	f.Add("2", "", false)
	f.Fuzz(func(t *testing.T, fds, names string, namesSet bool) {
		n, list, err := ParseListenFDs(fds, names, namesSet)
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, ListenFDsEnv) && !strings.HasPrefix(msg, ListenFDNamesEnv) {
				t.Fatalf("ParseListenFDs(%q, %q, %v): error %q does not start with the variable it is about", fds, names, namesSet, msg)
			}
			if n != 0 || list != nil {
				t.Fatalf("ParseListenFDs(%q, %q, %v): error %q with results %d, %q", fds, names, namesSet, msg, n, list)
			}
			return
		}
		if n < 0 || n > MaxListenFDs {
			t.Fatalf("ParseListenFDs(%q, ...) = %d, out of range", fds, n)
		}
		if !namesSet && list != nil {
			t.Fatalf("ParseListenFDs(%q, %q, false) = names %q; want nil when LISTEN_FDNAMES is unset", fds, names, list)
		}
		if namesSet && len(list) != n {
			t.Fatalf("ParseListenFDs(%q, %q, true) = %d with %d names", fds, names, n, len(list))
		}
		for _, name := range list {
			if !ValidName(name) {
				t.Fatalf("ParseListenFDs(%q, %q, true) accepted name %q", fds, names, name)
			}
		}
		n2, list2, err := ParseListenFDs(strconv.Itoa(n), strings.Join(list, ":"), namesSet)
		if err != nil || n2 != n || !reflect.DeepEqual(list2, list) {
			t.Fatalf("ParseListenFDs(%q, %q) = %d, %q; its canonical form reads back as %d, %q, %v", fds, names, n, list, n2, list2, err)
		}
	})
}

// FuzzParseMarker: ParseMarker never panics, every error names the variable, and a
// successful parse is valid and re-serializes with Marker.String to a value that
// parses to the same Marker (and serializes to the same string). Seeds:
// testdata/fuzz/FuzzParseMarker.
func FuzzParseMarker(f *testing.F) {
	f.Add("pid=10,ppid=10,chan=4,gen=2")
	f.Add("pid=10,ppid=1,chan=7,gen=3,own=0+2")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMarker(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), MarkerEnv) {
				t.Fatalf("ParseMarker(%q): error %q does not start with %s", s, err, MarkerEnv)
			}
			return
		}
		if m.PID <= 0 || m.PPID <= 0 || m.Channel < ListenFDsStart || m.Generation < 2 {
			t.Fatalf("ParseMarker(%q) accepted %+v", s, m)
		}
		seen := map[int]bool{}
		for _, o := range m.Owned {
			if o < 0 || o >= MaxListenFDs || seen[o] {
				t.Fatalf("ParseMarker(%q) accepted own list %v", s, m.Owned)
			}
			seen[o] = true
		}
		out := m.String()
		m2, err := ParseMarker(out)
		if err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("ParseMarker(%q) = %+v; String() = %q parses to %+v, %v", s, m, out, m2, err)
		}
		if out2 := m2.String(); out2 != out {
			t.Fatalf("ParseMarker(%q): String() = %q, then %q", s, out, out2)
		}
	})
}

// FuzzParsePID: ParsePID (LISTEN_PID, WATCHDOG_PID) never panics, every error names
// the variable, and a success is a positive PID that reads back from its decimal form.
// Seeds: testdata/fuzz/FuzzParsePID.
func FuzzParsePID(f *testing.F) {
	f.Add("1")
	f.Add("4242")
	f.Fuzz(func(t *testing.T, s string) {
		pid, err := ParsePID(ListenPIDEnv, s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), ListenPIDEnv) {
				t.Fatalf("ParsePID(%q): error %q does not start with %s", s, err, ListenPIDEnv)
			}
			if pid != 0 {
				t.Fatalf("ParsePID(%q): error %q with PID %d", s, err, pid)
			}
			return
		}
		if pid <= 0 {
			t.Fatalf("ParsePID(%q) = %d", s, pid)
		}
		if pid2, err := ParsePID(ListenPIDEnv, strconv.Itoa(pid)); err != nil || pid2 != pid {
			t.Fatalf("ParsePID(%q) = %d, but %d reads back as %d, %v", s, pid, pid, pid2, err)
		}
	})
}
