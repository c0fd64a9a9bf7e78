//go:build linux

package master

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"

	sdactivation "github.com/coreos/go-systemd/v22/activation"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

// socket is one socket the master holds for its children.
type socket struct {
	name    string
	fd      int // close-on-exec; placed at fd 3+i in each child
	network string
	addr    string
	source  string   // "bound" or "systemd"
	unlink  string   // a unix socket file the master created, removed at exit
	file    *os.File // from systemd: holds fd (its finalizer would close it)
}

// sockets are what the master holds: the children's sockets and, from a socket unit,
// its control socket.
type sockets struct {
	list    []*socket
	control *os.File // passed by systemd under ControlName, or nil
	systemd bool     // taken from LISTEN_FDS
	warn    []string // things to log once the logger is set up
}

// close closes every socket and removes the unix socket files the master created.
func (s *sockets) close() {
	for _, k := range s.list {
		if k.file != nil {
			k.file.Close()
		} else {
			unix.Close(k.fd)
		}
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
	files := sdactivation.Files(true)
	if len(files) > 0 {
		return fromSystemd(files, ls)
	}
	if len(ls) == 0 {
		return nil, errors.New("no socket to pass on: give -listen NAME=ADDR, or start handover run from a socket unit")
	}
	s := &sockets{}
	for _, l := range ls {
		k, err := bind(l)
		if err != nil {
			s.close()
			return nil, err
		}
		s.list = append(s.list, k)
	}
	return s, nil
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
		if f.Name() == ControlName {
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
		fd := int(f.Fd())
		network, addr, err := describe(fd)
		if err != nil {
			return fmt.Errorf("fd %d (%q, from systemd): %w", fd, f.Name(), err)
		}
		if want != nil && !sameAddress(*want, network, addr) {
			s.warn = append(s.warn, fmt.Sprintf("-listen %s: systemd passed %s:%s under that name; using systemd's socket", want, network, addr))
		}
		s.list = append(s.list, &socket{name: f.Name(), fd: fd, network: network, addr: addr, source: "systemd", file: f})
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

// sameAddress reports whether a -listen address matches what a socket is bound to
// (only when it can tell: a host name is not resolved).
func sameAddress(l Listen, network, addr string) bool {
	if !strings.HasPrefix(network, l.Network) {
		return false
	}
	if l.Network == "unix" {
		return addr == l.Address
	}
	host, port, err := net.SplitHostPort(l.Address)
	if err != nil {
		return true
	}
	h2, p2, err := net.SplitHostPort(addr)
	if err != nil || port != p2 {
		return false
	}
	ip := net.ParseIP(host)
	if ip == nil || host == "" {
		return true
	}
	return ip.Equal(net.ParseIP(h2))
}

// describe checks that fd is a socket and returns its network and local address.
func describe(fd int) (network, addr string, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return "", "", errors.New("not a socket")
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return "", "", err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", "", err
	}
	stream := typ == unix.SOCK_STREAM || typ == unix.SOCK_SEQPACKET
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), fmt.Sprint(a.Port))
		network = map[bool]string{true: "tcp", false: "udp"}[stream]
	case *unix.SockaddrInet6:
		addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), fmt.Sprint(a.Port))
		network = map[bool]string{true: "tcp", false: "udp"}[stream]
	case *unix.SockaddrUnix:
		addr = a.Name
		network = map[bool]string{true: "unix", false: "unixgram"}[stream]
		if typ == unix.SOCK_SEQPACKET {
			network = "unixpacket"
		}
	default:
		network, addr = "socket", "?"
	}
	return network, addr, nil
}

// bind binds l and returns a close-on-exec, blocking descriptor for it (as systemd
// passes sockets; a child that wants non-blocking I/O sets it itself).
func bind(l Listen) (*socket, error) {
	k := &socket{name: l.Name, network: l.Network, source: "bound"}
	var rc syscall.RawConn
	var closer interface{ Close() error }
	switch l.Network {
	case "udp":
		pc, err := net.ListenPacket("udp", l.Address)
		if err != nil {
			return nil, fmt.Errorf("-listen %s: %w", l, err)
		}
		c := pc.(*net.UDPConn)
		rc, _ = c.SyscallConn()
		closer = c
		k.addr = c.LocalAddr().String()
	case "unix":
		if err := handoff.RemoveStaleSocket(l.Address); err != nil {
			return nil, fmt.Errorf("-listen %s: %w", l, err)
		}
		ln, err := net.Listen("unix", l.Address)
		if err != nil {
			return nil, fmt.Errorf("-listen %s: %w", l, err)
		}
		ul := ln.(*net.UnixListener)
		ul.SetUnlinkOnClose(false)
		rc, _ = ul.SyscallConn()
		closer = ul
		k.addr = l.Address
		if !strings.HasPrefix(l.Address, "@") {
			k.unlink = l.Address
		}
	default:
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			return nil, fmt.Errorf("-listen %s: %w", l, err)
		}
		tl := ln.(*net.TCPListener)
		rc, _ = tl.SyscallConn()
		closer = tl
		k.addr = tl.Addr().String()
	}
	defer closer.Close()
	var derr error
	if err := rc.Control(func(fd uintptr) {
		k.fd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	}); err != nil {
		derr = err
	}
	if derr != nil {
		return nil, fmt.Errorf("-listen %s: %w", l, derr)
	}
	if err := unix.SetNonblock(k.fd, false); err != nil {
		unix.Close(k.fd)
		return nil, fmt.Errorf("-listen %s: %w", l, err)
	}
	return k, nil
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return m.Type().String()
}
