package handoverquic

import (
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
)

// router decides what becomes of each datagram the newest generation reads from
// the shared socket: delivered to its own transport, forwarded to the older
// generation whose tag the connection ID carries, or dropped. It is used by one
// goroutine at a time (the one reading the shared socket); peers may be swapped
// from others.
type router struct {
	gen   uint64
	tag   byte
	codec *cidCodec
	// routes is used by the reading goroutine while this generation reads the
	// shared socket, and by the Socket (after the reader stopped, before it
	// starts).
	routes *routes
	// peers maps a tag to an older live generation.
	peers atomic.Pointer[map[byte]*peer]
	// send forwards a packet to a peer.
	send  func(p *peer, pkt []byte, from netip.AddrPort)
	stats counters
}

// peer is an older generation: the send end of its inbox.
type peer struct {
	gen  uint64
	conn *net.UnixConn
	raw  syscall.RawConn
}

// counters are a Socket's Stats, kept with atomics.
type counters struct {
	received, forwarded, injected                        atomic.Uint64
	malformed, notOurs, unknownGen, forwardFailed, stale atomic.Uint64
}

// init sets a router up for generation gen, with no peers.
func (r *router) init(gen uint64, codec *cidCodec) {
	r.gen, r.tag, r.codec, r.routes = gen, tagOf(gen), codec, newRoutes(time.Now)
	r.peers.Store(&map[byte]*peer{})
}

// route returns true to deliver a datagram to this generation's transport;
// otherwise it was forwarded or dropped (and counted). A short-header packet is
// delivered only if its connection ID is this generation's: any other reaching
// quic-go would draw a stateless reset, valid for the generation that owns the
// connection ID since the key is the line's.
func (r *router) route(pkt []byte, from netip.AddrPort) bool {
	h, err := parseHeader(pkt)
	if err != nil {
		r.stats.malformed.Add(1)
		return false
	}
	switch h.kind {
	case kindNotQUIC:
		return true
	case kindShort:
		tag, ours := r.codec.tagOf(h.dcid)
		if !ours {
			r.stats.notOurs.Add(1)
			return false
		}
		return r.toTag(tag, pkt, from)
	}
	if tag, ours := r.codec.tagOf(h.dcid); ours {
		return r.toTag(tag, pkt, from)
	}
	// A connection ID the client chose: its Initial and 0-RTT packets until the
	// server's first Initial reaches it. They go where the first Initial went,
	// else here: the newest generation makes the new connections. (A long-header
	// packet never draws a stateless reset from quic-go.)
	if gen, ok := r.routes.lookup(h.dcid); ok && gen != r.gen {
		if p := (*r.peers.Load())[tagOf(gen)]; p != nil && p.gen == gen {
			r.send(p, pkt, from)
			return false
		}
	}
	if h.kind == kindInitial && len(pkt) >= minInitialSize {
		r.routes.record(h.dcid, r.gen)
	}
	return true
}

// toTag delivers a packet whose connection ID carries tag, or forwards it.
func (r *router) toTag(tag byte, pkt []byte, from netip.AddrPort) bool {
	if tag == r.tag {
		return true
	}
	p := (*r.peers.Load())[tag]
	if p == nil {
		r.stats.unknownGen.Add(1)
		return false
	}
	r.send(p, pkt, from)
	return false
}
