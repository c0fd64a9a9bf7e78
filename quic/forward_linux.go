package handoverquic

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Forwarding. Each generation has an inbox: a SOCK_SEQPACKET socketpair. It reads
// one end (the receive end) and keeps the other (the send end) only to pass it
// on: every newer generation gets a copy of the send end and writes there the
// packets it reads for this generation. A record is a forwarding header then the
// packet, in one sendmsg: one record per packet, never split, never merged. The
// receive end is this generation's alone, so when it ends (drained, deadline,
// crash) a write to its send end fails at once (EPIPE) and the writer forgets it.

// fwdHeaderLen is the length of the header before each forwarded packet: the
// address family (4 or 6), the client's port (2 bytes, big-endian) and its address
// (16 bytes; an IPv4 address in its first 4).
const fwdHeaderLen = 19

// fwdSendBuffer is the send buffer asked for the send end. Over a socketpair only
// the sender's buffer bounds the packets in flight (the receive queue's length
// limit does not apply to a connected pair); Linux caps it at net.core.wmem_max
// (twice that, as it doubles the value) unless the process may force it.
const fwdSendBuffer = 4 << 20

var errBadForward = errors.New("malformed forwarded record")

// newInbox makes an inbox: the receive end as a connection this generation reads,
// and the send end as a file to pass on.
func newInbox() (recv *net.UnixConn, send *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("inbox socketpair: %w", err)
	}
	if unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, fwdSendBuffer) != nil {
		// Without CAP_NET_ADMIN: the largest the system allows.
		_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, fwdSendBuffer)
	}
	rf := os.NewFile(uintptr(fds[0]), "quic-inbox")
	send = os.NewFile(uintptr(fds[1]), "quic-inbox-send")
	recv, err = unixConn(rf)
	rf.Close()
	if err != nil {
		send.Close()
		return nil, nil, err
	}
	return recv, send, nil
}

// unixConn makes a connection of a socketpair end (its own descriptor: f stays
// the caller's).
func unixConn(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("inbox: %s is a %T, not a unix socket", f.Name(), c)
	}
	return uc, nil
}

// putAddr writes the forwarding header for a client address.
func putAddr(hdr *[fwdHeaderLen]byte, ap netip.AddrPort) {
	a := ap.Addr()
	// The address keeps its form (an IPv4-mapped IPv6 address stays one): quic-go
	// would take a change of form for a change of path.
	hdr[1], hdr[2] = byte(ap.Port()>>8), byte(ap.Port())
	if a.Is4() {
		hdr[0] = 4
		v4 := a.As4()
		copy(hdr[3:], v4[:])
		clear(hdr[7:])
		return
	}
	hdr[0] = 6
	v6 := a.As16()
	copy(hdr[3:], v6[:])
}

// getAddr reads a forwarding header.
func getAddr(hdr []byte) (netip.AddrPort, error) {
	if len(hdr) < fwdHeaderLen {
		return netip.AddrPort{}, errBadForward
	}
	port := uint16(hdr[1])<<8 | uint16(hdr[2])
	switch hdr[0] {
	case 4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(hdr[3:7])), port), nil
	case 6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(hdr[3:19])), port), nil
	}
	return netip.AddrPort{}, errBadForward
}

// forwardTo writes one record on a send end without waiting: a full buffer (the
// older generation is not keeping up) drops the packet, as a full socket buffer
// would have, rather than stall the reader of the shared socket.
func forwardTo(raw syscall.RawConn, ap netip.AddrPort, pkt []byte) error {
	var hdr [fwdHeaderLen]byte
	putAddr(&hdr, ap)
	var serr error
	err := raw.Write(func(fd uintptr) bool {
		_, serr = unix.SendmsgBuffers(int(fd), [][]byte{hdr[:], pkt}, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

// record is what one read of an inbox got: a forwarded packet (its length in
// the caller's buffer and its client's address) or a control record (see
// takeover_linux.go).
type record struct {
	n    int
	from netip.AddrPort
	ctl  *control
}

// receiveForwarded reads one record from the receive end: a forwarded packet into
// p, or a control record (whose payload goes to ctlBuf). It waits as the
// connection's read deadline allows.
func receiveForwarded(raw syscall.RawConn, p, ctlBuf []byte) (record, error) {
	var hdr [fwdHeaderLen]byte
	oob := make([]byte, unix.CmsgSpace(4))
	var n, oobn, flags int
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.RecvmsgBuffers(int(fd), [][]byte{hdr[:], p, ctlBuf}, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return record{}, err
	}
	if rerr != nil {
		return record{}, rerr
	}
	files := receivedFiles(oob[:oobn])
	if n == 0 {
		// Every send end is closed, this generation's own included: it is closing.
		closeAll(files)
		return record{}, io.EOF
	}
	if hdr[0] == ctlFamily {
		return record{ctl: parseControl(hdr[:], n, flags, p, ctlBuf, files)}, nil
	}
	closeAll(files)
	if n < fwdHeaderLen || n > fwdHeaderLen+len(p) || flags&unix.MSG_TRUNC != 0 {
		return record{}, errBadForward
	}
	ap, err := getAddr(hdr[:])
	if err != nil {
		return record{}, err
	}
	return record{n: n - fwdHeaderLen, from: ap}, nil
}

// receivedFiles returns the descriptors that came with a record.
func receivedFiles(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var out []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			out = append(out, os.NewFile(uintptr(fd), "quic-inbox-send"))
		}
	}
	return out
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
