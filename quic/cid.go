package handoverquic

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"

	"github.com/quic-go/quic-go"
)

// Connection IDs. Every connection ID a generation issues is cidLen bytes:
//
//	byte 0      the generation's tag: its generation number modulo 256
//	bytes 1..8  random (crypto/rand): 64 bits, so that no two connection IDs of a
//	            generation collide and observers cannot guess the next one
//	bytes 9..11 a check: the first 3 bytes of AES-128(checkKey, tag ‖ random ‖ 0…),
//	            checkKey derived from the line's stateless-reset key
//
// The tag is a whole byte because generation numbers grow without bound but only a
// few generations are alive at once (the newest plus at most Config.MaxDraining
// draining ones, 3 by default): two live generations share a tag only if one of
// them is 256 generations older than the other, which MaxDraining rules out while
// it is below 255. A Socket refuses an older generation whose tag is its own or
// another live one's (see newSocket), so the tag never routes a packet to a
// generation that did not issue the connection ID.
//
// The check tells our connection IDs from the ones clients choose. A client picks
// the destination connection ID of its first Initial and 0-RTT packets itself
// (8 to 20 random bytes); without the check, one in 256 of those that are
// cidLen bytes long would carry a draining generation's tag and be routed away
// from the newest generation, and the handshake would fail. With it, one in 2^24
// of them passes as ours (and then also needs a live older tag). The check is not
// a secret from anyone who holds connection IDs: it only needs to be unlikely by
// accident. A forged connection ID that passes it reaches at most the generation
// it names, whose transport answers as any QUIC server answers an unknown
// connection ID.
const (
	cidLen       = 12
	cidRandomLen = 8
	cidCheckLen  = 3
)

// cidCodec makes and recognizes the line's connection IDs.
type cidCodec struct {
	block cipher.Block
}

// newCIDCodec derives the check key from the line's stateless-reset key.
func newCIDCodec(resetKey *quic.StatelessResetKey) *cidCodec {
	mac := hmac.New(sha256.New, resetKey[:])
	mac.Write([]byte("handover quic connection ID check v1"))
	key := mac.Sum(nil)[:16]
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 16-byte key is always a valid AES key
	}
	return &cidCodec{block: block}
}

// check computes the check bytes of cid (whose first 1+cidRandomLen bytes are set)
// into out.
func (c *cidCodec) check(cid []byte, out []byte) {
	var in, sum [aes.BlockSize]byte
	copy(in[:], cid[:1+cidRandomLen])
	c.block.Encrypt(sum[:], in[:])
	copy(out, sum[:cidCheckLen])
}

// tagOf returns the tag of cid if it is one of the line's connection IDs.
func (c *cidCodec) tagOf(cid []byte) (tag byte, ours bool) {
	if len(cid) != cidLen {
		return 0, false
	}
	var want [cidCheckLen]byte
	c.check(cid, want[:])
	if subtle.ConstantTimeCompare(want[:], cid[1+cidRandomLen:]) != 1 {
		return 0, false
	}
	return cid[0], true
}

// tagOf returns the tag of generation gen.
func tagOf(gen uint64) byte { return byte(gen) }

// cidGenerator is a generation's quic.ConnectionIDGenerator.
type cidGenerator struct {
	codec *cidCodec
	tag   byte
}

var _ quic.ConnectionIDGenerator = (*cidGenerator)(nil)

// GenerateConnectionID returns a new connection ID carrying the generation's tag.
func (g *cidGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [cidLen]byte
	b[0] = g.tag
	if _, err := rand.Read(b[1 : 1+cidRandomLen]); err != nil {
		return quic.ConnectionID{}, err
	}
	g.codec.check(b[:], b[1+cidRandomLen:])
	return quic.ConnectionIDFromBytes(b[:]), nil
}

// ConnectionIDLen is cidLen.
func (g *cidGenerator) ConnectionIDLen() int { return cidLen }
