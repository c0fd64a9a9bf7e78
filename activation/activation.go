// Package activation gives a process its listening sockets by name, from the first
// source that has them:
//
//  1. systemd socket activation (LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, as in
//     sd_listen_fds(3)): a socket unit's FileDescriptorName=
//     is the name, and a unit without one passes its single socket unnamed;
//  2. a `handover run` master, or the previous generation of this server during an
//     upgrade (package graceful);
//  3. nothing inherited: the process binds the address itself, without SO_REUSEPORT,
//     so that every generation shares one socket and its accept queue.
//
// What was passed is checked when it is claimed: a descriptor that cannot serve what
// is asked for (a UDP socket for "tcp", a regular file, a socket that is not
// listening) is an error naming it, what was expected and what was found, never a
// silent fallback to a socket of its own. The environment is read once and cleared,
// so no program the server runs inherits it, and every inherited descriptor is
// close-on-exec.
//
// Binding a unix socket replaces a stale socket file that nobody accepts on (connect
// is refused), as a killed process leaves behind; a socket somebody serves, or a file
// that is not a socket, is an error.
//
// A server that should also upgrade itself without dropping a connection uses
// graceful.Upgrader, whose Listen is this one plus passing the socket on. On systems
// other than Linux nothing is inherited and the process binds its sockets itself.
package activation

import (
	"net"

	"github.com/seed-a7250cfa/handover/internal/fds"
)

// Listen returns a listener for name: the inherited socket with that name, else the
// inherited socket bound to network and address, else (systemd only) the single
// unnamed stream socket passed, else a socket bound to address. network is "tcp",
// "tcp4", "tcp6", "unix" or "unixpacket"; name may be empty. A malformed socket
// environment (LISTEN_FDS naming a descriptor that is not open, for example) makes
// every call fail with the reason: the process should exit rather than serve
// without the sockets it was given.
func Listen(name, network, address string) (net.Listener, error) {
	s, _ := fds.Inherit()
	return s.Listen(name, network, address)
}

// ListenPacket is Listen for datagram sockets: network is "udp", "udp4", "udp6" or
// "unixgram".
func ListenPacket(name, network, address string) (net.PacketConn, error) {
	s, _ := fds.Inherit()
	return s.ListenPacket(name, network, address)
}
