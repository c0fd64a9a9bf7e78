package fds

import (
	"fmt"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// skipOrFail skips the test, or fails it when $CI is set, so that CI never skips a
// test silently. (The tests/internal/sdns.SkipOrFail of the end-to-end tests, which
// this package cannot import.)
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (CI is set, so this is a failure, not a skip)", args...)
	}
	t.Skipf(format, args...)
}

// newSocket creates a socket in the test process, bound to address (port 0 picks
// one) and listening if listen is set, and returns it with the address it is bound
// to as Go prints it. network is tcp4, tcp6, udp4, udp6 or unix.
func newSocket(t *testing.T, network, address string, listen bool) (*os.File, string) {
	t.Helper()
	var family, typ int
	var sa unix.Sockaddr
	switch network {
	case "tcp4", "tcp6", "udp4", "udp6":
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			t.Fatal(err)
		}
		var p int
		fmt.Sscan(port, &p)
		ip := net.ParseIP(host)
		if strings.HasSuffix(network, "4") {
			family = unix.AF_INET
			s := &unix.SockaddrInet4{Port: p}
			copy(s.Addr[:], ip.To4())
			sa = s
		} else {
			family = unix.AF_INET6
			s := &unix.SockaddrInet6{Port: p}
			copy(s.Addr[:], ip.To16())
			sa = s
		}
		typ = unix.SOCK_STREAM
		if strings.HasPrefix(network, "udp") {
			typ = unix.SOCK_DGRAM
		}
	case "unix":
		family, typ, sa = unix.AF_UNIX, unix.SOCK_STREAM, &unix.SockaddrUnix{Name: address}
	default:
		t.Fatalf("newSocket: network %q", network)
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), network+" "+address)
	t.Cleanup(func() { f.Close() })
	if err := unix.Bind(fd, sa); err != nil {
		if family == unix.AF_INET6 {
			skipOrFail(t, "IPv6 loopback unavailable: bind %s: %v", address, err)
		}
		t.Fatalf("bind %s %s: %v", network, address, err)
	}
	if listen {
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return f, sockaddrToAddr(got, typ).String()
}

// socketDir returns a short directory for unix sockets (sun_path holds 108 bytes).
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "act")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// passed is what the test process passes a helper.
type passed struct {
	files []*os.File // at fd 3, 4, ...; nil leaves that fd closed
	names []string   // LISTEN_FDNAMES; nil leaves it unset
	own   []int      // the marker's own list (Parent only)
	fds   string     // LISTEN_FDS if not len(files)
	env   []string   // more variables
}

// baseEnv is the test's environment without the protocol's variables.
func baseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if len(protocolVars([]string{kv})) == 0 {
			out = append(out, kv)
		}
	}
	return out
}

// runHelper starts a helper with p passed as from source (Bound: the descriptors
// without any variable) and returns its result. Systemd: LISTEN_FDS and
// LISTEN_FDNAMES, and the helper sets LISTEN_PID to itself. Parent: the same plus the
// marker naming the test process as the parent, and a channel after the sockets.
func runHelper(t *testing.T, source Source, p passed, spec helperSpec) *helperResult {
	t.Helper()
	env := append(baseEnv(), p.env...)
	files := slices.Clone(p.files)
	if source != Bound {
		fds := p.fds
		if fds == "" {
			fds = fmt.Sprint(len(p.files))
		}
		env = append(env, handoff.ListenFDsEnv+"="+fds)
		if p.names != nil {
			env = append(env, handoff.ListenFDNamesEnv+"="+strings.Join(p.names, ":"))
		}
	}
	switch source {
	case Systemd:
		spec.Systemd = true
	case Parent:
		ours, theirs, err := channelPair()
		if err != nil {
			t.Fatal(err)
		}
		defer ours.Close()
		defer theirs.Close()
		m := handoff.Marker{PID: os.Getpid(), PPID: os.Getpid(), Channel: handoff.ListenFDsStart + len(files), Generation: 2, Owned: p.own}
		env = append(env, handoff.MarkerEnv+"="+m.String())
		files = append(files, theirs)
	}
	res, err := startHelper(specEnv(env, spec), files, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// mustContain fails t unless s contains every one of parts.
func mustContain(t *testing.T, what, s string, parts ...string) {
	t.Helper()
	if s == "" {
		t.Errorf("%s is empty; want it to mention %q", what, parts)
		return
	}
	for _, p := range parts {
		if !strings.Contains(s, p) {
			t.Errorf("%s %q does not mention %q", what, s, p)
		}
	}
}

// checkClaim fails t unless claim i of res got addr from source and served on it.
func checkClaim(t *testing.T, res *helperResult, i int, addr string, source string) {
	t.Helper()
	if res.InheritErr != "" {
		t.Fatalf("Inherit: %s", res.InheritErr)
	}
	if i >= len(res.Claims) {
		t.Fatalf("claim %d: only %d claims made", i, len(res.Claims))
	}
	c := res.Claims[i]
	switch {
	case c.Err != "":
		t.Errorf("claim %d: %s", i, c.Err)
	case addr != "" && c.Addr != addr:
		t.Errorf("claim %d got a socket on %s, want the passed one on %s", i, c.Addr, addr)
	case c.Source != source:
		t.Errorf("claim %d: source %s, want %s", i, c.Source, source)
	case c.ServeErr != "":
		t.Errorf("claim %d on %s did not serve: %s", i, c.Addr, c.ServeErr)
	}
}

// TestActivationTCPByName: a TCP listener passed with a name is claimed by that name,
// whatever address the caller would otherwise bind, from systemd or from a parent.
func TestActivationTCPByName(t *testing.T) {
	for _, src := range []Source{Systemd, Parent} {
		t.Run(src.String(), func(t *testing.T) {
			f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
			res := runHelper(t, src, passed{files: []*os.File{f}, names: []string{"http"}}, helperSpec{
				Claims: []claim{
					{Name: "http", Network: "tcp", Address: "127.0.0.1:1"},
					{Name: "http", Network: "tcp", Address: "127.0.0.1:1"},
				},
			})
			checkClaim(t, res, 0, addr, src.String())
			want := helperFile{Fd: 3, Name: "http", Source: src.String(), Kind: "listening TCP/IPv4 socket on " + addr}
			if len(res.Files) != 1 || res.Files[0] != want {
				t.Errorf("files %+v, want [%+v]", res.Files, want)
			}
			mustContain(t, "second claim", res.Claims[1].Err, `listener "http"`, "fd 3", "already claimed")
			if src == Parent && res.Marker != fmt.Sprintf("pid=%d,ppid=%d,chan=4,gen=2", os.Getpid(), os.Getpid()) {
				t.Errorf("marker %q", res.Marker)
			}
		})
	}
}

// TestActivationTCPByAddress: a passed socket without a name (or with another name)
// is claimed by the address it is bound to.
func TestActivationTCPByAddress(t *testing.T) {
	for _, src := range []Source{Systemd, Parent} {
		t.Run(src.String(), func(t *testing.T) {
			a, addrA := newSocket(t, "tcp4", "127.0.0.1:0", true)
			b, addrB := newSocket(t, "tcp4", "127.0.0.1:0", true)
			res := runHelper(t, src, passed{files: []*os.File{a, b}, names: []string{"unknown", "admin"}}, helperSpec{
				Claims: []claim{
					{Name: "", Network: "tcp", Address: addrB},
					{Name: "web", Network: "tcp4", Address: addrA},
				},
				CloseUnclaimed: true,
			})
			checkClaim(t, res, 0, addrB, src.String())
			checkClaim(t, res, 1, addrA, src.String())
			if len(res.Files) != 2 || res.Files[0].Name != "" || res.Files[1].Name != "admin" {
				t.Errorf("files %+v; want names \"\" (unknown) and admin", res.Files)
			}
			if len(res.Unclaimed) != 0 {
				t.Errorf("CloseUnclaimed closed %v; everything was claimed", res.Unclaimed)
			}
		})
	}
}

// TestActivationSingleUnnamed: the only stream socket systemd passed without a name
// of its own serves a listener asked for by another name, also when a parent passes
// it on; a socket the line bound itself does not (the process binds instead).
func TestActivationSingleUnnamed(t *testing.T) {
	for _, names := range [][]string{nil, {"unknown"}, {"demo.socket"}} {
		t.Run(fmt.Sprintf("systemd names %q", names), func(t *testing.T) {
			f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
			res := runHelper(t, Systemd, passed{files: []*os.File{f}, names: names}, helperSpec{
				Claims: []claim{{Name: "http", Network: "tcp", Address: "127.0.0.1:0"}},
			})
			checkClaim(t, res, 0, addr, "systemd")
		})
	}
	t.Run("systemd, named otherwise", func(t *testing.T) {
		f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
		res := runHelper(t, Systemd, passed{files: []*os.File{f}, names: []string{"admin"}}, helperSpec{
			Claims:         []claim{{Name: "http", Network: "tcp", Address: "127.0.0.1:0"}},
			CloseUnclaimed: true,
		})
		checkClaim(t, res, 0, "", "bound")
		if res.Claims[0].Addr == addr {
			t.Errorf("a socket named admin served listener http")
		}
		if !slices.Equal(res.Unclaimed, []int{3}) {
			t.Errorf("CloseUnclaimed closed %v, want [3]", res.Unclaimed)
		}
	})
	// A parent passes on systemd's unnamed socket (not its own: no "own" entry) as
	// systemd did: the single one serves the listener asked for, whatever its
	// address (the socket unit's). A socket the line bound itself is matched by
	// address only.
	t.Run("parent, systemd's socket passed on", func(t *testing.T) {
		f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
		res := runHelper(t, Parent, passed{files: []*os.File{f}, names: []string{"unknown"}}, helperSpec{
			Claims: []claim{{Name: "", Network: "tcp", Address: ":8080"}},
		})
		checkClaim(t, res, 0, addr, "parent")
	})
	t.Run("parent, its own socket", func(t *testing.T) {
		f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
		res := runHelper(t, Parent, passed{files: []*os.File{f}, names: []string{"unknown"}, own: []int{0}}, helperSpec{
			Claims: []claim{{Name: "http", Network: "tcp", Address: "127.0.0.1:0"}},
		})
		checkClaim(t, res, 0, "", "bound")
		if res.Claims[0].Addr == addr {
			t.Errorf("a parent's own unnamed socket on %s served listener http at another address", addr)
		}
	})
	t.Run("systemd, two unnamed", func(t *testing.T) {
		a, _ := newSocket(t, "tcp4", "127.0.0.1:0", true)
		b, _ := newSocket(t, "tcp4", "127.0.0.1:0", true)
		res := runHelper(t, Systemd, passed{files: []*os.File{a, b}}, helperSpec{
			Claims: []claim{{Name: "http", Network: "tcp", Address: "127.0.0.1:0"}},
		})
		mustContain(t, "claim error", res.Claims[0].Err, `listener "http"`, "several passed sockets", "fd 3", "fd 4")
	})
}

// TestActivationWrongKind: a passed descriptor that cannot serve what is asked for is
// an error naming the descriptor, what it is and what was expected.
func TestActivationWrongKind(t *testing.T) {
	regular, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	udp, udpAddr := newSocket(t, "udp4", "127.0.0.1:0", false)
	idle, idleAddr := newSocket(t, "tcp4", "127.0.0.1:0", false)
	v6, v6Addr := newSocket(t, "tcp6", "[::1]:0", true)
	for _, c := range []struct {
		name  string
		file  *os.File
		claim claim
		parts []string
	}{
		{"regular file", regular, claim{Name: "http", Network: "tcp", Address: "127.0.0.1:0"},
			[]string{"fd 3", "regular file", "expected a listening TCP socket"}},
		{"UDP for TCP", udp, claim{Name: "http", Network: "tcp", Address: "127.0.0.1:0"},
			[]string{"fd 3", "UDP/IPv4 socket on " + udpAddr, "expected a listening TCP socket"}},
		{"TCP not listening", idle, claim{Name: "http", Network: "tcp", Address: "127.0.0.1:0"},
			[]string{"fd 3", "non-listening", "TCP/IPv4 socket on " + idleAddr, "expected a listening TCP socket"}},
		{"IPv6 for tcp4", v6, claim{Name: "http", Network: "tcp4", Address: "127.0.0.1:0"},
			[]string{"fd 3", "TCP/IPv6 socket on " + v6Addr, "expected a listening TCP/IPv4 socket"}},
		{"TCP for UDP", v6, claim{Name: "http", Network: "udp", Address: "127.0.0.1:0", Packet: true},
			[]string{"fd 3", "listening TCP/IPv6 socket", "expected UDP socket"}},
		{"TCP for unix", v6, claim{Name: "http", Network: "unix", Address: "/nonexistent/x.sock"},
			[]string{"fd 3", "listening TCP/IPv6 socket", "expected a listening unix stream socket"}},
	} {
		for _, names := range [][]string{{"http"}, nil} {
			t.Run(fmt.Sprintf("%s, names %q", c.name, names), func(t *testing.T) {
				res := runHelper(t, Systemd, passed{files: []*os.File{c.file}, names: names}, helperSpec{Claims: []claim{c.claim}})
				if res.InheritErr != "" {
					t.Fatalf("Inherit: %s (a descriptor is validated when claimed, not before)", res.InheritErr)
				}
				mustContain(t, "claim error", res.Claims[0].Err, append([]string{`listener "http"`}, c.parts...)...)
			})
		}
	}
}

// TestActivationMissingFD: LISTEN_FDS counting a descriptor that was not passed makes
// Inherit fail, naming it. In a Go process the runtime may have opened its cgroup CPU
// limit files at the lowest free descriptors, right after the passed ones; with
// GODEBUG=containermaxprocs=0 it closes them again before main, leaving the gap.
func TestActivationMissingFD(t *testing.T) {
	for _, runtimeFDs := range []bool{false, true} {
		for _, src := range []Source{Systemd, Parent} {
			t.Run(fmt.Sprintf("%s, runtime fds %v", src, runtimeFDs), func(t *testing.T) {
				f, _ := newSocket(t, "tcp4", "127.0.0.1:0", true)
				p := passed{files: []*os.File{f, nil}, names: []string{"http", "admin"}}
				if !runtimeFDs {
					p.env = []string{godebug("containermaxprocs=0")}
				}
				res := runHelper(t, src, p, helperSpec{})
				parts := []string{"LISTEN_FDS=2", "fd 4", `"admin"`}
				switch st := res.FDsBefore[4]; {
				case st == "closed":
					parts = append(parts, "bad file descriptor")
				case runtimeFDs:
					parts = append(parts, "/sys/fs/cgroup/", "Go runtime", "fd 4 was not passed")
				default:
					t.Fatalf("fd 4 is %s in the helper before Inherit; the test needs it closed", st)
				}
				mustContain(t, "Inherit error", res.InheritErr, parts...)
			})
		}
	}
	t.Run("count beyond the files", func(t *testing.T) {
		f, _ := newSocket(t, "tcp4", "127.0.0.1:0", true)
		res := runHelper(t, Systemd, passed{files: []*os.File{f}, fds: "2", env: []string{godebug("containermaxprocs=0")}}, helperSpec{})
		if res.FDsBefore[4] != "closed" {
			t.Fatalf("fd 4 is %s in the helper before Inherit; the test needs it closed", res.FDsBefore[4])
		}
		mustContain(t, "Inherit error", res.InheritErr, "LISTEN_FDS=2", "fd 4", "bad file descriptor")
	})
}

// godebug returns GODEBUG with setting added to the test's own.
func godebug(setting string) string {
	if cur := os.Getenv("GODEBUG"); cur != "" {
		return "GODEBUG=" + cur + "," + setting
	}
	return "GODEBUG=" + setting
}

// TestActivationIPv6: a TCP listener on [::1] is claimed by name and by address.
func TestActivationIPv6(t *testing.T) {
	a, addrA := newSocket(t, "tcp6", "[::1]:0", true)
	b, addrB := newSocket(t, "tcp6", "[::1]:0", true)
	res := runHelper(t, Systemd, passed{files: []*os.File{a, b}, names: []string{"v6", "unknown"}}, helperSpec{
		Claims: []claim{
			{Name: "v6", Network: "tcp6", Address: "[::1]:1"},
			{Name: "other", Network: "tcp", Address: addrB},
		},
	})
	checkClaim(t, res, 0, addrA, "systemd")
	checkClaim(t, res, 1, addrB, "systemd")
}

// TestActivationUnix: a unix stream socket is claimed by its path; closing it unlinks
// the file only when this line of processes created it (the marker's own list), never
// when systemd did.
func TestActivationUnix(t *testing.T) {
	for _, c := range []struct {
		name   string
		src    Source
		own    []int
		unlink bool
	}{
		{"systemd", Systemd, nil, false},
		{"parent, not owned", Parent, nil, false},
		{"parent, owned", Parent, []int{0}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(socketDir(t), "s.sock")
			f, addr := newSocket(t, "unix", path, true)
			if addr != path {
				t.Fatalf("socket bound to %q, want %q", addr, path)
			}
			res := runHelper(t, c.src, passed{files: []*os.File{f}, names: []string{"unknown"}, own: c.own}, helperSpec{
				Claims:       []claim{{Network: "unix", Address: path}},
				CloseClaimed: true,
			})
			checkClaim(t, res, 0, path, c.src.String())
			if len(res.Files) != 1 || res.Files[0].Owned != c.unlink {
				t.Errorf("files %+v; want one with Owned %v", res.Files, c.unlink)
			}
			exists, reported := res.Exists[path]
			if !reported {
				t.Fatalf("the helper did not report on %s: %+v", path, res.Exists)
			}
			if exists == c.unlink {
				t.Errorf("after the helper closed its listener, %s exists: %v; want %v", path, exists, !c.unlink)
			}
		})
	}
}

// TestActivationUDP: a UDP socket is claimed with ListenPacket, by name and by
// address; Listen refuses a datagram network.
func TestActivationUDP(t *testing.T) {
	for _, src := range []Source{Systemd, Parent} {
		t.Run(src.String(), func(t *testing.T) {
			a, addrA := newSocket(t, "udp4", "127.0.0.1:0", false)
			b, addrB := newSocket(t, "udp6", "[::1]:0", false)
			res := runHelper(t, src, passed{files: []*os.File{a, b}, names: []string{"dns", "unknown"}}, helperSpec{
				Claims: []claim{
					{Name: "dns", Network: "udp", Address: "127.0.0.1:1", Packet: true},
					{Name: "", Network: "udp6", Address: addrB, Packet: true},
					{Name: "x", Network: "udp", Address: addrA},
				},
			})
			checkClaim(t, res, 0, addrA, src.String())
			checkClaim(t, res, 1, addrB, src.String())
			mustContain(t, "Listen udp error", res.Claims[2].Err, "datagram network", "ListenPacket")
		})
	}
}

// TestActivationSharedName: systemd gives every socket of a unit one name, so a TCP
// and a UDP socket may both be "dns": each claim gets the one that can serve it.
func TestActivationSharedName(t *testing.T) {
	udp, udpAddr := newSocket(t, "udp4", "127.0.0.1:0", false)
	tcp, tcpAddr := newSocket(t, "tcp4", "127.0.0.1:0", true)
	tcp2, tcp2Addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
	res := runHelper(t, Systemd, passed{files: []*os.File{udp, tcp, tcp2}, names: []string{"dns", "dns", "dns"}}, helperSpec{
		Claims: []claim{
			{Name: "dns", Network: "tcp", Address: tcp2Addr},       // the one bound there
			{Name: "dns", Network: "tcp", Address: "127.0.0.1:53"}, // the remaining one
			{Name: "dns", Network: "tcp", Address: "127.0.0.1:53"}, // none left
			{Name: "dns", Network: "udp", Address: "127.0.0.1:53", Packet: true},
			{Name: "dns", Network: "udp", Address: "127.0.0.1:53", Packet: true},
		},
	})
	checkClaim(t, res, 0, tcp2Addr, "systemd")
	checkClaim(t, res, 1, tcpAddr, "systemd")
	mustContain(t, "third claim", res.Claims[2].Err, `listener "dns"`,
		`fd 3 ("dns", from systemd) cannot be used: it is a UDP/IPv4 socket on `+udpAddr+"; expected a listening TCP socket",
		`fd 4 ("dns", from systemd) was already claimed`, `fd 5 ("dns", from systemd) was already claimed`)
	checkClaim(t, res, 3, udpAddr, "systemd")
	mustContain(t, "fifth claim", res.Claims[4].Err, `listener "dns"`, "fd 3", "fd 4", "fd 5", "already claimed")
}

// TestActivationEnvCleared: after Inherit the protocol's variables are gone, and a
// program the process runs inherits neither them nor any descriptor beyond 0-2.
func TestActivationEnvCleared(t *testing.T) {
	for _, src := range []Source{Systemd, Parent} {
		t.Run(src.String(), func(t *testing.T) {
			a, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
			b, _ := newSocket(t, "udp4", "127.0.0.1:0", false) // passed, never claimed
			res := runHelper(t, src, passed{files: []*os.File{a, b}, names: []string{"http", "dns"}}, helperSpec{
				Claims: []claim{{Name: "http", Network: "tcp", Address: addr}},
				Shell:  true,
			})
			checkClaim(t, res, 0, addr, src.String())
			if len(res.Env) != 0 {
				t.Errorf("after Inherit the environment still has %q", res.Env)
			}
			if len(res.ShellEnv) != 0 {
				t.Errorf("a program run after Inherit has %q in its environment", res.ShellEnv)
			}
			if !slices.Equal(res.ShellFDs, []string{"0", "1", "2"}) {
				t.Errorf("a program run after Inherit has descriptors %q, want 0 1 2", res.ShellFDs)
			}
			for fd := 3; fd <= 5; fd++ {
				if st := res.FDsAfter[fd]; st == "inherit" {
					t.Errorf("fd %d is not close-on-exec after Inherit", fd)
				}
			}
		})
	}
}

// TestActivationStrayFD: a descriptor at fd 3 without the variables that describe it
// (none at all, or a stale LISTEN_FDS without LISTEN_PID) is not adopted, and is
// close-on-exec afterwards so no program the process runs inherits it.
func TestActivationStrayFD(t *testing.T) {
	for _, c := range []struct {
		name    string
		env     []string
		ignored string // what Ignored() must say; "" for nothing
	}{
		{"no variables", nil, ""},
		{"LISTEN_FDS only", []string{handoff.ListenFDsEnv + "=1", handoff.ListenFDNamesEnv + "=http"}, "LISTEN_FDS is set but LISTEN_PID is not"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, addr := newSocket(t, "tcp4", "127.0.0.1:0", true)
			spec := helperSpec{Claims: []claim{{Name: "http", Network: "tcp", Address: addr}}, Shell: true}
			res, err := startHelper(specEnv(append(baseEnv(), c.env...), spec), []*os.File{f}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.FDsBefore[3] != "inherit" {
				t.Fatalf("fd 3 is %s in the helper before Inherit; the test needs it open without close-on-exec", res.FDsBefore[3])
			}
			if res.InheritErr != "" || res.Source != "bound" || len(res.Files) != 0 {
				t.Errorf("Inherit: source %s, files %+v, err %q; want nothing adopted", res.Source, res.Files, res.InheritErr)
			}
			if c.ignored == "" && res.Ignored != "" {
				t.Errorf("Ignored() = %q; nothing described a descriptor", res.Ignored)
			}
			if c.ignored != "" {
				mustContain(t, "Ignored()", res.Ignored, c.ignored)
			}
			if res.FDsAfter[3] != "cloexec" {
				t.Errorf("fd 3 is %s after Inherit, want cloexec", res.FDsAfter[3])
			}
			if slices.Contains(res.ShellFDs, "3") || len(res.ShellEnv) != 0 {
				t.Errorf("a program run after Inherit has descriptors %q, variables %q", res.ShellFDs, res.ShellEnv)
			}
			// The stray socket was not used: binding its address fails, since the
			// stray socket is still bound there.
			mustContain(t, "claim error", res.Claims[0].Err, "address already in use")
		})
	}
}

// TestActivationIgnoredLISTENPID: descriptors for another PID are not adopted, the
// reason is given, and they are close-on-exec afterwards.
func TestActivationIgnoredLISTENPID(t *testing.T) {
	f, _ := newSocket(t, "tcp4", "127.0.0.1:0", true)
	env := append(baseEnv(), handoff.ListenPIDEnv+"=1", handoff.ListenFDsEnv+"=1")
	res, err := startHelper(specEnv(env, helperSpec{Shell: true}), []*os.File{f}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.InheritErr != "" || res.Source != "bound" || len(res.Files) != 0 {
		t.Errorf("Inherit: source %s, files %+v, err %q; want nothing adopted", res.Source, res.Files, res.InheritErr)
	}
	mustContain(t, "Ignored()", res.Ignored, "LISTEN_PID=1", fmt.Sprintf("(%d)", res.PID))
	if res.FDsAfter[3] != "cloexec" || len(res.Env) != 0 || len(res.ShellEnv) != 0 || slices.Contains(res.ShellFDs, "3") {
		t.Errorf("fd 3 %s, env %q, program env %q, program fds %q; want cloexec and nothing passed on", res.FDsAfter[3], res.Env, res.ShellEnv, res.ShellFDs)
	}
}

// TestActivationRoundTrip: the descriptors and environment ForChild and Child.Env
// build are adopted by the child, which passes them on the same way to a grandchild:
// same sockets, same names, the own list carried along, the generation counted up.
func TestActivationRoundTrip(t *testing.T) {
	s := &Set{}
	dir := socketDir(t)
	path := filepath.Join(dir, "own.sock")
	ln, err := s.Listen("http", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	uln, err := s.Listen("sock", "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	pc, err := s.ListenPacket("", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := s.ForChild()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Files) != 3 || !slices.Equal(c.Names, []string{"http", "sock", ""}) || !slices.Equal(c.Owned, []int{0, 1, 2}) {
		t.Fatalf("ForChild: %d files, names %q, owned %v", len(c.Files), c.Names, c.Owned)
	}
	claims := []claim{
		{Name: "http", Network: "tcp", Address: "127.0.0.1:1"},
		{Name: "sock", Network: "unix", Address: filepath.Join(dir, "other.sock")},
		{Name: "", Network: "udp", Address: pc.LocalAddr().String(), Packet: true},
	}
	spec := helperSpec{
		Claims: claims,
		Child:  &helperSpec{Claims: claims, CloseClaimed: true},
	}
	env := c.Env(append(baseEnv(), handoff.ListenPIDEnv+"=1", handoff.MarkerEnv+"=stale"), handoff.Marker{PID: os.Getpid(), PPID: os.Getpid(), Channel: 6, Generation: 2})
	if got := protocolVars(env); !slices.Equal(got, []string{
		"LISTEN_FDS=3",
		"LISTEN_FDNAMES=http:sock:unknown",
		fmt.Sprintf("HANDOVER_PARENT=pid=%d,ppid=%d,chan=6,gen=2,own=0+1+2", os.Getpid(), os.Getpid()),
	}) {
		t.Errorf("Child.Env: %q", got)
	}
	ours, theirs, err := channelPair()
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	res, err := startHelper(specEnv(env, spec), append(slices.Clone(c.Files), theirs), func() { theirs.Close() })
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{ln.Addr().String(), path, pc.LocalAddr().String()}
	for gen, r := range []*helperResult{res, res.Child} {
		if r == nil {
			t.Fatalf("generation %d: no result (%s)", gen+2, res.ChildErr)
		}
		wantMarker := fmt.Sprintf("chan=6,gen=%d,own=0+1+2", gen+2)
		if r.Source != "parent" || !strings.HasSuffix(r.Marker, wantMarker) {
			t.Errorf("generation %d: source %s, marker %q; want parent, ...%s", gen+2, r.Source, r.Marker, wantMarker)
		}
		for i, a := range addrs {
			checkClaim(t, r, i, a, "parent")
		}
		for i, f := range r.Files {
			if !f.Owned || f.Fd != 3+i {
				t.Errorf("generation %d: file %+v; want fd %d, owned", gen+2, f, 3+i)
			}
		}
	}
	// The grandchild owned the unix socket's file and closed its listener last.
	if exists, ok := res.Child.Exists[path]; !ok || exists {
		t.Errorf("the owned socket file %s was not unlinked by the last generation (reported %v, exists %v)", path, ok, exists)
	}
	if len(res.Nonblock) != 3 || !res.Nonblock[0] || !res.Nonblock[1] || !res.Nonblock[2] {
		t.Errorf("O_NONBLOCK of the child's listener before ForChild, after it, after starting the grandchild: %v; want all true", res.Nonblock)
	}
}

// TestActivationSystemdSocketPassedOn: a unix socket systemd created, handed by the
// child to a grandchild, is still not the line's to unlink.
func TestActivationSystemdSocketPassedOn(t *testing.T) {
	path := filepath.Join(socketDir(t), "sd.sock")
	f, _ := newSocket(t, "unix", path, true)
	claims := []claim{{Name: "api", Network: "unix", Address: path}}
	res := runHelper(t, Systemd, passed{files: []*os.File{f}, names: []string{"api"}}, helperSpec{
		Claims: claims,
		Child:  &helperSpec{Claims: claims, CloseClaimed: true},
	})
	checkClaim(t, res, 0, path, "systemd")
	if res.Child == nil {
		t.Fatalf("no grandchild result: %s", res.ChildErr)
	}
	checkClaim(t, res.Child, 0, path, "parent")
	if res.Child.Marker == "" || strings.Contains(res.Child.Marker, "own=") {
		t.Errorf("grandchild marker %q; want one without an own list", res.Child.Marker)
	}
	if exists, ok := res.Child.Exists[path]; !ok || !exists {
		t.Errorf("systemd's socket file %s was unlinked by a process that only inherited it (reported %v)", path, ok)
	}
}

// TestActivationForChildNonblocking: duplicating the process's sockets for a child
// and starting the child leave the shared sockets in non-blocking mode (an
// (*os.File).Fd call on a net file would switch them to blocking under the server).
func TestActivationForChildNonblocking(t *testing.T) {
	s := &Set{}
	ln, err := s.Listen("http", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := s.ListenPacket("dns", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	check := func(when string) {
		t.Helper()
		for _, c := range []any{ln, pc} {
			nb, err := nonblocking(c)
			if err != nil || !nb {
				t.Errorf("%T %s: O_NONBLOCK %v (%v); want set", c, when, nb, err)
			}
		}
	}
	check("before ForChild")
	c, err := s.ForChild()
	if err != nil {
		t.Fatal(err)
	}
	check("after ForChild")
	cmd := exec.Command("true")
	cmd.ExtraFiles = c.Files
	if err := cmd.Start(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	check("after starting a child with the duplicates")
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	check("after the child exited")
}

// TestActivationForChildSkipsClosed: a socket the application closed is not passed.
func TestActivationForChildSkipsClosed(t *testing.T) {
	s := &Set{}
	a, err := s.Listen("a", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Listen("b", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.Close()
	c, err := s.ForChild()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !slices.Equal(c.Names, []string{"b"}) || !slices.Equal(c.Owned, []int{0}) {
		t.Errorf("ForChild after closing a: names %q, owned %v; want [b], [0]", c.Names, c.Owned)
	}
}
