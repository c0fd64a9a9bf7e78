//go:build linux

package handoff

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	sdactivation "github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

func inheritProcess() (*Set, error) {
	// Whatever the process inherited, nothing it later starts should inherit it
	// unless passed on deliberately (every Go-opened descriptor is already
	// close-on-exec; this catches descriptors leaked to us by our parent).
	unix.CloseRange(ListenFDsStart, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	return inherit(osEnv{}, systemdFiles)
}

// systemdFiles takes the descriptors systemd passed, through go-systemd: the source
// of systemd's protocol (it checks LISTEN_PID, marks them close-on-exec, names them
// from LISTEN_FDNAMES and clears the variables).
func systemdFiles() []*os.File { return sdactivation.Files(true) }

// inherit reads what e describes. take returns the descriptors of the systemd
// protocol once the environment has been validated.
func inherit(e env, take func() []*os.File) (*Set, error) {
	s := &Set{}
	lpid, lpidSet := e.Lookup(ListenPIDEnv)
	fds, fdsSet := e.Lookup(ListenFDsEnv)
	names, namesSet := e.Lookup(ListenFDNamesEnv)
	mark, markSet := e.Lookup(MarkerEnv)
	master, masterSet := e.Lookup(MasterEnv)
	gen, genSet := e.Lookup(GenerationEnv)
	defer func() {
		for _, k := range []string{ListenPIDEnv, ListenFDsEnv, ListenFDNamesEnv, MarkerEnv, MasterEnv, GenerationEnv} {
			e.Unset(k)
		}
	}()

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
		if masterSet {
			mpid, err := ParsePID(MasterEnv, master)
			if err != nil {
				return s, err
			}
			if mpid == e.Getppid() {
				s.source, s.master = Master, mpid
				if genSet {
					if s.gen, err = ParsePID(GenerationEnv, gen); err != nil {
						return s, err
					}
				}
			}
		}
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
		if e := s.marker.Stderr; e != 0 && e < ListenFDsStart+n {
			return s, fmt.Errorf("%s: err=%d is one of the %s=%d passed sockets", MarkerEnv, e, ListenFDsEnv, n)
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
		if err != nil || !k.Socket || k.Family != unix.AF_UNIX || k.Type != unix.SOCK_SEQPACKET {
			what := k.String()
			if err != nil {
				what = err.Error()
			}
			return s, fmt.Errorf("%s: handover channel fd %d is not a unix seqpacket socket (%s)", MarkerEnv, s.marker.Channel, what)
		}
		unix.CloseOnExec(s.marker.Channel)
		s.channel = os.NewFile(uintptr(s.marker.Channel), "handover-channel")
		if e := s.marker.Stderr; e != 0 {
			if _, err := unix.FcntlInt(uintptr(e), unix.F_GETFD, 0); err != nil {
				return s, fmt.Errorf("%s: err=%d is not open: %v", MarkerEnv, e, err)
			}
			unix.CloseOnExec(e)
			s.stderr = os.NewFile(uintptr(e), "parent-stderr")
		}
		// Our own protocol: the descriptors are wrapped here.
		for _, f := range s.files {
			unix.CloseOnExec(f.Fd)
			f.file = os.NewFile(uintptr(f.Fd), f.Name)
		}
		return s, nil
	}
	// systemd's protocol (from systemd itself or from a master's shim): go-systemd
	// takes the descriptors.
	taken := take()
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

// ForChild duplicates every socket the process holds for a child. The duplicates are
// taken through SyscallConn, never (*os.File).Fd on a net file, which would switch
// the shared socket to blocking mode under the running server. Sockets the
// application has closed are skipped.
func (s *Set) ForChild() (*Child, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &Child{}
	for _, h := range s.held {
		var sc syscall.Conn
		if h.ln != nil {
			sc, _ = h.ln.(syscall.Conn)
		} else {
			sc, _ = h.pc.(syscall.Conn)
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

// DupFile duplicates the descriptor of sc (a listener, a connection) as a new
// close-on-exec file, without changing its blocking mode.
func DupFile(sc syscall.Conn, name string) (*os.File, error) { return dupFile(sc, name) }

func dupFile(sc syscall.Conn, name string) (*os.File, error) {
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
