// Package handoverquic keeps QUIC connections (HTTP/3 and raw QUIC, on quic-go)
// alive across the upgrades of a line of server generations run by package
// graceful. It is a module of its own, so that graceful does not depend on
// quic-go; its name differs from quic-go's quic so that both can be imported.
//
// # The problem
//
// A QUIC server has no accept queue to hand over and no kernel connection to
// inherit: every packet of every connection arrives on the one UDP socket, and
// only the process that made a connection can read it. When a new generation takes
// the socket, it gets the old generation's packets, does not know their
// connections, and drops them or answers with a stateless reset: the old
// connections time out or are reset mid-request.
//
// # How it works
//
// Every generation holds a descriptor of the same UDP socket (inherited like the
// TCP sockets: from systemd's ListenDatagram=, a `handover run` master, or the
// previous generation), but only the newest reads it. Every connection ID a
// generation issues carries its tag (its generation number modulo 256; see
// cid.go for why a byte suffices, and for the check bytes that tell the line's
// connection IDs from the ones clients choose). The newest generation reads each
// datagram's header, no more, and:
//
//   - delivers to its own quic.Transport the packets whose connection ID carries
//     its tag, new connections (Initial packets with a connection ID the client
//     chose), and datagrams that are not QUIC;
//   - forwards, with their client's address, the packets whose connection ID
//     carries the tag of an older generation still alive, over that generation's
//     inbox (a SOCK_SEQPACKET socketpair whose send end every newer generation
//     received); the older generation's transport reads them from there, and
//     writes its answers on its own descriptor of the shared socket;
//   - sends a client's next Initial and 0-RTT packets, which still carry the
//     connection ID the client chose, where its first Initial went (a table the
//     generation that stops reading hands to the one that starts);
//   - drops, and counts (Stats), whatever it cannot parse, short-header packets
//     whose connection ID is not the line's, and packets of a generation that is
//     not alive. No transport ever sees a short-header packet of a connection
//     that is not its own: it would answer with a stateless reset, and since the
//     stateless-reset key is the line's, that reset would be valid and kill the
//     connection.
//
// The stateless-reset key, the address-validation token key and the TLS
// session-ticket keys (graceful's Upgrader.KeepTLSSessions, on the tls.Config
// given to quic-go) are the line's, the same in every generation: a client
// resumes its TLS session, sends 0-RTT data and presents its token to any
// generation.
//
// # Serving
//
// A generation serves on its Socket in one of three ways:
//
//   - HTTP/3: Socket.ServeHTTP3 with the application's http3.Server;
//   - raw QUIC through the Socket's listeners (Socket.Listen, Socket.ListenEarly),
//     which keep count of the connections they accepted;
//   - raw QUIC on the Socket's quic.Transport directly (Socket.Transport), whose
//     connections the Socket does not know.
//
// Socket.Draining is closed when the generation starts to drain, as
// graceful.Drainer.Draining is.
//
// # What happens to a connection
//
// While its generation is the newest, a connection is served as by any quic-go
// server (at the cost below).
//
// At the handover (a new generation is ready and takes over), the old generation
// stops reading the shared socket and the new one starts; no datagram is read by
// both, and those that arrive in between wait in the socket's buffer. New
// connections reach the new generation. The old generation's connections stay
// with it (their packets are forwarded to it), and so do those whose handshake
// began before the handover, which its listeners still accept:
//
//   - HTTP/3 (ServeHTTP3): each connection is told to go away at once, with a
//     GOAWAY frame whose identifier (2^62-4) rejects no request, and is served
//     on: every request its client sent, even one sent before the client read
//     the GOAWAY, is answered. The client sends no new request on it: it opens a
//     new connection, which reaches the new generation, and closes this one once
//     its last answer has come. (quic-go's own http3.Server.Shutdown rejects, with
//     H3_REQUEST_REJECTED, the requests that cross its GOAWAY: see goaway.go for
//     how this package sends its GOAWAY instead.)
//   - raw QUIC through a Listener: served on. The application learns of the drain
//     from Socket.Draining and tells its clients to move in its own protocol's
//     way, as HTTP/3 does with GOAWAY.
//   - raw QUIC on the Transport: served on, until the deadline.
//
// The old generation finishes as soon as every connection its listeners (and
// ServeHTTP3) accepted has ended and the HTTP/3 handlers have returned, or at the
// drain deadline (or when too many generations drain at once, or at Close). Then
// the connections still open are closed: HTTP/3 ones with H3_NO_ERROR, a
// Listener's with the application error code and reason of its
// SetDeadlineError, both as a CONNECTION_CLOSE their clients see; those on the
// bare Transport without a word, when the transport closes. A raw QUIC generation
// with no Listener cannot know its connections: it always drains until the
// deadline. Packets for a finished generation's connections are dropped by the
// newest generation.
//
// If the successor dies during the drain (it crashed, or was killed), the old
// generation takes the socket back: it reads the shared socket again, serves new
// connections, and serves on its old ones, now without a deadline; HTTP/3
// connections told to go away stay so (a GOAWAY cannot be taken back), and
// Draining returns a new channel. The dead generation's connections are lost with
// it: their packets, whose tag no live generation carries, are dropped, and their
// clients time out (they are not reset).
//
// # The cost
//
// quic-go gets a net.PacketConn that is not a *net.UDPConn, so it reads and
// writes one datagram per system call: no recvmmsg batches, no GSO, no ECN bits,
// and no packet-info control messages, so that a socket bound to a wildcard
// address answers from the address the kernel's routing picks (bind the
// service's address on a host with several). It still sets the Don't Fragment
// bit (path MTU discovery) and the socket's buffer sizes through the shared
// socket. A forwarded packet costs one sendmsg and one recvmsg more, and a copy;
// BenchmarkReadForwarded against BenchmarkReadDirect measures it. An IPv6
// link-local client's zone is not forwarded.
//
// # Use
//
// One call on the process's graceful.Upgrader, before it is ready, gives the
// generation's Socket:
//
//	sock, err := handoverquic.Listen(u, "quic", "udp", "127.0.0.1:8443")
//	go sock.ServeHTTP3(&http3.Server{TLSConfig: tlsConf, Handler: h})
//
// The UDP socket comes through Upgrader.ListenPacket (from systemd's
// ListenDatagram=, a `handover run` master, the previous generation, or bound);
// the Socket drains with the Upgrader (the process does not finish before it), and
// takes the socket back if the Upgrader resumes. Give the tls.Config the line's
// session-ticket keys (Upgrader.KeepTLSSessions) for resumption and 0-RTT across
// generations. quic/cmd/handover-h3demo is a complete program.
//
// The generations settle which one reads the shared socket between themselves,
// through their inboxes (takeover_linux.go), the same under graceful's own
// upgrades and under a master; the keys and the inboxes of the live generations
// travel in the new generation's initial batch and wait in the fd store
// (carrier_linux.go).
package handoverquic
