package handoverquic

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// packetConn is the net.PacketConn a generation's quic.Transport reads and
// writes. It reads from one of two sources:
//
//   - the shared UDP socket, while this generation is the newest: every datagram
//     is routed (route): delivered to this generation's transport, forwarded to
//     the older generation whose tag its connection ID carries, or dropped;
//   - its inbox, once it has handed the socket over: the packets newer
//     generations forward to it, with their client's address.
//
// It writes on its own descriptor of the shared socket, whatever it reads.
// quic-go calls ReadFrom from one goroutine (Transport.listen); setReading
// switches the source from another, waking a blocked read with a past deadline.
type packetConn struct {
	sock  *net.UDPConn // this generation's descriptor of the shared socket
	inbox *net.UnixConn
	// inboxSend is the send end of the inbox, kept only to be passed on.
	inboxSend *os.File
	inboxRaw  syscall.RawConn

	// router routes what is read from the shared socket; its peers are swapped
	// whole under mu.
	router
	// gone is told the generation of a peer found dead (a forward failed).
	gone func(gen uint64)

	// The takeover (takeover_linux.go).
	ctlBuf     []byte        // the payload of control records past the caller's buffer
	offers     chan []byte   // the predecessor's routes (or nil: it hung up)
	knock      chan struct{} // something came to the inbox (watchInbox)
	pred       *peer         // the generation asked for the socket
	watching   atomic.Bool   // watchHangUp runs
	inboxWatch atomic.Bool   // watchInbox runs

	mu      sync.Mutex
	idle    *sync.Cond // signalled when inSock drops to 0
	reading bool       // the shared socket is the source
	// waiting: neither is, yet: the generation waits for its predecessor to hand
	// the socket over (awaitRoutes reads the inbox meanwhile); ReadFrom waits
	// until changed is closed.
	waiting  bool
	changed  chan struct{}
	inSock   int       // reads of the shared socket under way (0 or 1)
	deadline time.Time // the caller's read deadline
	closed   bool
}

// aLongTimeAgo wakes a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// newPacketConn takes sock (this generation's descriptor of the shared socket)
// and makes the generation's inbox.
func newPacketConn(sock *net.UDPConn, gen uint64, codec *cidCodec) (*packetConn, error) {
	recv, send, err := newInbox()
	if err != nil {
		return nil, err
	}
	raw, err := recv.SyscallConn()
	if err != nil {
		recv.Close()
		send.Close()
		return nil, err
	}
	c := &packetConn{
		sock: sock, inbox: recv, inboxSend: send, inboxRaw: raw,
		gone:    func(uint64) {},
		ctlBuf:  make([]byte, maxRoutesRecord),
		offers:  make(chan []byte, 1),
		waiting: true, changed: make(chan struct{}),
		knock: make(chan struct{}, 1),
	}
	c.router.init(gen, codec)
	c.router.send = c.forward
	c.idle = sync.NewCond(&c.mu)
	return c, nil
}

// addPeer adopts an older generation's inbox send end (f stays the caller's).
func (c *packetConn) addPeer(gen uint64, f *os.File) error {
	uc, err := unixConn(f)
	if err != nil {
		return err
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.peers.Load()
	if tagOf(gen) == c.tag || old[tagOf(gen)] != nil {
		uc.Close()
		return errTagInUse
	}
	m := make(map[byte]*peer, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[tagOf(gen)] = &peer{gen: gen, conn: uc, raw: raw}
	c.peers.Store(&m)
	return nil
}

var errTagInUse = errors.New("handoverquic: an older generation's tag is already in use (more than 255 generations alive?)")

// dropPeer forgets an older generation that is gone.
func (c *packetConn) dropPeer(p *peer) {
	c.mu.Lock()
	old := *c.peers.Load()
	if old[tagOf(p.gen)] != p {
		c.mu.Unlock()
		return
	}
	m := make(map[byte]*peer, len(old))
	for k, v := range old {
		if v != p {
			m[k] = v
		}
	}
	c.peers.Store(&m)
	c.mu.Unlock()
	p.conn.Close()
	c.routes.forget(p.gen)
	c.gone(p.gen)
}

// livePeers returns the older generations still alive.
func (c *packetConn) livePeers() []*peer {
	m := *c.peers.Load()
	out := make([]*peer, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out
}

// setReading makes the shared socket the source (true) or the inbox (false).
// Stopping returns once no read of the shared socket is under way any more: every
// datagram this generation read has been routed.
func (c *packetConn) setReading(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reading == on {
		return
	}
	c.reading = on
	if on {
		// Wake awaitRoutes, or a read of the inbox.
		_ = c.inbox.SetReadDeadline(aLongTimeAgo)
		if c.waiting {
			c.waiting = false
			c.change()
		}
		return
	}
	_ = c.sock.SetReadDeadline(aLongTimeAgo)
	for c.inSock > 0 {
		c.idle.Wait()
	}
}

// isReading reports whether the shared socket is the source.
func (c *packetConn) isReading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reading
}

// change wakes the reads that wait (c.mu is held).
func (c *packetConn) change() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// errWait tells ReadFrom to wait until wait is closed, or its deadline.
var errWait = errors.New("waiting for the socket")

// begin picks the source of the next read and arms its deadline; errWait if
// there is none yet.
func (c *packetConn) begin() (fromSock bool, wait <-chan struct{}, deadline time.Time, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, nil, time.Time{}, net.ErrClosed
	}
	if c.waiting {
		return false, c.changed, c.deadline, errWait
	}
	if c.reading {
		c.inSock++
		return true, nil, time.Time{}, c.sock.SetReadDeadline(c.deadline)
	}
	return false, nil, time.Time{}, c.inbox.SetReadDeadline(c.deadline)
}

// wait waits until the source may have changed, or deadline passes.
func wait(changed <-chan struct{}, deadline time.Time) error {
	if deadline.IsZero() {
		<-changed
		return nil
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-changed:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

// endSock ends a read of the shared socket.
func (c *packetConn) endSock() {
	c.mu.Lock()
	c.inSock--
	if c.inSock == 0 {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

// interrupted tells a failed read to try again: it was woken to switch sources,
// not by the caller's deadline or a close.
func (c *packetConn) interrupted(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	return c.deadline.IsZero() || time.Now().Before(c.deadline)
}

// ReadFrom returns the next packet for this generation's transport.
func (c *packetConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		fromSock, changed, deadline, err := c.begin()
		if err == errWait {
			err = wait(changed, deadline)
			if err == nil {
				continue
			}
		}
		if err != nil {
			return 0, nil, c.readErr(err)
		}
		if fromSock {
			n, ap, err := c.sock.ReadFromUDPAddrPort(p)
			deliver := err == nil && c.route(p[:n], ap)
			c.endSock()
			switch {
			case deliver:
				c.stats.received.Add(1)
				return n, net.UDPAddrFromAddrPort(ap), nil
			case err == nil || c.interrupted(err):
				continue
			}
			return 0, nil, c.readErr(err)
		}
		rec, err := receiveForwarded(c.inboxRaw, p, c.ctlBuf)
		switch {
		case err == nil && rec.ctl != nil:
			c.onControl(rec.ctl)
			continue
		case err == nil:
			c.stats.injected.Add(1)
			return rec.n, net.UDPAddrFromAddrPort(rec.from), nil
		case errors.Is(err, errBadForward):
			c.stats.malformed.Add(1)
			continue
		case c.interrupted(err):
			continue
		}
		return 0, nil, c.readErr(err)
	}
}

// readErr is the error ReadFrom returns: net.ErrClosed once closed, a timeout as
// a net.Error.
func (c *packetConn) readErr(err error) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		err = net.ErrClosed
	}
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return &net.OpError{Op: "read", Net: "udp", Addr: c.sock.LocalAddr(), Err: err}
}

// forward sends a packet to an older generation.
func (c *packetConn) forward(p *peer, pkt []byte, from netip.AddrPort) {
	err := forwardTo(p.raw, from, pkt)
	switch {
	case err == nil:
		c.stats.forwarded.Add(1)
	case isGone(err):
		// The generation ended: its receive end is closed.
		c.stats.stale.Add(1)
		c.dropPeer(p)
	default:
		// Its buffer is full (it is not keeping up): dropped, as a full socket
		// buffer would have dropped it.
		c.stats.forwardFailed.Add(1)
	}
}

// WriteTo sends a packet on the shared socket.
func (c *packetConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	return c.sock.WriteTo(b, addr)
}

// Close closes this generation's descriptors: its descriptor of the shared socket
// (the socket stays open in the other generations), its inbox, and the send ends
// of the older generations' inboxes.
func (c *packetConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.change()
	c.mu.Unlock()
	err := c.sock.Close()
	c.inbox.Close()
	c.inboxSend.Close()
	for _, p := range c.livePeers() {
		p.conn.Close()
	}
	return err
}

// LocalAddr is the shared socket's address.
func (c *packetConn) LocalAddr() net.Addr { return c.sock.LocalAddr() }

// SetDeadline sets the read and write deadlines.
func (c *packetConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline of ReadFrom, whatever its source.
func (c *packetConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	c.deadline = t
	c.change()
	if c.reading {
		return c.sock.SetReadDeadline(t)
	}
	return c.inbox.SetReadDeadline(t)
}

// SetWriteDeadline sets the deadline of WriteTo.
func (c *packetConn) SetWriteDeadline(t time.Time) error { return c.sock.SetWriteDeadline(t) }

// SyscallConn, SetReadBuffer and SetWriteBuffer are the shared socket's: quic-go
// uses them to set the Don't Fragment bit (path MTU discovery) and to raise the
// socket's buffers, settings of the socket that every generation shares. quic-go
// never reads or writes through them: without ReadMsgUDP and WriteMsgUDP this is
// not an OOBCapablePacketConn.
func (c *packetConn) SyscallConn() (syscall.RawConn, error) { return c.sock.SyscallConn() }

// SetReadBuffer sets the shared socket's receive buffer.
func (c *packetConn) SetReadBuffer(n int) error { return c.sock.SetReadBuffer(n) }

// SetWriteBuffer sets the shared socket's send buffer.
func (c *packetConn) SetWriteBuffer(n int) error { return c.sock.SetWriteBuffer(n) }

// isGone reports whether a forward failed because the older generation ended.
func isGone(err error) bool {
	return errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOTCONN)
}
