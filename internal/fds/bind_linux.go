package fds

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

// Bind binds a new socket to address on network ("tcp", "udp", "unix"...; a stale
// unix socket file in the way is replaced, as Listen does) and returns it as a
// blocking, close-on-exec descriptor, as systemd passes sockets (a process that
// wants non-blocking I/O sets it itself): for a process that passes the socket on
// rather than serving on it (handover run's master). Closing the file does not
// remove a unix socket's file.
func Bind(network, address string) (*os.File, error) {
	ln, pc, err := listen(want{network: network, address: address, packet: packetNetwork(network)})
	if err != nil {
		return nil, err
	}
	var c io.Closer = ln
	if pc != nil {
		c = pc
	}
	defer c.Close()
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%s %s: %T has no descriptor", network, address, c)
	}
	f, err := handoff.DupFile(sc, network+":"+address)
	if err == nil {
		err = unix.SetNonblock(int(f.Fd()), false)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("%s %s: %w", network, address, err)
	}
	return f, nil
}
