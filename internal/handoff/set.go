// Package handoff is the protocol between the generations of a server and between a
// server and whatever started it: which descriptors a process received and how to
// claim them (systemd's LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES, a handover parent's
// marker, a `handover run` master), what a parent passes to the child it starts, and
// the handover channel on which they talk. It is internal: package activation is the
// public face of the first part, package graceful the user of all of it.
//
// A process's descriptors come from the first source that has them:
//
//  1. systemd socket activation (LISTEN_PID equal to our PID, LISTEN_FDS,
//     LISTEN_FDNAMES, descriptors from 3, as in sd_listen_fds(3)), read through
//     go-systemd's activation package; a `handover run` master passes them the same
//     way and also sets MasterEnv;
//  2. a handover parent, which passes its sockets the same way but, since it cannot
//     know the child's PID before fork, names itself in MarkerEnv instead of setting
//     LISTEN_PID;
//  3. nothing inherited: the process binds the address itself (without SO_REUSEPORT,
//     so that every generation shares one socket and its accept queue).
//
// The environment is read once per process (Inherit caches it) and cleared, so no
// program the server later runs inherits it. Every passed descriptor is kept, listener
// or not, and validated when claimed: a descriptor that cannot serve what is asked for
// is an error naming the descriptor, what was expected and what was found, never a
// silent fallback to binding a new socket.
package handoff

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Source says where a descriptor came from.
type Source int

const (
	// Bound means this process bound the socket itself.
	Bound Source = iota
	// Systemd means the service manager passed it (socket unit or fd store).
	Systemd
	// Parent means a handover parent passed it during an upgrade.
	Parent
	// Master means a `handover run` master passed it.
	Master
)

// String returns "bound", "systemd", "parent" or "master".
func (s Source) String() string {
	switch s {
	case Systemd:
		return "systemd"
	case Parent:
		return "parent"
	case Master:
		return "master"
	}
	return "bound"
}

// ErrUnsupported is returned where passing sockets to another process is not
// implemented: on every system but Linux.
var ErrUnsupported = fmt.Errorf("handing sockets to a new process is not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// File is one inherited descriptor.
type File struct {
	// Fd is the descriptor number the process received (3, 4, ...).
	Fd int
	// Name is its LISTEN_FDNAMES entry; "" when none was given ("unknown").
	Name string
	// Source is Systemd, Parent or Master.
	Source Source
	// Kind is what the kernel says the descriptor is.
	Kind Kind
	// Owned is true when this line of handover processes bound the socket itself (it
	// may unlink a unix socket's file); false for sockets systemd created.
	Owned bool

	file    *os.File
	claimed bool
	dropped bool // closed by CloseUnclaimed
}

// label names f in error messages: `fd 3 ("http", from systemd)`.
func (f *File) label() string {
	name := f.Name
	if name == "" {
		name = "unnamed"
	} else {
		name = strconv.Quote(name)
	}
	return fmt.Sprintf("fd %d (%s, from %s)", f.Fd, name, f.Source)
}

// Set is the process's sockets: what it inherited and what it has claimed or bound.
// It is safe for concurrent use.
type Set struct {
	mu      sync.Mutex
	source  Source
	marker  *Marker
	master  int
	gen     int // the generation a master gave, or 0
	channel *os.File
	stderr  *os.File
	files   []*File
	held    []*held
	ignored string
	err     error // why the inherited environment cannot be used
}

// held is a socket handed out by Listen or ListenPacket.
type held struct {
	name   string
	source Source
	owned  bool
	ln     net.Listener
	pc     net.PacketConn
}

var process struct {
	once sync.Once
	set  *Set
	err  error
}

// Inherit returns the process's Set, reading and clearing the environment on the
// first call; later calls return the same Set and error. An error means the
// environment passed descriptors that cannot be used as described (for example
// LISTEN_FDS names a descriptor that is not open); the process should exit rather
// than bind sockets of its own. The Set is never nil.
func Inherit() (*Set, error) {
	process.once.Do(func() {
		process.set, process.err = inheritProcess()
		if process.err != nil {
			// Nothing of a broken environment is used, and nothing is bound in
			// its place: every Listen returns the error.
			process.set.err = process.err
			process.set.files = nil
		}
	})
	return process.set, process.err
}

// env is the seam through which inherit reads the process environment.
type env interface {
	Lookup(key string) (string, bool)
	Unset(key string)
	Getpid() int
	Getppid() int
}

type osEnv struct{}

func (osEnv) Lookup(k string) (string, bool) { return os.LookupEnv(k) }
func (osEnv) Unset(k string)                 { os.Unsetenv(k) }
func (osEnv) Getpid() int                    { return os.Getpid() }
func (osEnv) Getppid() int                   { return os.Getppid() }

// Source returns where the process's inherited descriptors came from: Systemd,
// Parent, Master, or Bound when nothing was inherited.
func (s *Set) Source() Source { return s.source }

// Marker returns what the handover parent passed, or nil when the process was not
// started by a handover parent.
func (s *Set) Marker() *Marker { return s.marker }

// Master returns the PID of the `handover run` master that started the process, or 0.
func (s *Set) Master() int { return s.master }

// Generation returns the generation the process's parent or master gave it: 1 when
// nobody did.
func (s *Set) Generation() int {
	switch {
	case s.marker != nil:
		return s.marker.Generation
	case s.gen > 0:
		return s.gen
	}
	return 1
}

// Channel returns the child's end of the handover channel, or nil. The caller owns it.
func (s *Set) Channel() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.channel
	s.channel = nil
	return c
}

// Stderr returns the parent's standard error to put back at fd 2 once the handover
// is confirmed (see Marker.Stderr), or nil. The caller owns it.
func (s *Set) Stderr() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.stderr
	s.stderr = nil
	return f
}

// Ignored says why descriptors described by the environment were not adopted (for
// example LISTEN_PID named another process), or "" if nothing was ignored.
func (s *Set) Ignored() string { return s.ignored }

// Files returns the inherited descriptors, claimed or not.
func (s *Set) Files() []File {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]File, len(s.files))
	for i, f := range s.files {
		out[i] = *f
	}
	return out
}

// Listen returns a listener for name: the inherited socket with that name, else the
// inherited socket bound to network and address, else (systemd only) the single
// unnamed stream socket passed, else a socket it binds to address itself. network is
// "tcp", "tcp4", "tcp6", "unix" or "unixpacket". name may be empty. A candidate that
// cannot serve network is an error naming the descriptor, not a reason to bind.
//
// Binding a unix socket replaces a stale socket file (one nobody accepts on: connect
// is refused), left by a process that was killed; a live socket or a file that is
// not a socket is an error.
func (s *Set) Listen(name, network, address string) (net.Listener, error) {
	w := want{network: network, address: address}
	if strings.HasPrefix(network, "udp") || network == "unixgram" {
		return nil, fmt.Errorf("listen %s %s: %s is a datagram network; use ListenPacket", network, address, network)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, fmt.Errorf("inherited sockets: %w", s.err)
	}
	f, err := s.pick(name, w)
	if err != nil {
		return nil, err
	}
	if f != nil {
		ln, err := net.FileListener(f.file)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", f.label(), err)
		}
		f.file.Close()
		f.claimed = true
		if ul, ok := ln.(*net.UnixListener); ok {
			// Only the line of processes that created the file may remove it.
			ul.SetUnlinkOnClose(f.Owned)
		}
		s.held = append(s.held, &held{name: name, source: f.Source, owned: f.Owned, ln: ln})
		return ln, nil
	}
	if network == "unix" || network == "unixpacket" {
		if err := RemoveStaleSocket(address); err != nil {
			return nil, err
		}
	}
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), network, address)
	if err != nil {
		return nil, err
	}
	s.held = append(s.held, &held{name: name, source: Bound, owned: true, ln: ln})
	return ln, nil
}

// ListenPacket is Listen for datagram sockets: network is "udp", "udp4", "udp6" or
// "unixgram".
func (s *Set) ListenPacket(name, network, address string) (net.PacketConn, error) {
	w := want{network: network, address: address, packet: true}
	if !strings.HasPrefix(network, "udp") && network != "unixgram" {
		return nil, fmt.Errorf("listen packet %s %s: %s is not a datagram network; use Listen", network, address, network)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, fmt.Errorf("inherited sockets: %w", s.err)
	}
	f, err := s.pick(name, w)
	if err != nil {
		return nil, err
	}
	if f != nil {
		pc, err := net.FilePacketConn(f.file)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", f.label(), err)
		}
		f.file.Close()
		f.claimed = true
		s.held = append(s.held, &held{name: name, source: f.Source, owned: f.Owned, pc: pc})
		return pc, nil
	}
	pc, err := (&net.ListenConfig{}).ListenPacket(context.Background(), network, address)
	if err != nil {
		return nil, err
	}
	s.held = append(s.held, &held{name: name, source: Bound, owned: true, pc: pc})
	return pc, nil
}

// pick finds the inherited descriptor for a request, or nil to bind.
func (s *Set) pick(name string, w want) (*File, error) {
	if name != "" && !validName(name) {
		return nil, fmt.Errorf("listener name %q is not valid: use at most 255 printable ASCII characters without ':'", name)
	}
	if _, _, err := w.spec(); err != nil {
		return nil, err
	}
	for _, f := range s.files {
		if f.dropped && (name != "" && f.Name == name || w.matches(f.Kind)) {
			return nil, fmt.Errorf("listener %q (%s %s): %s was closed when the process became ready, because nothing had claimed it yet; take every listener (Listen) before serving on any of them or calling Ready", name, w.network, w.address, f.label())
		}
	}
	// 1. By name. systemd gives every descriptor of a socket unit the unit's one
	// FileDescriptorName=, so several may share a name (ListenStream=53 and
	// ListenDatagram=53 both named "dns"): take the unclaimed one that can serve,
	// preferring the one bound to the address asked for.
	if name != "" {
		var named, usable []*File
		for _, f := range s.files {
			if f.Name != name {
				continue
			}
			named = append(named, f)
			if !f.claimed && w.check(f.Kind) == nil {
				usable = append(usable, f)
			}
		}
		for _, f := range usable {
			if w.matches(f.Kind) {
				return f, nil
			}
		}
		if len(usable) > 0 {
			return usable[0], nil
		}
		if len(named) > 0 {
			var why []string
			for _, f := range named {
				if f.claimed {
					why = append(why, fmt.Sprintf("%s was already claimed by another listener", f.label()))
				} else {
					why = append(why, fmt.Sprintf("%s cannot be used: %v", f.label(), w.check(f.Kind)))
				}
			}
			return nil, fmt.Errorf("listener %q: %s", name, strings.Join(why, "; "))
		}
	}
	// 2. By network and address.
	for _, f := range s.files {
		if !f.claimed && w.matches(f.Kind) {
			return f, nil
		}
	}
	// 3. The single socket systemd (or a master) passed without a name of its own
	// (systemd-socket-activate without --fdname, or a unit without
	// FileDescriptorName=, which systemd names after the unit), also as the previous
	// generation passes it on: its address is the socket unit's, not the program's,
	// so it cannot be matched by address.
	var unnamed []*File
	for _, f := range s.files {
		external := f.Source == Systemd || f.Source == Master || f.Source == Parent && !f.Owned
		if !f.claimed && external && (name == "" || f.Name == "" || strings.HasSuffix(f.Name, ".socket")) {
			unnamed = append(unnamed, f)
		}
	}
	var usable []*File
	for _, f := range unnamed {
		if w.check(f.Kind) == nil {
			usable = append(usable, f)
		}
	}
	switch {
	case len(usable) == 1:
		return usable[0], nil
	case len(usable) > 1:
		var labels []string
		for _, f := range usable {
			labels = append(labels, f.label())
		}
		return nil, fmt.Errorf("listener %q (%s %s): several passed sockets could serve it (%s); give them names with FileDescriptorName= and ask for one", name, w.network, w.address, strings.Join(labels, ", "))
	case len(unnamed) == 1 && len(s.files) == 1:
		// The only descriptor passed cannot serve: say so rather than bind.
		f := unnamed[0]
		return nil, fmt.Errorf("listener %q: %s cannot be used: %v", name, f.label(), w.check(f.Kind))
	}
	return nil, nil
}

// CloseUnclaimed closes the inherited descriptors that no Listen or ListenPacket
// call claimed and returns them, so the caller can log what it dropped. A process
// calls it once it is ready: sockets its new build no longer uses are closed rather
// than kept open and unserved. A later Listen for one of them is an error that says
// so, rather than a new socket bound beside the old.
func (s *Set) CloseUnclaimed() []File {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []File
	for _, f := range s.files {
		if !f.claimed && f.file != nil {
			f.file.Close()
			f.claimed, f.dropped = true, true
			out = append(out, *f)
		}
	}
	return out
}

// Held is one socket the process holds, as listed by Held.
type Held struct {
	Name   string
	Source Source
	Addr   net.Addr
	Packet bool
}

// Held lists the sockets handed out by Listen and ListenPacket, in order.
func (s *Set) Held() []Held {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Held, 0, len(s.held))
	for _, h := range s.held {
		d := Held{Name: h.name, Source: h.source}
		if h.ln != nil {
			d.Addr = h.ln.Addr()
		} else {
			d.Addr, d.Packet = h.pc.LocalAddr(), true
		}
		out = append(out, d)
	}
	return out
}

// Holds reports whether ln is a listener the Set handed out.
func (s *Set) Holds(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if h.ln == ln {
			return true
		}
	}
	return false
}

// Listeners returns the stream listeners handed out, and whether datagram sockets
// were too.
func (s *Set) Listeners() (lns []net.Listener, packets bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if h.ln != nil {
			lns = append(lns, h.ln)
		} else {
			packets = true
		}
	}
	return lns, packets
}

// KeepFiles stops the process's unix listeners from unlinking their socket files when
// they are closed: once a child has the sockets, the files are the child's.
func (s *Set) KeepFiles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if ul, ok := h.ln.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
	}
}

// Child is what a parent passes to a child process: the descriptors (to be placed at
// 3, 4, ... in order), their names, and which of them this line of processes owns.
type Child struct {
	Files []*os.File
	Names []string
	Owned []int
}

// Close closes the parent's copies of the child's descriptors.
func (c *Child) Close() {
	for _, f := range c.Files {
		f.Close()
	}
}

// Env returns environ with the socket-passing variables for the child set and any
// stale ones removed. m describes the child; its Owned field is filled from c.
func (c *Child) Env(environ []string, m Marker) []string {
	m.Owned = c.Owned
	out := make([]string, 0, len(environ)+3)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case ListenPIDEnv, ListenFDsEnv, ListenFDNamesEnv, MarkerEnv, MasterEnv, GenerationEnv:
			continue
		}
		out = append(out, kv)
	}
	names := make([]string, len(c.Names))
	for i, n := range c.Names {
		if n == "" {
			n = "unknown"
		}
		names[i] = n
	}
	return append(out,
		ListenFDsEnv+"="+strconv.Itoa(len(c.Files)),
		ListenFDNamesEnv+"="+strings.Join(names, ":"),
		MarkerEnv+"="+m.String())
}

// RemoveStaleSocket removes a unix socket file at path that nobody accepts on
// (connect is refused): one left by a process that was killed. A socket somebody
// serves, or a file of another kind, is an error that says so; a missing file, or an
// abstract socket name ("@..."), is fine.
func RemoveStaleSocket(path string) error {
	if path == "" || path[0] == '@' {
		return nil
	}
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("unix socket %s: a %s is in the way (not a socket); remove it or choose another path", path, describeMode(st.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("unix socket %s: another process is serving it (is the service already running?)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("unix socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unix socket %s: removing the stale socket file: %w", path, err)
	}
	return nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	}
	return m.Type().String()
}
