//go:build linux

package master

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Listen is one -listen NAME=ADDR: a socket the master holds and passes to every child
// under NAME (in LISTEN_FDNAMES).
type Listen struct {
	// Name is the socket's name, as systemd's FileDescriptorName= gives it.
	Name string
	// Network is "tcp", "udp" or "unix".
	Network string
	// Address is host:port for tcp and udp, a path (absolute) or "@abstract" for unix.
	Address string
}

// String returns the flag's form, NAME=ADDR.
func (l Listen) String() string {
	switch l.Network {
	case "unix":
		return l.Name + "=unix:" + l.Address
	case "udp":
		return l.Name + "=udp:" + l.Address
	}
	return l.Name + "=" + l.Address
}

const addrForms = "host:port, [v6]:port, unix:/path or udp:host:port"

// ParseListen parses a -listen value NAME=ADDR, where ADDR is host:port (TCP),
// [v6]:port, unix:/path (or unix:@abstract) or udp:host:port. Errors name what is
// wrong and how to write it.
func ParseListen(s string) (Listen, error) {
	name, addr, ok := strings.Cut(s, "=")
	if !ok {
		return Listen{}, fmt.Errorf("-listen %q: want NAME=ADDR, e.g. http=127.0.0.1:8080 (ADDR is %s)", s, addrForms)
	}
	if err := checkName(name); err != nil {
		return Listen{}, fmt.Errorf("-listen %q: %w", s, err)
	}
	l := Listen{Name: name}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		p := strings.TrimPrefix(addr, "unix:")
		if p == "" {
			return Listen{}, fmt.Errorf("-listen %q: unix: needs a path, e.g. %s=unix:/run/app/%s.sock", s, name, name)
		}
		if !strings.HasPrefix(p, "@") {
			abs, err := filepath.Abs(p)
			if err != nil {
				return Listen{}, fmt.Errorf("-listen %q: %w", s, err)
			}
			p = abs
		}
		if len(p) > 107 {
			return Listen{}, fmt.Errorf("-listen %q: the socket path is %d bytes long; a unix socket path has at most 107", s, len(p))
		}
		if strings.ContainsRune(p, 0) {
			return Listen{}, fmt.Errorf("-listen %q: the path contains a NUL byte", s)
		}
		l.Network, l.Address = "unix", p
	case strings.HasPrefix(addr, "udp:"):
		hp, err := checkHostPort(strings.TrimPrefix(addr, "udp:"))
		if err != nil {
			return Listen{}, fmt.Errorf("-listen %q: %w", s, err)
		}
		l.Network, l.Address = "udp", hp
	default:
		hp, err := checkHostPort(strings.TrimPrefix(addr, "tcp:"))
		if err != nil {
			return Listen{}, fmt.Errorf("-listen %q: %w", s, err)
		}
		l.Network, l.Address = "tcp", hp
	}
	return l, nil
}

// checkName checks a socket name as LISTEN_FDNAMES carries it (and as a flag may
// write it: without spaces).
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("the NAME before = is empty; name the socket, e.g. http=127.0.0.1:8080")
	case len(name) > 255:
		return fmt.Errorf("the name is %d bytes long; at most 255", len(name))
	case name == handoff.ControlName:
		return fmt.Errorf("the name %q is reserved for the control socket (use -control PATH)", name)
	case !handoff.ValidName(name) || strings.Contains(name, " "):
		return fmt.Errorf("the name %q may hold only printable ASCII characters without spaces or ':' (LISTEN_FDNAMES separates names with ':')", name)
	}
	return nil
}

// checkHostPort checks host:port and returns it unchanged.
func checkHostPort(hp string) (string, error) {
	if hp == "" {
		return "", fmt.Errorf("empty address; want %s", addrForms)
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		var ae *net.AddrError
		switch {
		case errors.As(err, &ae) && ae.Err == "missing port in address":
			return "", fmt.Errorf("address %q has no port; want %s", hp, addrForms)
		case errors.As(err, &ae) && ae.Err == "too many colons in address":
			return "", fmt.Errorf("address %q: put an IPv6 address in brackets, e.g. [::1]:8080", hp)
		}
		return "", fmt.Errorf("address %q: %v; want %s", hp, err, addrForms)
	}
	n, err := strconv.Atoi(port)
	if err != nil || strings.HasPrefix(port, "+") || strings.HasPrefix(port, "-") {
		return "", fmt.Errorf("address %q: the port %q is not a number", hp, port)
	}
	if n < 1 || n > 65535 {
		return "", fmt.Errorf("address %q: port %d is out of range (1-65535; 0 would pick a random port that clients cannot know)", hp, n)
	}
	if strings.ContainsAny(host, " \t/") {
		return "", fmt.Errorf("address %q: %q is not a host name or IP address", hp, host)
	}
	return hp, nil
}

// CheckListens checks a whole set of -listen flags: no name or address twice.
func CheckListens(ls []Listen) error {
	names := map[string]bool{}
	addrs := map[string]string{}
	for _, l := range ls {
		if names[l.Name] {
			return fmt.Errorf("-listen: the name %q is given twice; each socket needs its own name", l.Name)
		}
		names[l.Name] = true
		key := l.Network + " " + l.Address
		if other, ok := addrs[key]; ok {
			return fmt.Errorf("-listen: %s and %s name the same address", other, l)
		}
		addrs[key] = l.String()
	}
	return nil
}
