package handoff

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Environment variables of the socket-passing protocol. The LISTEN_* variables are
// systemd's (sd_listen_fds(3)); MarkerEnv is handover's own.
const (
	ListenPIDEnv     = "LISTEN_PID"
	ListenFDsEnv     = "LISTEN_FDS"
	ListenFDNamesEnv = "LISTEN_FDNAMES"

	// MarkerEnv is set by a handover parent for the child it starts. A parent cannot
	// set LISTEN_PID to a PID it does not know before fork, so it names itself and the
	// PID the child's parent will have instead; the child adopts LISTEN_FDS only when
	// its real parent matches. Format: "pid=P,ppid=Q,chan=FD,gen=N[,err=FD][,own=I+J]".
	MarkerEnv = "HANDOVER_PARENT"

	// MasterEnv is set by `handover run` for the child it starts, to its own PID.
	// The child adopts LISTEN_FDS as from systemd (the master sets LISTEN_PID through
	// a re-exec shim) and, when its real parent is that PID, leaves upgrades to the
	// master.
	MasterEnv = "HANDOVER_MASTER"

	// GenerationEnv is set by `handover run` for the child it starts: the child's
	// generation (1 for the first child, n+1 for the one that replaces n).
	GenerationEnv = "HANDOVER_GENERATION"
)

// ListenFDsStart is the first passed file descriptor (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS. systemd itself refuses more than this many fds in a
// socket unit plus fd store; a larger number is a corrupt environment, not a request.
const maxListenFDs = 4096

// ParseListenFDs validates systemd's LISTEN_FDS and LISTEN_FDNAMES values and returns
// the number of passed descriptors and their names (nil names when LISTEN_FDNAMES is
// unset). It is what sd_listen_fds_with_names(3) checks, with errors that say what is
// wrong: LISTEN_FDS must be a decimal count from 0 to 4096, and LISTEN_FDNAMES, when
// set, must hold exactly that many colon-separated names.
func ParseListenFDs(fds string, names string, namesSet bool) (int, []string, error) {
	if fds == "" {
		return 0, nil, fmt.Errorf("%s is empty; expected the number of passed file descriptors", ListenFDsEnv)
	}
	n, err := strconv.Atoi(fds)
	if errors.Is(err, strconv.ErrRange) && allDigits(strings.TrimPrefix(fds, "-")) {
		// A number, but beyond int: say how it is wrong rather than that it is not one.
		if fds[0] == '-' {
			return 0, nil, fmt.Errorf("%s=%q is negative; expected the number of passed file descriptors", ListenFDsEnv, clip(fds))
		}
		return 0, nil, fmt.Errorf("%s=%q is larger than %d; the environment is corrupt", ListenFDsEnv, clip(fds), maxListenFDs)
	}
	if err != nil || strings.TrimSpace(fds) != fds || strings.HasPrefix(fds, "+") {
		return 0, nil, fmt.Errorf("%s=%q is not a decimal number of file descriptors", ListenFDsEnv, clip(fds))
	}
	if n < 0 {
		return 0, nil, fmt.Errorf("%s=%d is negative; expected the number of passed file descriptors", ListenFDsEnv, n)
	}
	if n > maxListenFDs {
		return 0, nil, fmt.Errorf("%s=%d is larger than %d; the environment is corrupt", ListenFDsEnv, n, maxListenFDs)
	}
	if !namesSet {
		return n, nil, nil
	}
	var list []string
	if n > 0 || names != "" {
		list = strings.Split(names, ":")
	}
	if len(list) != n {
		return 0, nil, fmt.Errorf("%s has %d names (%q) for %s=%d; the counts must match", ListenFDNamesEnv, len(list), clip(names), ListenFDsEnv, n)
	}
	for i, name := range list {
		if !validName(name) {
			return 0, nil, fmt.Errorf("%s: name %d (%q) has a control character or is longer than 255 bytes", ListenFDNamesEnv, i, clip(name))
		}
	}
	return n, list, nil
}

// ParsePID parses a process ID such as LISTEN_PID or WATCHDOG_PID.
func ParsePID(name, value string) (int, error) {
	pid, err := strconv.Atoi(value)
	if err != nil || strings.TrimSpace(value) != value || strings.HasPrefix(value, "+") {
		return 0, fmt.Errorf("%s=%q is not a process ID", name, clip(value))
	}
	if pid <= 0 {
		return 0, fmt.Errorf("%s=%d is not a valid process ID (must be positive)", name, pid)
	}
	return pid, nil
}

// Marker is what a handover parent tells the child it starts, in MarkerEnv.
type Marker struct {
	// PID is the parent's process ID (the process handing over).
	PID int
	// PPID is the parent process ID the child must see (getppid). It equals PID when
	// the child is a plain child, and the parent's own parent when the child was
	// started as a sibling so that the service manager is its parent.
	PPID int
	// Channel is the descriptor of the child's end of the handover channel.
	Channel int
	// Generation is the child's generation: 1 for a process nobody handed over to.
	Generation int
	// Stderr, if not 0, is the descriptor of the parent's own standard error. Until
	// the handover is confirmed the child's fd 2 is a pipe the parent reads (it keeps
	// the last lines for the report of a failed upgrade and copies them to its own
	// standard error); then the child puts this descriptor back at fd 2.
	Stderr int
	// Owned lists the indexes (0-based, into LISTEN_FDS) of descriptors that this
	// line of processes bound itself, as opposed to receiving them from systemd. Only
	// the owner may unlink a unix socket's file.
	Owned []int
}

// String formats m the way ParseMarker reads it.
func (m Marker) String() string {
	s := fmt.Sprintf("pid=%d,ppid=%d,chan=%d,gen=%d", m.PID, m.PPID, m.Channel, m.Generation)
	if m.Stderr != 0 {
		s += ",err=" + strconv.Itoa(m.Stderr)
	}
	if len(m.Owned) > 0 {
		parts := make([]string, len(m.Owned))
		for i, o := range m.Owned {
			parts[i] = strconv.Itoa(o)
		}
		s += ",own=" + strings.Join(parts, "+")
	}
	return s
}

// ParseMarker parses the value of MarkerEnv. Every field but own is required; an
// unknown or repeated field, a repeated own entry, and a number with a sign or beyond
// 32 bits are errors.
func ParseMarker(s string) (Marker, error) {
	var m Marker
	seen := map[string]bool{}
	if s == "" {
		return m, fmt.Errorf("%s is empty", MarkerEnv)
	}
	for _, field := range strings.Split(s, ",") {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			return m, fmt.Errorf("%s=%q: field %q is not key=value", MarkerEnv, clip(s), clip(field))
		}
		switch key {
		case "pid", "ppid", "chan", "gen", "err", "own":
		default:
			return m, fmt.Errorf("%s=%q: unknown field %q", MarkerEnv, clip(s), clip(key))
		}
		if seen[key] {
			return m, fmt.Errorf("%s=%q: field %q is repeated", MarkerEnv, clip(s), key)
		}
		seen[key] = true
		if key == "own" {
			for _, part := range strings.Split(val, "+") {
				i, ok := parseDecimal(part, maxListenFDs-1)
				if !ok {
					return m, fmt.Errorf("%s=%q: own entry %q is not a descriptor index (0 to %d)", MarkerEnv, clip(s), clip(part), maxListenFDs-1)
				}
				if slices.Contains(m.Owned, i) {
					return m, fmt.Errorf("%s=%q: own entry %d is repeated", MarkerEnv, clip(s), i)
				}
				m.Owned = append(m.Owned, i)
			}
			continue
		}
		// Process IDs and descriptors are 32-bit in the kernel: a larger value would be
		// truncated by a system call into some other descriptor.
		n, ok := parseDecimal(val, math.MaxInt32)
		if !ok {
			return m, fmt.Errorf("%s=%q: %s=%q is not a non-negative number (at most %d)", MarkerEnv, clip(s), key, clip(val), math.MaxInt32)
		}
		switch key {
		case "pid":
			m.PID = n
		case "ppid":
			m.PPID = n
		case "chan":
			m.Channel = n
		case "gen":
			m.Generation = n
		case "err":
			m.Stderr = n
		}
	}
	for _, key := range []string{"pid", "ppid", "chan", "gen"} {
		if !seen[key] {
			return m, fmt.Errorf("%s=%q: field %s is missing", MarkerEnv, clip(s), key)
		}
	}
	switch {
	case m.PID == 0 || m.PPID == 0:
		return m, fmt.Errorf("%s=%q: pid=%d, ppid=%d; both must be positive", MarkerEnv, clip(s), m.PID, m.PPID)
	case m.Channel < ListenFDsStart:
		return m, fmt.Errorf("%s=%q: chan=%d is a standard descriptor; expected %d or above", MarkerEnv, clip(s), m.Channel, ListenFDsStart)
	case m.Generation < 2:
		return m, fmt.Errorf("%s=%q: gen=%d; a child's generation is at least 2", MarkerEnv, clip(s), m.Generation)
	case seen["err"] && m.Stderr < ListenFDsStart:
		return m, fmt.Errorf("%s=%q: err=%d is a standard descriptor; expected %d or above", MarkerEnv, clip(s), m.Stderr, ListenFDsStart)
	case seen["err"] && m.Stderr == m.Channel:
		return m, fmt.Errorf("%s=%q: err=%d is the channel's descriptor", MarkerEnv, clip(s), m.Stderr)
	}
	return m, nil
}

// validName reports whether name can be a systemd file descriptor name: at most 255
// bytes of printable ASCII without a colon (systemd's fdname_is_valid).
func validName(name string) bool {
	if len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < ' ' || c > '~' || c == ':' {
			return false
		}
	}
	return true
}

// parseDecimal parses a non-empty string of ASCII digits no greater than max. Unlike
// strconv.Atoi it refuses signs ("+1", "-0") and surrounding space.
func parseDecimal(s string, max int) (int, bool) {
	if !allDigits(s) {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}

// allDigits reports whether s is non-empty and only ASCII digits.
func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// clip shortens a value quoted in an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
