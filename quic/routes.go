package handoverquic

import (
	"encoding/binary"
	"errors"
	"time"
)

// routes remembers, for a short while, which generation got the first Initial of
// a connection whose destination connection ID the client chose. The client keeps
// using that connection ID for its next Initial packets (a ClientHello too large
// for one packet, retransmissions) and its 0-RTT packets until the server's first
// Initial reaches it, one round trip later; if the socket changes hands in
// between, the new reader must send them where the first one went, or the
// handshake starts over on the new generation (it does not fail: long-header
// packets never draw a stateless reset). The generation that stops reading hands
// its table to the one that starts (lineage.handOff).
//
// Only Initial packets of at least 1200 bytes (the size clients must pad them to,
// RFC 9000 section 14.1) are recorded, and at most maxRoutes at once, so that a
// flood of spoofed Initials cannot grow the table without bound; past that, new
// client connection IDs are not recorded and simply go to the newest generation.
type routes struct {
	m   map[string]route
	now func() time.Time
}

// route is one entry.
type route struct {
	gen  uint64
	seen time.Time
}

const (
	// routeTTL is how long an entry lives: longer than a handshake may take
	// before the client switches to the server's connection ID (quic-go's
	// HandshakeIdleTimeout is 5 seconds).
	routeTTL = 10 * time.Second
	// maxRoutes bounds the table.
	maxRoutes = 1 << 16
	// minInitialSize is the least size of a datagram carrying a client's Initial.
	minInitialSize = 1200
	// maxRoutesRecord bounds the table as it travels (cut to fit): a record of a
	// SOCK_SEQPACKET socket must fit in its send buffer.
	maxRoutesRecord = 60 << 10
)

func newRoutes(now func() time.Time) *routes {
	return &routes{m: make(map[string]route), now: now}
}

// lookup returns the generation recorded for dcid.
func (r *routes) lookup(dcid []byte) (uint64, bool) {
	e, ok := r.m[string(dcid)]
	if !ok || r.now().Sub(e.seen) > routeTTL {
		return 0, false
	}
	return e.gen, true
}

// record remembers that gen got the Initial with dcid, unless the table is full
// of live entries.
func (r *routes) record(dcid []byte, gen uint64) {
	now := r.now()
	if len(r.m) >= maxRoutes {
		r.expire(now)
		if len(r.m) >= maxRoutes {
			return
		}
	}
	r.m[string(dcid)] = route{gen: gen, seen: now}
}

// expire drops the entries older than routeTTL.
func (r *routes) expire(now time.Time) {
	for k, e := range r.m {
		if now.Sub(e.seen) > routeTTL {
			delete(r.m, k)
		}
	}
}

// forget drops the entries of generation gen (it is gone).
func (r *routes) forget(gen uint64) {
	for k, e := range r.m {
		if e.gen == gen {
			delete(r.m, k)
		}
	}
}

// The table travels as: a version byte (1), then per entry the generation (8
// bytes, big-endian), the entry's age in milliseconds (4), the connection ID's
// length (1) and the connection ID.
const routesVersion = 1

// encode snapshots the live entries, in at most max bytes (the entries past it
// are left out: their clients' handshakes start over on the next generation).
func (r *routes) encode(max int) []byte {
	now := r.now()
	b := []byte{routesVersion}
	for k, e := range r.m {
		age := now.Sub(e.seen)
		if age > routeTTL || len(b)+13+len(k) > max {
			continue
		}
		b = binary.BigEndian.AppendUint64(b, e.gen)
		b = binary.BigEndian.AppendUint32(b, uint32(age.Milliseconds()))
		b = append(b, byte(len(k)))
		b = append(b, k...)
	}
	return b
}

// merge adds the entries of an encoded table (a predecessor's) to r; an entry r
// already has is kept.
func (r *routes) merge(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if b[0] != routesVersion {
		return errors.New("routes: unknown encoding version")
	}
	now := r.now()
	for b = b[1:]; len(b) > 0; {
		if len(b) < 13 {
			return errors.New("routes: truncated entry")
		}
		gen := binary.BigEndian.Uint64(b)
		age := time.Duration(binary.BigEndian.Uint32(b[8:])) * time.Millisecond
		n := int(b[12])
		if n > maxCIDLen || len(b) < 13+n {
			return errors.New("routes: truncated connection ID")
		}
		k := string(b[13 : 13+n])
		b = b[13+n:]
		if _, ok := r.m[k]; ok || age > routeTTL || len(r.m) >= maxRoutes {
			continue
		}
		r.m[k] = route{gen: gen, seen: now.Add(-age)}
	}
	return nil
}
