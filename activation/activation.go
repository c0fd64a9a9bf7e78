// Package activation gives a process its listening sockets by name, from the first
// source that has them:
//
//  1. systemd socket activation (LISTEN_PID equal to our PID, LISTEN_FDS,
//     LISTEN_FDNAMES, descriptors from 3, as in sd_listen_fds(3));
//  2. a handover parent, which passes its sockets the same way and, since it cannot
//     know the child's PID before fork, names itself in MarkerEnv instead of setting
//     LISTEN_PID;
//  3. nothing inherited: the process binds the address itself (without SO_REUSEPORT,
//     so that every generation shares one socket and its accept queue).
//
// The environment is read once per process (Inherit caches it) and cleared, so no
// program the server later runs inherits LISTEN_* or the marker. Every passed
// descriptor is kept, listener or not, and validated when claimed: a descriptor that
// cannot serve what is asked for is an error naming the descriptor, what was expected
// and what was found, never a silent fallback to binding a new socket.
//
// The package also builds the inverse: the descriptors and environment that hand the
// process's sockets to a child (see Set.ForChild). It starts no goroutines and
// installs no signal handlers.
package activation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	sdactivation "github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
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
)

// String returns "bound", "systemd" or "parent".
func (s Source) String() string {
	switch s {
	case Systemd:
		return "systemd"
	case Parent:
		return "parent"
	}
	return "bound"
}

// File is one inherited descriptor.
type File struct {
	// Fd is the descriptor number the process received (3, 4, ...).
	Fd int
	// Name is its LISTEN_FDNAMES entry; "" when none was given ("unknown").
	Name string
	// Source is Systemd or Parent.
	Source Source
	// Kind is what the kernel says the descriptor is.
	Kind Kind
	// Owned is true when this line of handover processes bound the socket itself (it
	// may unlink a unix socket's file); false for sockets systemd created.
	Owned bool

	file    *os.File
	claimed bool
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
	channel *os.File
	files   []*File
	held    []*held
	ignored string
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
// than bind sockets of its own.
func Inherit() (*Set, error) {
	process.once.Do(func() {
		// Whatever the process inherited, nothing it later starts should inherit it
		// unless passed on deliberately (every Go-opened descriptor is already
		// close-on-exec; this catches descriptors leaked to us by our parent).
		unix.CloseRange(ListenFDsStart, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
		process.set, process.err = inherit(osEnv{})
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

func inherit(e env) (*Set, error) {
	s := &Set{}
	lpid, lpidSet := e.Lookup(ListenPIDEnv)
	fds, fdsSet := e.Lookup(ListenFDsEnv)
	names, namesSet := e.Lookup(ListenFDNamesEnv)
	mark, markSet := e.Lookup(MarkerEnv)
	clear := func() {
		for _, k := range []string{ListenPIDEnv, ListenFDsEnv, ListenFDNamesEnv, MarkerEnv} {
			e.Unset(k)
		}
	}
	defer clear()

	switch {
	case lpidSet:
		pid, err := ParsePID(ListenPIDEnv, lpid)
		if err != nil {
			return s, err
		}
		if pid != e.Getpid() {
			s.ignored = fmt.Sprintf("%s=%d is not this process (%d); the sockets were meant for another process", ListenPIDEnv, pid, e.Getpid())
			return s, nil
		}
		s.source = Systemd
	case markSet:
		m, err := ParseMarker(mark)
		if err != nil {
			return s, err
		}
		if m.PPID != e.Getppid() {
			s.ignored = fmt.Sprintf("%s names parent %d but this process's parent is %d; not adopting inherited descriptors", MarkerEnv, m.PPID, e.Getppid())
			return s, nil
		}
		s.source = Parent
		s.marker = &m
	case fdsSet:
		s.ignored = fmt.Sprintf("%s is set but %s is not; not adopting inherited descriptors", ListenFDsEnv, ListenPIDEnv)
		return s, nil
	default:
		return s, nil
	}
	if !fdsSet {
		if s.source == Parent {
			return s, fmt.Errorf("%s is set but %s is not", MarkerEnv, ListenFDsEnv)
		}
		return s, fmt.Errorf("%s is set but %s is not", ListenPIDEnv, ListenFDsEnv)
	}
	n, list, err := ParseListenFDs(fds, names, namesSet)
	if err != nil {
		return s, err
	}
	owned := map[int]bool{}
	if s.marker != nil {
		for _, i := range s.marker.Owned {
			if i >= n {
				return s, fmt.Errorf("%s: own index %d is beyond %s=%d", MarkerEnv, i, ListenFDsEnv, n)
			}
			owned[i] = true
		}
		if s.marker.Channel < ListenFDsStart+n {
			return s, fmt.Errorf("%s: chan=%d is one of the %s=%d passed sockets", MarkerEnv, s.marker.Channel, ListenFDsEnv, n)
		}
	}
	for i := 0; i < n; i++ {
		fd := ListenFDsStart + i
		f := &File{Fd: fd, Source: s.source, Owned: owned[i]}
		if list != nil && list[i] != "unknown" {
			f.Name = list[i]
		}
		f.Kind, err = inspect(fd)
		if err != nil {
			return s, fmt.Errorf("%s=%d passes fd %d (name %q) but it is not usable: %v; the process that started this one passed a descriptor it did not have open", ListenFDsEnv, n, fd, f.Name, err)
		}
		if path, ok := runtimeFile(fd, f.Kind); ok {
			// The Go runtime (1.25 and later) opens the cgroup CPU limit files at the
			// lowest free descriptors before main runs and keeps them open. Adopting one
			// would let CloseUnclaimed close the runtime's descriptor.
			return s, fmt.Errorf("%s=%d passes fd %d (name %q) but it is %s, which the Go runtime opened at startup: fd %d was not passed, so %s counts more descriptors than the process that started this one passed", ListenFDsEnv, n, fd, f.Name, path, fd, ListenFDsEnv)
		}
		s.files = append(s.files, f)
	}
	if s.marker != nil {
		k, err := inspect(s.marker.Channel)
		if err != nil || !k.Socket || k.Family != unix.AF_UNIX || k.Type != unix.SOCK_STREAM {
			what := k.String()
			if err != nil {
				what = err.Error()
			}
			return s, fmt.Errorf("%s: handover channel fd %d is not a unix stream socket (%s)", MarkerEnv, s.marker.Channel, what)
		}
		unix.CloseOnExec(s.marker.Channel)
		s.channel = os.NewFile(uintptr(s.marker.Channel), "handover-channel")
	}
	// go-systemd takes the descriptors (and marks them close-on-exec) when
	// LISTEN_PID names this process; for a parent's descriptors, say so first.
	os.Setenv(ListenPIDEnv, strconv.Itoa(os.Getpid()))
	os.Setenv(ListenFDsEnv, strconv.Itoa(n))
	taken := sdactivation.Files(true)
	if len(taken) != n {
		for _, f := range taken {
			f.Close()
		}
		return s, fmt.Errorf("internal error: go-systemd returned %d descriptors for %s=%d", len(taken), ListenFDsEnv, n)
	}
	for i, f := range taken {
		s.files[i].file = f
	}
	return s, nil
}

// Source returns where the process's inherited descriptors came from: Systemd,
// Parent, or Bound when nothing was inherited.
func (s *Set) Source() Source { return s.source }

// Marker returns what the handover parent passed, or nil when the process was not
// started by a handover parent.
func (s *Set) Marker() *Marker { return s.marker }

// Channel returns the child's end of the handover channel, or nil. The caller owns it.
func (s *Set) Channel() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.channel
	s.channel = nil
	return c
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
func (s *Set) Listen(name, network, address string) (net.Listener, error) {
	w := want{network: network, address: address}
	if strings.HasPrefix(network, "udp") || network == "unixgram" {
		return nil, fmt.Errorf("listen %s %s: %s is a datagram network; use ListenPacket", network, address, network)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
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
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), network, address)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) && network == "unix" {
			err = fmt.Errorf("%w (if no process serves it, the file is stale: remove it)", err)
		}
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
	// 3. The single socket systemd passed without a name of its own
	// (systemd-socket-activate without --fdname, or a unit without
	// FileDescriptorName=, which systemd names after the unit).
	if s.source != Systemd {
		return nil, nil
	}
	var unnamed []*File
	for _, f := range s.files {
		if !f.claimed && (name == "" || f.Name == "" || strings.HasSuffix(f.Name, ".socket")) {
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
// than kept open and unserved.
func (s *Set) CloseUnclaimed() []File {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []File
	for _, f := range s.files {
		if !f.claimed && f.file != nil {
			f.file.Close()
			f.claimed = true
			out = append(out, *f)
		}
	}
	return out
}

// Handed is one socket the process holds, as listed by Held.
type Handed struct {
	Name   string
	Source Source
	Addr   net.Addr
	Packet bool
}

// Held lists the sockets handed out by Listen and ListenPacket, in order.
func (s *Set) Held() []Handed {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Handed, 0, len(s.held))
	for _, h := range s.held {
		d := Handed{Name: h.name, Source: h.source}
		if h.ln != nil {
			d.Addr = h.ln.Addr()
		} else {
			d.Addr, d.Packet = h.pc.LocalAddr(), true
		}
		out = append(out, d)
	}
	return out
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
		case ListenPIDEnv, ListenFDsEnv, ListenFDNamesEnv, MarkerEnv:
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

// ForChild duplicates every socket the process holds for a child. The duplicates are
// taken through SyscallConn, never (*os.File).Fd on a net file, which would switch
// the shared socket to blocking mode under the running server. Sockets the
// application has closed are skipped.
func (s *Set) ForChild() (*Child, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &Child{}
	for _, h := range s.held {
		var sc syscallConn
		if h.ln != nil {
			sc, _ = h.ln.(syscallConn)
		} else {
			sc, _ = h.pc.(syscallConn)
		}
		if sc == nil {
			continue
		}
		f, err := dupFile(sc, h.name)
		if errors.Is(err, net.ErrClosed) {
			continue
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("duplicating listener %q for the new process: %w", h.name, err)
		}
		if h.owned {
			c.Owned = append(c.Owned, len(c.Files))
		}
		c.Files = append(c.Files, f)
		c.Names = append(c.Names, h.name)
	}
	return c, nil
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

type syscallConn interface {
	SyscallConn() (syscall.RawConn, error)
}

func dupFile(sc syscallConn, name string) (*os.File, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var dup int
	var derr error
	err = rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(dup), name), nil
}
