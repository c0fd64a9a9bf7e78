//go:build linux

package handoverquic

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestForgedPacketsDropped: datagrams that are not the line's — empty, truncated,
// malformed headers, connection IDs that fail the check, connection IDs of a
// generation that is not alive — are dropped and counted by the generation that
// reads them, never handed to a transport (which might answer with a stateless
// reset); the connections of the live generations carry on.
func TestForgedPacketsDropped(t *testing.T) {
	checkLeaks(t)
	line, g1, p, ctx := servingLine(t, 20*time.Second)
	old := dialDeaf(ctx, t, line, p) // stays on generation 1: its packets are forwarded
	if gen := old.ping(ctx, t, line); gen != 1 {
		t.Fatalf("generation %d answered, want 1", gen)
	}
	g2 := line.takeOver(t, p)

	codec := newCIDCodec(&line.reset)
	cid := func(tag byte) []byte {
		b, _ := (&cidGenerator{codec: codec, tag: tag}).GenerateConnectionID()
		return b.Bytes()
	}
	randomCID := make([]byte, cidLen)
	rand.Read(randomCID)
	randomCID[0] = 1 // generation 1's tag, but not a connection ID of the line
	short := func(dcid []byte, size int) []byte {
		b := append([]byte{0x40}, dcid...)
		return append(b, make([]byte, size)...)
	}
	long := func(first byte, version uint32, dcid []byte, size int) []byte {
		b := []byte{first}
		b = binary.BigEndian.AppendUint32(b, version)
		b = append(b, byte(len(dcid)))
		b = append(b, dcid...)
		b = append(b, 0) // no source connection ID
		return append(b, make([]byte, size)...)
	}
	malformed := [][]byte{
		{},                                 // empty
		{0x40, 1, 2, 3},                    // short header, truncated connection ID
		{0xc0, 0, 0, 0},                    // long header, truncated version
		long(0xc0, 1, make([]byte, 21), 0), // v1 connection ID over 20 bytes
		long(0x80, 0, cid(1), 40),          // version negotiation
		long(0xc0, 1, cid(1), 0)[:9],       // long header cut inside the connection ID
	}
	notOurs := [][]byte{short(randomCID, 60), short(make([]byte, cidLen), 60)}
	unknownGen := [][]byte{short(cid(7), 60), short(cid(3), 60), long(0xe0, 1, cid(200), 1200)} // 3 is not started yet
	before := g2.sock.Stats()

	fake, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	for _, set := range [][][]byte{malformed, notOurs, unknownGen} {
		for _, b := range set {
			if _, err := fake.WriteToUDPAddrPort(b, line.addr.AddrPort()); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := before
	want.Malformed += uint64(len(malformed))
	want.NotOurs += uint64(len(notOurs))
	want.UnknownGeneration += uint64(len(unknownGen))
	waitFor(t, 5*time.Second, "the forged packets counted", func() bool {
		s := g2.sock.Stats()
		return s.Malformed >= want.Malformed && s.NotOurs >= want.NotOurs && s.UnknownGeneration >= want.UnknownGeneration
	})
	if s := g2.sock.Stats(); s.Malformed != want.Malformed || s.NotOurs != want.NotOurs || s.UnknownGeneration != want.UnknownGeneration {
		t.Errorf("generation 2 counted %+v, want %+v", s, want)
	}
	// Nothing was answered: no stateless reset, no version negotiation.
	fake.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := fake.ReadFromUDPAddrPort(make([]byte, 2000)); err == nil {
		t.Errorf("a forged packet was answered (%d bytes)", n)
	}
	// The connection on generation 1, through generation 2's forwarding, and a new
	// one on generation 2, carry on.
	if gen := old.ping(ctx, t, line); gen != 1 {
		t.Errorf("generation %d answered the old connection, want 1", gen)
	}
	if gen := dialQuiet(ctx, t, line, p, nil).ping(ctx, t, line); gen != 2 {
		t.Errorf("generation %d answered a new connection, want 2", gen)
	}
	if s := g1.sock.Stats(); s.Injected == 0 {
		t.Errorf("generation 1 got no forwarded packets: %+v", s)
	}
}

// TestForwardedRecordMalformed: a record on an inbox that is not a forwarding
// header and a packet is dropped and counted; the generation reads on, and gets
// the next packet with its client's address.
func TestForwardedRecordMalformed(t *testing.T) {
	checkLeaks(t)
	line := newTestLine(t, 20*time.Second)
	g1 := line.start()
	g2 := line.start()
	line.handOver(g2)
	waitFor(t, 5*time.Second, "generation 2 serving", g2.serving)
	peers := g2.sock.conn.livePeers()
	if len(peers) != 1 || peers[0].gen != 1 {
		t.Fatalf("generation 2 forwards to %v, want generation 1", peers)
	}
	for _, rec := range [][]byte{
		{1, 2, 3},                              // shorter than a header
		append([]byte{9}, make([]byte, 30)...), // unknown address family
	} {
		if _, err := peers[0].conn.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	from := netip.MustParseAddrPort("[::ffff:127.0.0.1]:9")
	if err := forwardTo(peers[0].raw, from, []byte{0x40, 7}); err != nil {
		t.Fatal(err)
	}
	// Nothing listens on generation 1's transport: read its connection here.
	g1.sock.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, addr, err := g1.sock.conn.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := addr.(*net.UDPAddr).AddrPort(); n != 2 || buf[1] != 7 || got != from {
		t.Errorf("read %d bytes %x from %v, want 2 bytes 4007 from %v (the address's form kept)", n, buf[:n], got, from)
	}
	if s := g1.sock.Stats(); s.Malformed != 2 || s.Injected != 1 {
		t.Errorf("generation 1 counted %+v, want 2 malformed, 1 injected", s)
	}
}
