package handoff

import (
	"fmt"
	"net"
	"strings"

	"syscall"
)

// Kind says what an inherited descriptor is, as the kernel reports it.
type Kind struct {
	// Socket is false for anything that is not a socket (a file, pipe, tty...).
	Socket bool
	// Type is the socket type (syscall.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET).
	Type int
	// Family is the address family (syscall.AF_INET, AF_INET6, AF_UNIX).
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
	if k.Type == syscall.SOCK_STREAM || k.Type == syscall.SOCK_SEQPACKET {
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
	case k.Family == syscall.AF_UNIX && k.Type == syscall.SOCK_STREAM:
		return "unix stream"
	case k.Family == syscall.AF_UNIX && k.Type == syscall.SOCK_DGRAM:
		return "unix datagram"
	case k.Family == syscall.AF_UNIX && k.Type == syscall.SOCK_SEQPACKET:
		return "unix seqpacket"
	case k.Type == syscall.SOCK_STREAM && k.Family == syscall.AF_INET:
		return "TCP/IPv4"
	case k.Type == syscall.SOCK_STREAM && k.Family == syscall.AF_INET6:
		return "TCP/IPv6"
	case k.Type == syscall.SOCK_DGRAM && k.Family == syscall.AF_INET:
		return "UDP/IPv4"
	case k.Type == syscall.SOCK_DGRAM && k.Family == syscall.AF_INET6:
		return "UDP/IPv6"
	}
	return fmt.Sprintf("family %d type %d", k.Family, k.Type)
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
	if (typ == syscall.SOCK_STREAM || typ == syscall.SOCK_SEQPACKET) && !k.Listening {
		return fmt.Errorf("it is a %s; expected %s", k, expect)
	}
	return nil
}

// spec returns the socket type and families network needs.
func (w want) spec() (typ int, families []int, err error) {
	switch w.network {
	case "tcp":
		return syscall.SOCK_STREAM, []int{syscall.AF_INET, syscall.AF_INET6}, nil
	case "tcp4":
		return syscall.SOCK_STREAM, []int{syscall.AF_INET}, nil
	case "tcp6":
		return syscall.SOCK_STREAM, []int{syscall.AF_INET6}, nil
	case "udp":
		return syscall.SOCK_DGRAM, []int{syscall.AF_INET, syscall.AF_INET6}, nil
	case "udp4":
		return syscall.SOCK_DGRAM, []int{syscall.AF_INET}, nil
	case "udp6":
		return syscall.SOCK_DGRAM, []int{syscall.AF_INET6}, nil
	case "unix":
		return syscall.SOCK_STREAM, []int{syscall.AF_UNIX}, nil
	case "unixpacket":
		return syscall.SOCK_SEQPACKET, []int{syscall.AF_UNIX}, nil
	case "unixgram":
		return syscall.SOCK_DGRAM, []int{syscall.AF_UNIX}, nil
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
