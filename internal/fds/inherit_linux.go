//go:build linux

package fds

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

func inheritProcess() (*Set, error) {
	// Whatever the process inherited, nothing it later starts should inherit it
	// unless passed on deliberately (every Go-opened descriptor is already
	// close-on-exec; this catches descriptors leaked to us by our parent).
	unix.CloseRange(handoff.ListenFDsStart, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	return inherit(osEnv{}, systemdFiles)
}

// systemdFiles takes the descriptors of systemd's protocol (sd_listen_fds(3)), once
// inherit has checked LISTEN_PID and LISTEN_FDS (and clears the variables): fds 3
// and up, made close-on-exec, each named as LISTEN_FDNAMES names it, or
// LISTEN_FD_<fd> when it names none, as go-systemd's activation.Files names them.
// Done here rather than through go-systemd: its activation package brings crypto/tls
// and a hundred packages' initialisation into every binary that links this one,
// among them the start of `handover commit`, which is on the path of a switch.
func systemdFiles() []*os.File {
	n, err := strconv.Atoi(os.Getenv(handoff.ListenFDsEnv))
	if err != nil || n <= 0 {
		return nil
	}
	names := strings.Split(os.Getenv(handoff.ListenFDNamesEnv), ":")
	files := make([]*os.File, 0, n)
	for i := range n {
		fd := handoff.ListenFDsStart + i
		unix.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		files = append(files, quietFile(fd, name))
	}
	return files
}

// quietFile makes an *os.File of fd, an inherited socket, that the Go runtime's
// poller does not watch until a listener is made of it: see handoff.QuietFile. If
// that fails (no /dev/null), a plain one.
func quietFile(fd int, name string) *os.File {
	if f, err := handoff.QuietFile(fd, name); err == nil {
		return f
	}
	return os.NewFile(uintptr(fd), name)
}

// inheritedVars are the variables inherit reads, and clears.
var inheritedVars = []string{handoff.ListenPIDEnv, handoff.ListenFDsEnv, handoff.ListenFDNamesEnv, handoff.MarkerEnv, handoff.MasterEnv, handoff.GenerationEnv, handoff.DirectEnv}

// inherit reads what e describes. take returns the descriptors of the systemd
// protocol once the environment has been validated.
func inherit(e env, take func() []*os.File) (*Set, error) {
	vars := map[string]string{}
	for _, k := range inheritedVars {
		if v, ok := e.Lookup(k); ok {
			vars[k] = v
		}
		defer e.Unset(k)
	}
	s := &Set{}
	if adopt, err := s.adopt(e, vars); err != nil || !adopt {
		return s, err
	}
	fds, ok := vars[handoff.ListenFDsEnv]
	if !ok {
		by := handoff.ListenPIDEnv
		if s.source == Parent {
			by = handoff.MarkerEnv
		}
		if s.direct {
			by = handoff.MasterEnv
		}
		return s, fmt.Errorf("%s is set but %s is not", by, handoff.ListenFDsEnv)
	}
	names, namesSet := vars[handoff.ListenFDNamesEnv]
	n, list, err := handoff.ParseListenFDs(fds, names, namesSet)
	if err != nil {
		return s, err
	}
	owned, err := s.checkMarker(n)
	if err != nil {
		return s, err
	}
	if err := s.inspectAll(n, list, owned); err != nil {
		return s, err
	}
	if s.marker != nil {
		return s, s.openParentFiles()
	}
	if s.direct {
		s.wrapFiles()
		return s, nil
	}
	// systemd's protocol (from systemd itself or from a master's shim).
	taken := take()
	if len(taken) != n {
		for _, f := range taken {
			f.Close()
		}
		return s, fmt.Errorf("internal error: took %d descriptors for %s=%d", len(taken), handoff.ListenFDsEnv, n)
	}
	for i, f := range taken {
		s.files[i].file = f
	}
	return s, nil
}

// adopt decides from vars where the descriptors come from (s.source, and the
// marker, master and generation), and whether they are this process's to adopt: if
// not, s.ignored says why.
func (s *Set) adopt(e env, vars map[string]string) (bool, error) {
	lpid, lpidSet := vars[handoff.ListenPIDEnv]
	mark, markSet := vars[handoff.MarkerEnv]
	switch {
	case lpidSet:
		pid, err := handoff.ParsePID(handoff.ListenPIDEnv, lpid)
		if err != nil {
			return false, err
		}
		if pid != e.Getpid() {
			s.ignored = fmt.Sprintf("%s=%d is not this process (%d); the sockets were meant for another process", handoff.ListenPIDEnv, pid, e.Getpid())
			return false, nil
		}
		s.source = Systemd
		return true, s.adoptMaster(e, vars)
	case markSet:
		m, err := handoff.ParseMarker(mark)
		if err != nil {
			return false, err
		}
		if m.PPID != e.Getppid() {
			s.ignored = fmt.Sprintf("%s names parent %d but this process's parent is %d; not adopting inherited descriptors", handoff.MarkerEnv, m.PPID, e.Getppid())
			return false, nil
		}
		s.source = Parent
		s.marker = &m
		return true, nil
	}
	if version, ok := vars[handoff.DirectEnv]; ok {
		return s.adoptDirect(e, version, vars)
	}
	if _, ok := vars[handoff.ListenFDsEnv]; ok {
		s.ignored = fmt.Sprintf("%s is set but %s is not; not adopting inherited descriptors", handoff.ListenFDsEnv, handoff.ListenPIDEnv)
	}
	return false, nil
}

// adoptDirect adopts the sockets of a `handover run` master that started this
// program directly, without LISTEN_PID, for it carries handoff.DirectMark: version
// (HANDOVER_DIRECT) must be the mark's, and the master (HANDOVER_MASTER) this
// process's real parent.
func (s *Set) adoptDirect(e env, version string, vars map[string]string) (bool, error) {
	if ours := handoff.DirectVersion(); version != ours {
		s.ignored = fmt.Sprintf("%s=%.64q: this program's direct start is version %q; not adopting inherited descriptors", handoff.DirectEnv, version, ours)
		return false, nil
	}
	master, ok := vars[handoff.MasterEnv]
	if !ok {
		return false, fmt.Errorf("%s is set but %s is not", handoff.DirectEnv, handoff.MasterEnv)
	}
	if err := s.adoptMaster(e, vars); err != nil {
		return false, err
	}
	if s.source != Master {
		s.ignored = fmt.Sprintf("%s=%s is not this process's parent (%d); not adopting the descriptors of its direct start", handoff.MasterEnv, master, e.Getppid())
		return false, nil
	}
	s.direct = true
	return true, nil
}

// adoptMaster makes the source Master when a `handover run` master, this process's
// parent, passed the descriptors, with the generation it gave.
func (s *Set) adoptMaster(e env, vars map[string]string) error {
	master, ok := vars[handoff.MasterEnv]
	if !ok {
		return nil
	}
	mpid, err := handoff.ParsePID(handoff.MasterEnv, master)
	if err != nil || mpid != e.Getppid() {
		return err
	}
	s.source, s.master = Master, mpid
	if gen, ok := vars[handoff.GenerationEnv]; ok {
		s.gen, err = handoff.ParseGeneration(handoff.GenerationEnv, gen)
	}
	return err
}

// checkMarker checks a handover parent's marker against the n descriptors passed,
// and returns the indexes of those this line of processes owns.
func (s *Set) checkMarker(n int) (map[int]bool, error) {
	owned := map[int]bool{}
	m := s.marker
	if m == nil {
		return owned, nil
	}
	for _, i := range m.Owned {
		if i >= n {
			return nil, fmt.Errorf("%s: own index %d is beyond %s=%d", handoff.MarkerEnv, i, handoff.ListenFDsEnv, n)
		}
		owned[i] = true
	}
	if m.Channel < handoff.ListenFDsStart+n {
		return nil, fmt.Errorf("%s: chan=%d is one of the %s=%d passed sockets", handoff.MarkerEnv, m.Channel, handoff.ListenFDsEnv, n)
	}
	if e := m.Stderr; e != 0 && e < handoff.ListenFDsStart+n {
		return nil, fmt.Errorf("%s: err=%d is one of the %s=%d passed sockets", handoff.MarkerEnv, e, handoff.ListenFDsEnv, n)
	}
	return owned, nil
}

// inspectAll asks the kernel what each of the n passed descriptors is and lists
// them, named after list (nil: unnamed).
func (s *Set) inspectAll(n int, list []string, owned map[int]bool) error {
	for i := 0; i < n; i++ {
		fd := handoff.ListenFDsStart + i
		f := &File{Fd: fd, Source: s.source, Owned: owned[i]}
		if list != nil && list[i] != "unknown" {
			f.Name = list[i]
		}
		var err error
		f.Kind, err = Inspect(fd)
		if err != nil {
			return fmt.Errorf("%s=%d passes fd %d (name %q) but it is not usable: %v; the process that started this one passed a descriptor it did not have open", handoff.ListenFDsEnv, n, fd, f.Name, err)
		}
		if path, ok := runtimeFile(fd, f.Kind); ok {
			// The Go runtime (1.25 and later) opens the cgroup CPU limit files at the
			// lowest free descriptors before main runs and keeps them open. Adopting one
			// would let CloseUnclaimed close the runtime's descriptor.
			return fmt.Errorf("%s=%d passes fd %d (name %q) but it is %s, which the Go runtime opened at startup: fd %d was not passed, so %s counts more descriptors than the process that started this one passed", handoff.ListenFDsEnv, n, fd, f.Name, path, fd, handoff.ListenFDsEnv)
		}
		s.files = append(s.files, f)
	}
	return nil
}

// openParentFiles takes what a handover parent passed, by handover's own protocol:
// the handover channel, the parent's standard error if it passed it, and the
// descriptors, wrapped here.
func (s *Set) openParentFiles() error {
	m := s.marker
	k, err := Inspect(m.Channel)
	if err != nil || !k.Socket || k.Family != unix.AF_UNIX || k.Type != unix.SOCK_SEQPACKET {
		what := k.String()
		if err != nil {
			what = err.Error()
		}
		return fmt.Errorf("%s: handover channel fd %d is not a unix seqpacket socket (%s)", handoff.MarkerEnv, m.Channel, what)
	}
	unix.CloseOnExec(m.Channel)
	s.channel = os.NewFile(uintptr(m.Channel), "handover-channel")
	if e := m.Stderr; e != 0 {
		if _, err := unix.FcntlInt(uintptr(e), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("%s: err=%d is not open: %v", handoff.MarkerEnv, e, err)
		}
		unix.CloseOnExec(e)
		s.stderr = os.NewFile(uintptr(e), "parent-stderr")
	}
	s.wrapFiles()
	return nil
}

// wrapFiles makes *os.Files of the passed descriptors, close-on-exec, as go-systemd
// does for systemd's protocol (but not watched by the runtime's poller).
func (s *Set) wrapFiles() {
	for _, f := range s.files {
		unix.CloseOnExec(f.Fd)
		f.file = quietFile(f.Fd, f.Name)
	}
}
