//go:build linux

package master

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// socket is one socket the master holds for its children.
type socket struct {
	name    string
	fd      int // close-on-exec; placed at fd 3+i in each child
	network string
	addr    string
	source  string   // "bound" or "systemd"
	kind    fds.Kind // what the kernel says it is
	unlink  string   // a unix socket file the master created, removed at exit
	file    *os.File // holds fd
}

// sockets are what the master holds: the children's sockets and, from a socket unit,
// its control socket.
type sockets struct {
	list    []*socket
	control *os.File // passed by systemd under handoff.ControlName, or nil
	systemd bool     // taken from LISTEN_FDS
	warn    []string // things to log once the logger is set up
}

// close closes every socket and removes the unix socket files the master created.
func (s *sockets) close() {
	for _, k := range s.list {
		k.file.Close()
		if k.unlink != "" {
			os.Remove(k.unlink)
		}
	}
	if s.control != nil {
		s.control.Close()
	}
}

// openSockets takes the sockets from systemd when LISTEN_PID names this process
// (matched by name to ls, or all of them when ls is empty), else binds ls.
func openSockets(ls []Listen) (*sockets, error) {
	set, err := fds.Inherit()
	if err != nil {
		return nil, fmt.Errorf("the sockets passed to handover run: %w", err)
	}
	if files := set.Take(); len(files) > 0 {
		return fromSystemd(files, ls)
	}
	if len(ls) == 0 {
		return nil, errors.New("no socket to pass on: give -listen NAME=ADDR, or start handover run from a socket unit")
	}
	s := &sockets{}
	for _, l := range ls {
		f, err := fds.Bind(l.Network, l.Address)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("-listen %s: %w", l, err)
		}
		k, err := describe(f, l.Name, fds.Bound)
		if err != nil {
			f.Close()
			s.close()
			return nil, fmt.Errorf("-listen %s: %w", l, err)
		}
		if l.Network == "unix" && !strings.HasPrefix(l.Address, "@") {
			k.unlink = l.Address
		}
		s.list = append(s.list, k)
	}
	return s, nil
}

// describe makes f, a socket the master got from src, one of its sockets under name.
// The descriptor number is taken here, once: (*os.File).Fd switches a socket to
// blocking mode, which a child serving on it must not see change later.
func describe(f *os.File, name string, src fds.Source) (*socket, error) {
	fd := int(f.Fd())
	kind, err := fds.Inspect(fd)
	if err == nil && !kind.Socket {
		err = fmt.Errorf("not a socket (it is a %s)", kind)
	}
	if err != nil {
		return nil, err
	}
	d := fds.Describe(name, src, kind.Addr)
	return &socket{name: name, fd: fd, network: d.Network, addr: d.Addr, source: d.Source, kind: kind, file: f}, nil
}

// fromSystemd matches the descriptors systemd passed to the -listen names.
func fromSystemd(files []*os.File, ls []Listen) (*sockets, error) {
	s := &sockets{systemd: true}
	byName := map[string]*os.File{}
	var order []*os.File
	fail := func(err error) (*sockets, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	for _, f := range files {
		if f.Name() == handoff.ControlName {
			s.control = f
			continue
		}
		if _, dup := byName[f.Name()]; dup {
			return fail(fmt.Errorf("systemd passed two sockets named %q (LISTEN_FDNAMES); give each FileDescriptorName= its own name", f.Name()))
		}
		byName[f.Name()] = f
		order = append(order, f)
	}
	take := func(f *os.File, want *Listen) error {
		k, err := describe(f, f.Name(), fds.Systemd)
		if err != nil {
			return fmt.Errorf("fd %d (%q, from systemd): %w", f.Fd(), f.Name(), err)
		}
		if want != nil && !fds.Matches(want.Network, want.Address, k.kind) {
			s.warn = append(s.warn, fmt.Sprintf("-listen %s: systemd passed %s:%s under that name; using systemd's socket", want, k.network, k.addr))
		}
		s.list = append(s.list, k)
		delete(byName, f.Name())
		return nil
	}
	if len(ls) == 0 {
		for _, f := range order {
			if err := take(f, nil); err != nil {
				return fail(err)
			}
		}
		if len(s.list) == 0 {
			return fail(errors.New("systemd passed no socket for the child (only a control socket)"))
		}
		return s, nil
	}
	for i := range ls {
		f := byName[ls[i].Name]
		if f == nil {
			var have []string
			for _, g := range order {
				have = append(have, g.Name())
			}
			return fail(fmt.Errorf("-listen %s: systemd passed no socket named %q (LISTEN_FDNAMES=%s); add FileDescriptorName=%s to the socket unit", ls[i], ls[i].Name, strings.Join(have, ":"), ls[i].Name))
		}
		if err := take(f, &ls[i]); err != nil {
			return fail(err)
		}
	}
	for name, f := range byName {
		s.warn = append(s.warn, fmt.Sprintf("systemd passed a socket named %q that no -listen names; it is not passed on", name))
		f.Close()
	}
	return s, nil
}
