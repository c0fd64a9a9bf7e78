package handoverquic

import (
	"encoding/binary"
	"errors"
)

// The router reads no more of a packet than the invariant parts of the QUIC
// header (RFC 8999) and, for the versions it knows, the long-header type: enough
// to find the destination connection ID and to tell the packets a client sends
// with a connection ID of its own choice (Initial, 0-RTT) from the others.

// kind is what the router needs to know of a packet.
type kind uint8

const (
	// kindShort is a short-header (1-RTT) packet: its destination connection ID
	// is one the server issued, cidLen bytes after the first byte.
	kindShort kind = iota
	// kindInitial is a long-header Initial packet (QUIC v1 or v2).
	kindInitial
	// kind0RTT is a long-header 0-RTT packet (QUIC v1 or v2).
	kind0RTT
	// kindHandshake is a long-header Handshake packet (QUIC v1 or v2).
	kindHandshake
	// kindOtherLong is any other long-header packet: Retry (which servers never
	// receive) or a version this parser does not know (the newest generation
	// answers those with Version Negotiation, as a single server would).
	kindOtherLong
	// kindNotQUIC is a datagram whose first two bits are 0: not QUIC (RFC 9443
	// multiplexing); quic-go hands those to Transport.ReadNonQUICPacket.
	kindNotQUIC
)

// QUIC versions whose long-header types the parser knows.
const (
	version1 = 0x00000001
	version2 = 0x6b3343cf // RFC 9369
)

// maxCIDLen is the longest connection ID QUIC v1 and v2 allow.
const maxCIDLen = 20

var (
	errEmpty           = errors.New("empty datagram")
	errTruncated       = errors.New("truncated QUIC header")
	errVersionNeg      = errors.New("version negotiation packet (servers never receive one)")
	errLongCID         = errors.New("connection ID longer than 20 bytes")
	errUnknownShortCID = errors.New("short header without the line's connection ID length")
)

// header is what parseHeader found.
type header struct {
	kind kind
	// dcid is the destination connection ID (a slice of the packet); nil for
	// kindNotQUIC.
	dcid []byte
}

// parseHeader reads the destination connection ID of a datagram's first packet.
// A short header's connection ID is cidLen bytes (the line's length). It never
// panics, whatever b holds (FuzzParseHeader).
func parseHeader(b []byte) (header, error) {
	if len(b) == 0 {
		return header{}, errEmpty
	}
	first := b[0]
	if first&0x80 == 0 { // short header
		if first&0x40 == 0 {
			return header{kind: kindNotQUIC}, nil
		}
		if len(b) < 1+cidLen {
			return header{}, errUnknownShortCID
		}
		return header{kind: kindShort, dcid: b[1 : 1+cidLen]}, nil
	}
	// Long header: first byte, version (4), DCID length (1), DCID, SCID length
	// (1), SCID.
	if len(b) < 6 {
		return header{}, errTruncated
	}
	version := binary.BigEndian.Uint32(b[1:5])
	if version == 0 {
		return header{}, errVersionNeg
	}
	dcidLen := int(b[5])
	known := version == version1 || version == version2
	if known && dcidLen > maxCIDLen {
		return header{}, errLongCID
	}
	if len(b) < 6+dcidLen+1 {
		return header{}, errTruncated
	}
	scidLen := int(b[6+dcidLen])
	if known && scidLen > maxCIDLen {
		return header{}, errLongCID
	}
	if len(b) < 6+dcidLen+1+scidLen {
		return header{}, errTruncated
	}
	h := header{kind: kindOtherLong, dcid: b[6 : 6+dcidLen]}
	if !known {
		return h, nil
	}
	typ := (first >> 4) & 0x3
	if version == version2 {
		// v2 rotates the types: Retry 0, Initial 1, 0-RTT 2, Handshake 3.
		typ = (typ + 3) & 0x3
	}
	switch typ {
	case 0:
		h.kind = kindInitial
	case 1:
		h.kind = kind0RTT
	case 2:
		h.kind = kindHandshake
	}
	return h, nil
}
