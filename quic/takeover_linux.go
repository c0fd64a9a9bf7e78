package handoverquic

import (
	"encoding/binary"
	"errors"
	"os"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// The takeover. Only one generation reads the shared socket at a time, and the
// switch from one to the next goes through their inboxes, the same way whatever
// runs the line (graceful's own upgrades, where each generation starts the next,
// or a `handover run` master, which starts each generation itself):
//
//  1. A new generation, as its Socket is made, sends a takeover record to the
//     newest older generation alive (the one reading the socket, or the last that
//     did), with the send end of its own inbox. It reads nothing yet.
//  2. The older generation, when told to hand over (its successor took over, or
//     it is stopping), takes the last takeover record waiting in its inbox, stops
//     reading the shared socket, and answers on the sender's inbox with a routes
//     record: its routes table (see routes.go). A generation that is not reading
//     the socket (it drains already, or never read) answers a takeover at once.
//  3. The new generation reads the shared socket from the routes record on, or
//     from the moment the older generation's inbox hangs up (it died, or finished,
//     without answering).
//
// An older generation told to hand over with no takeover waiting (it is stopping
// for good, or the new generation serves no QUIC) drains while it keeps reading
// the shared socket: its connections' packets have nobody else to reach. A
// takeover that comes later still takes the socket over.
//
// A control record is a header of ctlHeaderLen bytes: ctlFamily (where a forwarded
// packet's header has its address family), the kind, and the sender's generation
// (8 bytes, big-endian); then the payload.
const (
	ctlFamily    = 0
	ctlTakeover  = 1 // with the sender's inbox send end (SCM_RIGHTS); no payload
	ctlRoutes    = 2 // payload: the routes table
	ctlHeaderLen = 10
)

// control is a control record read from an inbox.
type control struct {
	kind   byte
	gen    uint64
	routes []byte   // ctlRoutes: a copy of the payload
	send   *os.File // ctlTakeover: the sender's inbox send end
}

// parseControl reads a control record of n bytes whose payload went to p then
// ctlBuf; nil (and files closed) if it is malformed.
func parseControl(hdr []byte, n, flags int, p, ctlBuf []byte, files []*os.File) *control {
	if n < ctlHeaderLen || flags&unix.MSG_TRUNC != 0 {
		closeAll(files)
		return nil
	}
	c := &control{kind: hdr[1], gen: binary.BigEndian.Uint64(hdr[2:10])}
	switch c.kind {
	case ctlTakeover:
		if len(files) != 1 {
			closeAll(files)
			return nil
		}
		c.send = files[0]
		return c
	case ctlRoutes:
		closeAll(files)
		// The payload starts after the header's 10 bytes, inside the 19 read into
		// hdr, then continues in p and ctlBuf.
		payload := append([]byte(nil), hdr[ctlHeaderLen:min(n, fwdHeaderLen)]...)
		rest := n - fwdHeaderLen
		if rest > 0 {
			payload = append(payload, p[:min(rest, len(p))]...)
			if rest > len(p) {
				payload = append(payload, ctlBuf[:rest-len(p)]...)
			}
		}
		c.routes = payload
		return c
	}
	closeAll(files)
	return nil
}

// sendControl writes a control record on fd without waiting.
func sendControl(fd int, kind byte, gen uint64, payload []byte, file *os.File) error {
	hdr := make([]byte, ctlHeaderLen, ctlHeaderLen+len(payload))
	hdr[0], hdr[1] = ctlFamily, kind
	binary.BigEndian.PutUint64(hdr[2:], gen)
	var oob []byte
	if file != nil {
		raw, err := file.SyscallConn()
		if err != nil {
			return err
		}
		var ffd uintptr
		if err := raw.Control(func(fd uintptr) { ffd = fd }); err != nil {
			return err
		}
		oob = unix.UnixRights(int(ffd))
	}
	_, err := unix.SendmsgBuffers(fd, [][]byte{append(hdr, payload...)}, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	return err
}

// sendControlRaw writes a control record on a peer's send end.
func sendControlRaw(raw syscall.RawConn, kind byte, gen uint64, payload []byte, file *os.File) error {
	var serr error
	err := raw.Write(func(fd uintptr) bool {
		serr = sendControl(int(fd), kind, gen, payload, file)
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

// askTakeover sends a takeover record to the newest older generation alive, and
// watches its inbox for a hang-up. It returns false if none is alive: this
// generation reads the shared socket at once.
func (c *packetConn) askTakeover() bool {
	peers := c.livePeers()
	sort.Slice(peers, func(i, j int) bool { return peers[i].gen > peers[j].gen })
	for _, p := range peers {
		err := sendControlRaw(p.raw, ctlTakeover, c.gen, nil, c.inboxSend)
		if err == nil {
			c.pred = p
			c.watching.Store(true)
			go c.watchHangUp(p)
			go c.awaitRoutes()
			return true
		}
		if isGone(err) {
			c.dropPeer(p)
		}
	}
	return false
}

// watchHangUp offers the socket to this generation once p's inbox hangs up (p
// ended without answering); it ends once the routes came (stopWatch) or at Close.
func (c *packetConn) watchHangUp(p *peer) {
	var buf [1]byte
	_ = p.raw.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_DONTWAIT|unix.MSG_PEEK)
		return err != unix.EAGAIN
	})
	if c.watching.CompareAndSwap(true, false) {
		c.offer(nil)
	}
}

// stopWatch ends watchHangUp: the routes came.
func (c *packetConn) stopWatch() {
	if c.watching.CompareAndSwap(true, false) && c.pred != nil {
		_ = c.pred.conn.SetReadDeadline(aLongTimeAgo)
	}
}

// offer tells the Socket it may read the shared socket: the predecessor's routes
// came (routes), or it hung up (nil).
func (c *packetConn) offer(routes []byte) {
	select {
	case c.offers <- routes:
	default:
	}
}

// awaitRoutes reads the inbox while the generation waits for the socket, until
// the routes come, the generation reads the socket (its predecessor hung up), or
// it closes.
func (c *packetConn) awaitRoutes() {
	buf := make([]byte, 2048)
	for {
		rec, err := receiveForwarded(c.inboxRaw, buf, c.ctlBuf)
		c.mu.Lock()
		waiting := c.waiting && !c.closed
		c.mu.Unlock()
		switch {
		case err == nil && rec.ctl != nil:
			c.onControl(rec.ctl)
			if rec.ctl.kind == ctlRoutes {
				return
			}
		case err == nil:
			c.stats.malformed.Add(1) // nobody forwards to a generation that never read
		case !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, errBadForward):
			return // closed
		}
		if !waiting {
			return
		}
	}
}

// onControl handles a control record read from the inbox while this generation
// does not read the shared socket.
func (c *packetConn) onControl(ctl *control) {
	switch ctl.kind {
	case ctlRoutes:
		c.stopWatch()
		c.offer(ctl.routes)
	case ctlTakeover:
		// Nothing to hand over: this generation does not read the socket.
		_ = handRoutes(ctl.send, c.gen, []byte{routesVersion})
		ctl.send.Close()
	}
}

// pendingTakeover takes what waits in the inbox of a generation that reads the
// shared socket (nobody forwards to it), and returns the send end of the last
// takeover record, or nil.
func (c *packetConn) pendingTakeover() *os.File {
	var last *os.File
	buf := make([]byte, 2048)
	for {
		var rec record
		var rerr error
		err := c.inboxRaw.Control(func(fd uintptr) {
			rec, rerr = receiveForwarded(nowConn(fd), buf, c.ctlBuf)
		})
		if err != nil || rerr != nil {
			return last
		}
		if rec.ctl != nil && rec.ctl.kind == ctlTakeover {
			if last != nil {
				last.Close()
			}
			last = rec.ctl.send
		}
	}
}

// nowConn is a syscall.RawConn of an fd the caller holds, whose Read never waits.
type nowConn int

func (c nowConn) Control(f func(fd uintptr)) error { f(uintptr(c)); return nil }
func (c nowConn) Read(f func(fd uintptr) bool) error {
	f(uintptr(c))
	return nil
}
func (c nowConn) Write(f func(fd uintptr) bool) error {
	f(uintptr(c))
	return nil
}

// handRoutes sends a routes record on send (a newer generation's inbox send end).
func handRoutes(send *os.File, gen uint64, routes []byte) error {
	raw, err := send.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) { serr = sendControl(int(fd), ctlRoutes, gen, routes, nil) })
	if err != nil {
		return err
	}
	return serr
}

// watchInbox knocks (once) when something arrives in the inbox of a generation
// that drains while it reads the shared socket: a takeover, at last.
func (c *packetConn) watchInbox() {
	if !c.inboxWatch.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer c.inboxWatch.Store(false)
		var buf [1]byte
		err := c.inboxRaw.Read(func(fd uintptr) bool {
			_, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_DONTWAIT|unix.MSG_PEEK)
			return err != unix.EAGAIN
		})
		if err == nil {
			select {
			case c.knock <- struct{}{}:
			default:
			}
		}
	}()
}

// inboxAlive reports whether the generation whose inbox send end is f is alive:
// its receive end is open (once it closes, the send end reads end-of-file).
func inboxAlive(f *os.File) bool {
	raw, err := f.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = raw.Control(func(fd uintptr) {
		var b [1]byte
		_, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		alive = rerr == unix.EAGAIN
	})
	return err == nil && alive
}

// peerAlive is inboxAlive for a peer.
func peerAlive(p *peer) bool {
	alive := false
	err := p.raw.Control(func(fd uintptr) {
		var b [1]byte
		_, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		alive = rerr == unix.EAGAIN
	})
	return err == nil && alive
}
