package handoverquic

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func longHeader(first byte, version uint32, dcid, scid []byte, payload int) []byte {
	b := []byte{first}
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	b = append(b, scid...)
	return append(b, make([]byte, payload)...)
}

func TestParseHeader(t *testing.T) {
	dcid := bytes.Repeat([]byte{0xab}, cidLen)
	client := bytes.Repeat([]byte{0xcd}, 17)
	for _, tc := range []struct {
		name string
		b    []byte
		kind kind
		dcid []byte
		err  error
	}{
		{"short", append([]byte{0x41}, append(dcid, 1, 2, 3)...), kindShort, dcid, nil},
		{"short, exactly the connection ID", append([]byte{0x5f}, dcid...), kindShort, dcid, nil},
		{"not QUIC", []byte{0x01, 2, 3}, kindNotQUIC, nil, nil},
		{"v1 Initial", longHeader(0xc3, version1, client, nil, 1200), kindInitial, client, nil},
		{"v1 0-RTT", longHeader(0xd3, version1, client, dcid, 10), kind0RTT, client, nil},
		{"v1 Handshake", longHeader(0xe3, version1, dcid, client, 10), kindHandshake, dcid, nil},
		{"v1 Retry", longHeader(0xf0, version1, dcid, client, 10), kindOtherLong, dcid, nil},
		{"v2 Initial", longHeader(0xd0, version2, client, nil, 10), kindInitial, client, nil},
		{"v2 0-RTT", longHeader(0xe0, version2, client, nil, 10), kind0RTT, client, nil},
		{"v2 Handshake", longHeader(0xf0, version2, dcid, nil, 10), kindHandshake, dcid, nil},
		{"v2 Retry", longHeader(0xc0, version2, dcid, nil, 10), kindOtherLong, dcid, nil},
		{"unknown version, long connection ID", longHeader(0xc0, 0x1a2a3a4a, bytes.Repeat([]byte{1}, 40), nil, 10), kindOtherLong, bytes.Repeat([]byte{1}, 40), nil},
		{"empty", nil, 0, nil, errEmpty},
		{"short, truncated", []byte{0x40, 1, 2}, 0, nil, errUnknownShortCID},
		{"long, truncated version", []byte{0xc0, 0, 0}, 0, nil, errTruncated},
		{"long, truncated connection ID", longHeader(0xc0, version1, dcid, nil, 0)[:10], 0, nil, errTruncated},
		{"long, no source connection ID length", longHeader(0xc0, version1, dcid, nil, 0)[:6+cidLen], 0, nil, errTruncated},
		{"long, truncated source connection ID", longHeader(0xc0, version1, dcid, client, 0)[:6+cidLen+4], 0, nil, errTruncated},
		{"v1, connection ID over 20 bytes", longHeader(0xc0, version1, make([]byte, 21), nil, 10), 0, nil, errLongCID},
		{"v1, source connection ID over 20 bytes", longHeader(0xc0, version1, dcid, make([]byte, 21), 10), 0, nil, errLongCID},
		{"version negotiation", longHeader(0x80, 0, dcid, nil, 8), 0, nil, errVersionNeg},
	} {
		h, err := parseHeader(tc.b)
		if err != tc.err || (err == nil && (h.kind != tc.kind || !bytes.Equal(h.dcid, tc.dcid))) {
			t.Errorf("%s: got kind %d dcid %x err %v, want kind %d dcid %x err %v", tc.name, h.kind, h.dcid, err, tc.kind, tc.dcid, tc.err)
		}
	}
}

// FuzzParseHeader: whatever the datagram, parseHeader returns without panicking,
// and a connection ID it finds lies inside the datagram, cidLen bytes for a short
// header and at most 20 for a known version.
func FuzzParseHeader(f *testing.F) {
	dcid := bytes.Repeat([]byte{0xab}, cidLen)
	f.Add(append([]byte{0x41}, dcid...))
	f.Add(longHeader(0xc3, version1, dcid, dcid, 30))
	f.Add(longHeader(0xd0, version2, dcid, nil, 3))
	f.Add([]byte{0xc0, 0, 0, 0, 1, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			return
		}
		if h.kind == kindNotQUIC {
			return
		}
		if len(h.dcid) > 0 && !within(b, h.dcid) {
			t.Fatalf("connection ID %x outside the datagram", h.dcid)
		}
		if h.kind == kindShort && len(h.dcid) != cidLen {
			t.Fatalf("short header connection ID of %d bytes", len(h.dcid))
		}
		if h.kind != kindShort && h.kind != kindOtherLong && len(h.dcid) > maxCIDLen {
			t.Fatalf("v1/v2 connection ID of %d bytes", len(h.dcid))
		}
	})
}

// within reports whether s is a slice of b.
func within(b, s []byte) bool {
	for i := range b {
		if &b[i] == &s[0] {
			return i+len(s) <= len(b)
		}
	}
	return false
}

// FuzzRoute: whatever a datagram holds, routing it in a generation with an older
// live generation neither panics nor delivers to this generation's transport a
// short-header packet whose connection ID is not this generation's.
func FuzzRoute(f *testing.F) {
	var key quic.StatelessResetKey
	codec := newCIDCodec(&key)
	mine, _ := (&cidGenerator{codec: codec, tag: 2}).GenerateConnectionID()
	f.Add(append([]byte{0x40}, mine.Bytes()...))
	f.Add(longHeader(0xc0, version1, mine.Bytes(), nil, 1200))
	f.Add(longHeader(0xc0, version1, []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil, 1200))
	f.Add([]byte{0x40, 2})
	theirs, _ := (&cidGenerator{codec: codec, tag: 1}).GenerateConnectionID()
	f.Add(append([]byte{0x40}, theirs.Bytes()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r router
		r.init(2, codec)
		older := &peer{gen: 1}
		r.peers.Store(&map[byte]*peer{1: older})
		var forwarded [][]byte
		r.send = func(p *peer, pkt []byte, _ netip.AddrPort) {
			if p != older {
				t.Fatalf("forwarded to %v", p)
			}
			forwarded = append(forwarded, pkt)
		}
		deliver := r.route(b, netip.AddrPort{})
		if deliver && len(forwarded) > 0 {
			t.Fatal("delivered and forwarded")
		}
		if len(b) == 0 || b[0]&0xc0 != 0x40 || (!deliver && len(forwarded) == 0) {
			return
		}
		// A short-header packet delivered here or forwarded to generation 1
		// carries a connection ID of that generation.
		want := byte(2)
		if !deliver {
			want = 1
		}
		if tag, ours := codec.tagOf(b[1 : 1+cidLen]); !ours || tag != want {
			t.Fatalf("a short-header packet for connection ID %x went to generation %d", b[1:1+cidLen], want)
		}
	})
}

// FuzzRoutesMerge: a predecessor's routes table, whatever it holds, is merged or
// refused without panicking, and merging what encode made gives the same table.
func FuzzRoutesMerge(f *testing.F) {
	r := newRoutes(time.Now)
	r.record([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 3)
	r.record(bytes.Repeat([]byte{9}, 20), 4)
	f.Add(r.encode(maxRoutesRecord))
	f.Add([]byte{routesVersion, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newRoutes(time.Now)
		if err := r.merge(b); err != nil {
			return
		}
		again := newRoutes(time.Now)
		if err := again.merge(r.encode(maxRoutesRecord)); err != nil || len(again.m) != len(r.m) {
			t.Fatalf("re-merging %d entries: %d, %v", len(r.m), len(again.m), err)
		}
	})
}

func TestConnectionIDs(t *testing.T) {
	var key quic.StatelessResetKey
	rand.Read(key[:])
	codec := newCIDCodec(&key)
	seen := map[string]bool{}
	for gen := uint64(1); gen < 600; gen += 37 {
		g := &cidGenerator{codec: codec, tag: tagOf(gen)}
		for range 100 {
			id, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatal(err)
			}
			b := id.Bytes()
			if len(b) != cidLen || g.ConnectionIDLen() != cidLen {
				t.Fatalf("connection ID of %d bytes", len(b))
			}
			if tag, ours := codec.tagOf(b); !ours || tag != byte(gen) {
				t.Fatalf("connection ID %x of generation %d: tag %d, ours %v", b, gen, tag, ours)
			}
			if seen[string(b)] {
				t.Fatalf("connection ID %x issued twice", b)
			}
			seen[string(b)] = true
			b[5] ^= 1
			if _, ours := codec.tagOf(b); ours {
				t.Fatalf("a changed connection ID %x passes the check", b)
			}
		}
	}
	// Another line's key: its connection IDs are not ours.
	var other quic.StatelessResetKey
	rand.Read(other[:])
	id, _ := (&cidGenerator{codec: newCIDCodec(&other), tag: 1}).GenerateConnectionID()
	if _, ours := codec.tagOf(id.Bytes()); ours {
		t.Errorf("another line's connection ID %x passes the check", id.Bytes())
	}
	// Random client-chosen connection IDs of our length: about one in 2^24 passes.
	passed := 0
	b := make([]byte, cidLen)
	for range 1 << 16 {
		rand.Read(b)
		if _, ours := codec.tagOf(b); ours {
			passed++
		}
	}
	if passed > 2 {
		t.Errorf("%d of 65536 random connection IDs passed the check", passed)
	}
}

func TestRoutesTable(t *testing.T) {
	now := time.Unix(1000, 0)
	r := newRoutes(func() time.Time { return now })
	a, b := []byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{8, 7, 6, 5, 4, 3, 2, 1, 0}
	r.record(a, 1)
	now = now.Add(4 * time.Second)
	r.record(b, 2)
	next := newRoutes(func() time.Time { return now })
	if err := next.merge(r.encode(maxRoutesRecord)); err != nil {
		t.Fatal(err)
	}
	if g, ok := next.lookup(a); !ok || g != 1 {
		t.Errorf("lookup(a) = %d, %v; want 1", g, ok)
	}
	now = now.Add(routeTTL - 2*time.Second) // a is past its TTL, b is not
	if _, ok := next.lookup(a); ok {
		t.Error("an entry past its TTL was found")
	}
	if g, ok := next.lookup(b); !ok || g != 2 {
		t.Errorf("lookup(b) = %d, %v; want 2", g, ok)
	}
	next.forget(2)
	if _, ok := next.lookup(b); ok {
		t.Error("a forgotten generation's entry was found")
	}
	for _, bad := range [][]byte{{9}, {routesVersion, 1, 2}, append([]byte{routesVersion}, make([]byte, 12)...)} {
		if err := newRoutes(time.Now).merge(bad); err == nil {
			t.Errorf("merge(%x) accepted", bad)
		}
	}
}
