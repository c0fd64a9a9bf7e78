package handoff

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

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
		return 0, nil, fmt.Errorf("%s=%q is larger than %d; the environment is corrupt", ListenFDsEnv, clip(fds), MaxListenFDs)
	}
	if err != nil || strings.TrimSpace(fds) != fds || strings.HasPrefix(fds, "+") {
		return 0, nil, fmt.Errorf("%s=%q is not a decimal number of file descriptors", ListenFDsEnv, clip(fds))
	}
	if n < 0 {
		return 0, nil, fmt.Errorf("%s=%d is negative; expected the number of passed file descriptors", ListenFDsEnv, n)
	}
	if n > MaxListenFDs {
		return 0, nil, fmt.Errorf("%s=%d is larger than %d; the environment is corrupt", ListenFDsEnv, n, MaxListenFDs)
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
		if !ValidName(name) {
			return 0, nil, fmt.Errorf("%s: name %d (%q) has a control character or is longer than 255 bytes", ListenFDNamesEnv, i, clip(name))
		}
	}
	return n, list, nil
}

// ParsePID parses the value of variable name, a process ID (LISTEN_PID,
// HANDOVER_MASTER).
func ParsePID(name, value string) (int, error) { return parsePositive(name, value, "a process ID") }

// ParseGeneration parses the value of variable name, a generation number
// (HANDOVER_GENERATION: 1 for the first process of a line, n+1 for one started by
// n).
func ParseGeneration(name, value string) (int, error) {
	return parsePositive(name, value, "a generation number")
}

// parsePositive parses a positive decimal number, what, held in variable name.
func parsePositive(name, value, what string) (int, error) {
	n, err := strconv.Atoi(value)
	if err != nil || strings.TrimSpace(value) != value || strings.HasPrefix(value, "+") {
		return 0, fmt.Errorf("%s=%q is not %s", name, clip(value), what)
	}
	if n <= 0 {
		return 0, fmt.Errorf("%s=%d is not a valid %s (must be positive)", name, n, strings.TrimPrefix(what, "a "))
	}
	return n, nil
}

// ValidName reports whether name can be a systemd file descriptor name: at most 255
// bytes of printable ASCII without a colon (systemd's fdname_is_valid).
func ValidName(name string) bool {
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
