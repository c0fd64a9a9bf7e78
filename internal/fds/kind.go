package fds

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

// protocols names the kinds of socket a process may be passed.
var protocols = map[[2]int]string{
	{syscall.AF_UNIX, syscall.SOCK_STREAM}:    "unix stream",
	{syscall.AF_UNIX, syscall.SOCK_DGRAM}:     "unix datagram",
	{syscall.AF_UNIX, syscall.SOCK_SEQPACKET}: "unix seqpacket",
	{syscall.AF_INET, syscall.SOCK_STREAM}:    "TCP/IPv4",
	{syscall.AF_INET6, syscall.SOCK_STREAM}:   "TCP/IPv6",
	{syscall.AF_INET, syscall.SOCK_DGRAM}:     "UDP/IPv4",
	{syscall.AF_INET6, syscall.SOCK_DGRAM}:    "UDP/IPv6",
}

func (k Kind) proto() string {
	if p, ok := protocols[[2]int{k.Family, k.Type}]; ok {
		return p
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

// networks are the networks a request may name (as net.Listen does): the socket type
// and the address families each needs.
var networks = map[string]struct {
	typ      int
	families []int
}{
	"tcp":        {syscall.SOCK_STREAM, []int{syscall.AF_INET, syscall.AF_INET6}},
	"tcp4":       {syscall.SOCK_STREAM, []int{syscall.AF_INET}},
	"tcp6":       {syscall.SOCK_STREAM, []int{syscall.AF_INET6}},
	"udp":        {syscall.SOCK_DGRAM, []int{syscall.AF_INET, syscall.AF_INET6}},
	"udp4":       {syscall.SOCK_DGRAM, []int{syscall.AF_INET}},
	"udp6":       {syscall.SOCK_DGRAM, []int{syscall.AF_INET6}},
	"unix":       {syscall.SOCK_STREAM, []int{syscall.AF_UNIX}},
	"unixpacket": {syscall.SOCK_SEQPACKET, []int{syscall.AF_UNIX}},
	"unixgram":   {syscall.SOCK_DGRAM, []int{syscall.AF_UNIX}},
}

// spec returns the socket type and families network needs.
func (w want) spec() (typ int, families []int, err error) {
	n, ok := networks[w.network]
	if !ok {
		return 0, nil, fmt.Errorf("network %q is not supported (use tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixpacket or unixgram)", w.network)
	}
	return n.typ, n.families, nil
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

// Matches reports whether k is a socket of network bound to address, as Listen
// matches an inherited socket to a request: a host name is resolved, and port 0
// (any port) never matches.
func Matches(network, address string, k Kind) bool {
	return want{network: network, address: address, packet: packetNetwork(network)}.matches(k)
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
