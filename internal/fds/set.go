// Package fds is the socket set of a handover process: the descriptors it
// inherited, what the kernel says each is, how a request for a listener is matched
// to one of them (or bound), and what the process passes on to a child.
//
// A process's descriptors come from the first source that has them:
//
//  1. systemd socket activation (LISTEN_PID equal to our PID, LISTEN_FDS,
//     LISTEN_FDNAMES, descriptors from 3, as in sd_listen_fds(3)); a `handover run`
//     master passes them the same way and also sets HANDOVER_MASTER;
//  2. a handover parent, which passes its sockets the same way but, since it cannot
//     know the child's PID before fork, names itself in HANDOVER_PARENT (a
//     handoff.Marker) instead of setting LISTEN_PID;
//  3. nothing inherited: the process binds the address itself (without SO_REUSEPORT,
//     so that every generation shares one socket and its accept queue).
//
// The environment (its names and their parsing are package handoff's) is read once
// per process (Inherit caches it) and cleared, so no program the server later runs
// inherits it. Every passed descriptor is kept, listener or not, and validated when
// claimed: a descriptor that cannot serve what is asked for is an error naming the
// descriptor, what was expected and what was found, never a silent fallback to
// binding a new socket.
//
// handover run's master, which passes its sockets on rather than serving on them,
// uses the same pieces: Inherit and Take, Inspect, Matches and Bind.
package fds

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/wire"
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
	marker  *handoff.Marker
	master  int
	gen     int  // the generation a master gave, or 0
	direct  bool // the master started this process without LISTEN_PID
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
func (s *Set) Marker() *handoff.Marker { return s.marker }

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
func (s *Set) Channel() *os.File { return s.takeFile(&s.channel) }

// Stderr returns the parent's standard error to put back at fd 2 once the handover
// is confirmed (see Marker.Stderr), or nil. The caller owns it.
func (s *Set) Stderr() *os.File { return s.takeFile(&s.stderr) }

// takeFile returns the file at p, then the caller's, and clears p.
func (s *Set) takeFile(p **os.File) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := *p
	*p = nil
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

// ClaimFiles claims every inherited descriptor named name that is not a socket to
// serve on (a memfd a service manager kept in its fd store, or a connected socket
// such as one end of a socketpair; not a listening socket nor a datagram socket)
// and returns them, oldest first; the caller owns them. A claimed descriptor is not closed by CloseUnclaimed,
// and is not passed to the next generation.
func (s *Set) ClaimFiles(name string) []*os.File {
	return s.take(func(f *File) bool {
		return f.Name == name && !f.Kind.Listening && f.Kind.Type != syscall.SOCK_DGRAM
	})
}

// Take claims every inherited descriptor not claimed yet and returns its file, in
// order, for a process that passes the descriptors on whole rather than serving on
// them (handover run's master). The files are the caller's; each is named as it
// was passed (an unnamed one LISTEN_FD_<fd>, as go-systemd names it).
func (s *Set) Take() []*os.File {
	return s.take(func(*File) bool { return true })
}

// take claims the unclaimed descriptors for which want is true and returns their
// files.
func (s *Set) take(want func(*File) bool) []*os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*os.File
	for _, f := range s.files {
		if !f.claimed && f.file != nil && want(f) {
			f.claimed = true
			out = append(out, f.file)
			f.file = nil
		}
	}
	return out
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

// Sockets describes the sockets handed out by Listen and ListenPacket, in order, as
// a Status lists them (an empty list, not nil, when there are none).
func (s *Set) Sockets() []wire.Socket {
	out := []wire.Socket{}
	for _, h := range s.Held() {
		out = append(out, Describe(h.Name, h.Source, h.Addr))
	}
	return out
}

// Describe describes a socket named name that the process got from src, bound to
// addr (nil if unknown), as a Status lists it.
func Describe(name string, src Source, addr net.Addr) wire.Socket {
	d := wire.Socket{Name: name, Source: src.String()}
	if addr != nil {
		d.Network, d.Addr = addr.Network(), addr.String()
	}
	return d
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

// Reopened records that ln, a listener handed out, was closed and its socket made
// a listener again as reopened: Listeners, ForChild and Holds use that one from
// now on.
func (s *Set) Reopened(ln, reopened net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if h.ln == ln {
			h.ln = reopened
		}
	}
}

// Listeners returns the stream listeners and the datagram sockets handed out.
func (s *Set) Listeners() (lns []net.Listener, pcs []net.PacketConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if h.ln != nil {
			lns = append(lns, h.ln)
		} else {
			pcs = append(pcs, h.pc)
		}
	}
	return lns, pcs
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
