package activation

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind says what an inherited descriptor is, as the kernel reports it.
type Kind struct {
	// Socket is false for anything that is not a socket (a file, pipe, tty...).
	Socket bool
	// Type is the socket type (unix.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET).
	Type int
	// Family is the address family (unix.AF_INET, AF_INET6, AF_UNIX).
	Family int
	// Listening is true for a stream socket on which listen(2) was called.
	Listening bool
	// Addr is the socket's local address, nil for a non-socket.
	Addr net.Addr
	// What describes a non-socket ("regular file", "pipe", ...).
	What string
}

// String describes k for error messages, e.g. "listening TCP socket on 127.0.0.1:80".
func (k Kind) String() string {
	if !k.Socket {
		return k.What
	}
	var b strings.Builder
	if k.Type == unix.SOCK_STREAM || k.Type == unix.SOCK_SEQPACKET {
		if k.Listening {
			b.WriteString("listening ")
		} else {
			b.WriteString("non-listening (connected or unbound) ")
		}
	}
	b.WriteString(k.proto())
	b.WriteString(" socket")
	if k.Addr != nil {
		b.WriteString(" on ")
		b.WriteString(k.Addr.String())
	}
	return b.String()
}

func (k Kind) proto() string {
	switch {
	case k.Family == unix.AF_UNIX && k.Type == unix.SOCK_STREAM:
		return "unix stream"
	case k.Family == unix.AF_UNIX && k.Type == unix.SOCK_DGRAM:
		return "unix datagram"
	case k.Family == unix.AF_UNIX && k.Type == unix.SOCK_SEQPACKET:
		return "unix seqpacket"
	case k.Type == unix.SOCK_STREAM && k.Family == unix.AF_INET:
		return "TCP/IPv4"
	case k.Type == unix.SOCK_STREAM && k.Family == unix.AF_INET6:
		return "TCP/IPv6"
	case k.Type == unix.SOCK_DGRAM && k.Family == unix.AF_INET:
		return "UDP/IPv4"
	case k.Type == unix.SOCK_DGRAM && k.Family == unix.AF_INET6:
		return "UDP/IPv6"
	}
	return fmt.Sprintf("family %d type %d", k.Family, k.Type)
}

// inspect asks the kernel what fd is. An fd that is not open is an error.
func inspect(fd int) (Kind, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Kind{}, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
	case unix.S_IFREG:
		return Kind{What: "regular file"}, nil
	case unix.S_IFDIR:
		return Kind{What: "directory"}, nil
	case unix.S_IFIFO:
		return Kind{What: "pipe"}, nil
	case unix.S_IFCHR:
		return Kind{What: "character device"}, nil
	default:
		return Kind{What: fmt.Sprintf("file of mode %#o", st.Mode&unix.S_IFMT)}, nil
	}
	k := Kind{Socket: true}
	var err error
	if k.Type, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return k, err
	}
	if k.Family, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return k, err
	}
	if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil {
		k.Listening = acc == 1
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		k.Addr = sockaddrToAddr(sa, k.Type)
	}
	return k, nil
}

// runtimeFile reports whether fd is a cgroup file, such as the CPU limit files the
// Go runtime keeps open, and returns its path. Neither systemd nor a handover parent
// passes such a file: one at a passed position was opened by this process itself.
func runtimeFile(fd int, k Kind) (string, bool) {
	if k.Socket || k.What != "regular file" {
		return "", false
	}
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil || !strings.HasPrefix(path, "/sys/fs/cgroup/") {
		return "", false
	}
	return path, true
}

func sockaddrToAddr(sa unix.Sockaddr, typ int) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		ip := net.IP(append([]byte(nil), sa.Addr[:]...))
		if typ == unix.SOCK_DGRAM {
			return &net.UDPAddr{IP: ip, Port: sa.Port}
		}
		return &net.TCPAddr{IP: ip, Port: sa.Port}
	case *unix.SockaddrInet6:
		ip := net.IP(append([]byte(nil), sa.Addr[:]...))
		zone := ""
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		if typ == unix.SOCK_DGRAM {
			return &net.UDPAddr{IP: ip, Port: sa.Port, Zone: zone}
		}
		return &net.TCPAddr{IP: ip, Port: sa.Port, Zone: zone}
	case *unix.SockaddrUnix:
		name := sa.Name
		if strings.HasPrefix(name, "\x00") {
			name = "@" + name[1:]
		}
		switch typ {
		case unix.SOCK_DGRAM:
			return &net.UnixAddr{Name: name, Net: "unixgram"}
		case unix.SOCK_SEQPACKET:
			return &net.UnixAddr{Name: name, Net: "unixpacket"}
		}
		return &net.UnixAddr{Name: name, Net: "unix"}
	}
	return nil
}

// want is what a caller asks for: a network as in net.Listen and an address.
type want struct {
	network string
	address string
	packet  bool // ListenPacket rather than Listen
}

// check reports why k cannot serve w, or nil if it can.
func (w want) check(k Kind) error {
	expect := w.describe()
	if !k.Socket {
		return fmt.Errorf("it is a %s; expected %s", k.What, expect)
	}
	typ, families, err := w.spec()
	if err != nil {
		return err
	}
	famOK := false
	for _, f := range families {
		famOK = famOK || f == k.Family
	}
	if k.Type != typ || !famOK {
		return fmt.Errorf("it is a %s; expected %s", k, expect)
	}
	if (typ == unix.SOCK_STREAM || typ == unix.SOCK_SEQPACKET) && !k.Listening {
		return fmt.Errorf("it is a %s; expected %s", k, expect)
	}
	return nil
}

// spec returns the socket type and families network needs.
func (w want) spec() (typ int, families []int, err error) {
	switch w.network {
	case "tcp":
		return unix.SOCK_STREAM, []int{unix.AF_INET, unix.AF_INET6}, nil
	case "tcp4":
		return unix.SOCK_STREAM, []int{unix.AF_INET}, nil
	case "tcp6":
		return unix.SOCK_STREAM, []int{unix.AF_INET6}, nil
	case "udp":
		return unix.SOCK_DGRAM, []int{unix.AF_INET, unix.AF_INET6}, nil
	case "udp4":
		return unix.SOCK_DGRAM, []int{unix.AF_INET}, nil
	case "udp6":
		return unix.SOCK_DGRAM, []int{unix.AF_INET6}, nil
	case "unix":
		return unix.SOCK_STREAM, []int{unix.AF_UNIX}, nil
	case "unixpacket":
		return unix.SOCK_SEQPACKET, []int{unix.AF_UNIX}, nil
	case "unixgram":
		return unix.SOCK_DGRAM, []int{unix.AF_UNIX}, nil
	}
	return 0, nil, fmt.Errorf("network %q is not supported (use tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixpacket or unixgram)", w.network)
}

func (w want) describe() string {
	proto := map[string]string{
		"tcp": "TCP", "tcp4": "TCP/IPv4", "tcp6": "TCP/IPv6",
		"udp": "UDP", "udp4": "UDP/IPv4", "udp6": "UDP/IPv6",
		"unix": "unix stream", "unixpacket": "unix seqpacket", "unixgram": "unix datagram",
	}[w.network]
	if proto == "" {
		proto = w.network
	}
	if w.packet {
		return proto + " socket"
	}
	return "a listening " + proto + " socket"
}

// matches reports whether k is bound to the address w asks for. Port 0 (any port)
// never matches: only a name can select such a socket.
func (w want) matches(k Kind) bool {
	if w.check(k) != nil || k.Addr == nil {
		return false
	}
	switch a := k.Addr.(type) {
	case *net.UnixAddr:
		return a.Name == w.address && w.address != ""
	case *net.TCPAddr:
		r, err := net.ResolveTCPAddr(w.network, w.address)
		return err == nil && sameIPPort(r.IP, r.Port, a.IP, a.Port)
	case *net.UDPAddr:
		r, err := net.ResolveUDPAddr(w.network, w.address)
		return err == nil && sameIPPort(r.IP, r.Port, a.IP, a.Port)
	}
	return false
}

func sameIPPort(ip1 net.IP, port1 int, ip2 net.IP, port2 int) bool {
	if port1 == 0 || port1 != port2 {
		return false
	}
	unspec1 := ip1 == nil || ip1.IsUnspecified()
	unspec2 := ip2 == nil || ip2.IsUnspecified()
	if unspec1 || unspec2 {
		return unspec1 && unspec2
	}
	return ip1.Equal(ip2)
}
