package h2

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// HPACK (RFC 7541), as much as a client of GET requests needs: it encodes requests
// with static-table indexes and raw literals, never touching the dynamic table, and
// decodes what a server sends in full (indexed fields, literals with and without
// indexing, dynamic table size updates, Huffman-coded strings).

// Field is one header field.
type Field struct {
	Name, Value string
}

// String returns "name: value".
func (f Field) String() string { return f.Name + ": " + f.Value }

// staticTable is RFC 7541 Appendix A; index i is staticTable[i-1].
var staticTable = [61]Field{
	{":authority", ""},
	{":method", "GET"},
	{":method", "POST"},
	{":path", "/"},
	{":path", "/index.html"},
	{":scheme", "http"},
	{":scheme", "https"},
	{":status", "200"},
	{":status", "204"},
	{":status", "206"},
	{":status", "304"},
	{":status", "400"},
	{":status", "404"},
	{":status", "500"},
	{"accept-charset", ""},
	{"accept-encoding", "gzip, deflate"},
	{"accept-language", ""},
	{"accept-ranges", ""},
	{"accept", ""},
	{"access-control-allow-origin", ""},
	{"age", ""},
	{"allow", ""},
	{"authorization", ""},
	{"cache-control", ""},
	{"content-disposition", ""},
	{"content-encoding", ""},
	{"content-language", ""},
	{"content-length", ""},
	{"content-location", ""},
	{"content-range", ""},
	{"content-type", ""},
	{"cookie", ""},
	{"date", ""},
	{"etag", ""},
	{"expect", ""},
	{"expires", ""},
	{"from", ""},
	{"host", ""},
	{"if-match", ""},
	{"if-modified-since", ""},
	{"if-none-match", ""},
	{"if-range", ""},
	{"if-unmodified-since", ""},
	{"last-modified", ""},
	{"link", ""},
	{"location", ""},
	{"max-forwards", ""},
	{"proxy-authenticate", ""},
	{"proxy-authorization", ""},
	{"range", ""},
	{"referer", ""},
	{"refresh", ""},
	{"retry-after", ""},
	{"server", ""},
	{"set-cookie", ""},
	{"strict-transport-security", ""},
	{"transfer-encoding", ""},
	{"user-agent", ""},
	{"vary", ""},
	{"via", ""},
	{"www-authenticate", ""},
}

// AppendField appends f to an HPACK header block: as an indexed field when the
// static table has f itself, else as a literal without indexing (RFC 7541 section
// 6.2.2) whose name is a static-table index when it can be. Strings are raw, never
// Huffman-coded; the dynamic table is never used.
func AppendField(dst []byte, f Field) []byte {
	name := 0
	for i, s := range staticTable {
		if s.Name != f.Name {
			continue
		}
		if s.Value == f.Value {
			return appendInt(dst, 0x80, 7, uint64(i+1))
		}
		if name == 0 {
			name = i + 1
		}
	}
	dst = appendInt(dst, 0x00, 4, uint64(name))
	if name == 0 {
		dst = appendString(dst, f.Name)
	}
	return appendString(dst, f.Value)
}

// appendInt appends i with an n-bit prefix (RFC 7541 section 5.1); first holds the
// bits of the first byte above the prefix.
func appendInt(dst []byte, first byte, n uint, i uint64) []byte {
	max := uint64(1)<<n - 1
	if i < max {
		return append(dst, first|byte(i))
	}
	dst = append(dst, first|byte(max))
	for i -= max; i >= 128; i >>= 7 {
		dst = append(dst, byte(i&0x7f|0x80))
	}
	return append(dst, byte(i))
}

// appendString appends s as a raw string literal (RFC 7541 section 5.2).
func appendString(dst []byte, s string) []byte {
	return append(appendInt(dst, 0x00, 7, uint64(len(s))), s...)
}

// DefaultTableSize is the dynamic table size a decoder starts with and allows at
// most: the SETTINGS_HEADER_TABLE_SIZE this client never changes.
const DefaultTableSize = 4096

// maxStringLen bounds a decoded string.
const maxStringLen = 1 << 20

var errTruncated = errors.New("h2: hpack: truncated header block")

// Decoder decodes the header blocks of one connection, in order: they share its
// dynamic table.
type Decoder struct {
	dyn  []Field // newest first
	size int     // of the entries, as RFC 7541 section 4.1 counts
	max  int     // the table's current maximum size
}

// NewDecoder returns a decoder with an empty dynamic table of DefaultTableSize.
func NewDecoder() *Decoder { return &Decoder{max: DefaultTableSize} }

// DynamicTable returns the dynamic table's entries, newest first (index 62 first).
func (d *Decoder) DynamicTable() []Field { return append([]Field(nil), d.dyn...) }

// Decode decodes one complete header block (RFC 7541 section 3), updating the
// dynamic table.
func (d *Decoder) Decode(block []byte) ([]Field, error) {
	var fields []Field
	p := block
	for len(p) > 0 {
		b := p[0]
		switch {
		case b&0x80 != 0: // indexed field (6.1)
			i, rest, err := readInt(p, 7)
			if err != nil {
				return nil, err
			}
			f, err := d.at(i)
			if err != nil {
				return nil, err
			}
			fields, p = append(fields, f), rest
		case b&0xe0 == 0x20: // dynamic table size update (6.3)
			if len(fields) > 0 {
				return nil, errors.New("h2: hpack: dynamic table size update after a header field")
			}
			n, rest, err := readInt(p, 5)
			if err != nil {
				return nil, err
			}
			if n > DefaultTableSize {
				return nil, fmt.Errorf("h2: hpack: dynamic table size update to %d, above the %d allowed", n, DefaultTableSize)
			}
			d.max, p = int(n), rest
			d.evict(0)
		default: // literals: with incremental indexing (6.2.1), without (6.2.2), never indexed (6.2.3)
			n, index := uint(4), false
			if b&0xc0 == 0x40 {
				n, index = 6, true
			}
			i, rest, err := readInt(p, n)
			if err != nil {
				return nil, err
			}
			var f Field
			if i == 0 {
				if f.Name, rest, err = readString(rest); err != nil {
					return nil, err
				}
			} else {
				nf, err := d.at(i)
				if err != nil {
					return nil, err
				}
				f.Name = nf.Name
			}
			if f.Value, rest, err = readString(rest); err != nil {
				return nil, err
			}
			if index {
				d.add(f)
			}
			fields, p = append(fields, f), rest
		}
	}
	return fields, nil
}

// at returns the field at index i of the static and dynamic tables (RFC 7541
// section 2.3.3).
func (d *Decoder) at(i uint64) (Field, error) {
	switch {
	case i == 0:
		return Field{}, errors.New("h2: hpack: index 0")
	case i <= uint64(len(staticTable)):
		return staticTable[i-1], nil
	case i-uint64(len(staticTable)) <= uint64(len(d.dyn)):
		return d.dyn[i-uint64(len(staticTable))-1], nil
	}
	return Field{}, fmt.Errorf("h2: hpack: index %d beyond the tables (%d dynamic entries)", i, len(d.dyn))
}

func entrySize(f Field) int { return len(f.Name) + len(f.Value) + 32 }

// add inserts f at the front of the dynamic table, evicting to make room (RFC 7541
// section 4.4).
func (d *Decoder) add(f Field) {
	n := entrySize(f)
	if n > d.max {
		d.dyn, d.size = d.dyn[:0], 0
		return
	}
	d.evict(n)
	d.dyn = append([]Field{f}, d.dyn...)
	d.size += n
}

// evict drops the oldest entries until room more bytes fit under d.max.
func (d *Decoder) evict(room int) {
	for len(d.dyn) > 0 && d.size+room > d.max {
		d.size -= entrySize(d.dyn[len(d.dyn)-1])
		d.dyn = d.dyn[:len(d.dyn)-1]
	}
}

// readInt reads an integer with an n-bit prefix (RFC 7541 section 5.1).
func readInt(p []byte, n uint) (uint64, []byte, error) {
	if len(p) == 0 {
		return 0, nil, errTruncated
	}
	max := uint64(1)<<n - 1
	i := uint64(p[0]) & max
	p = p[1:]
	if i < max {
		return i, p, nil
	}
	for shift := uint(0); ; shift += 7 {
		if len(p) == 0 {
			return 0, nil, errTruncated
		}
		if shift > 56 {
			return 0, nil, errors.New("h2: hpack: integer overflow")
		}
		b := p[0]
		p = p[1:]
		i += uint64(b&0x7f) << shift
		if b&0x80 == 0 {
			return i, p, nil
		}
	}
}

// readString reads a string literal, raw or Huffman-coded (RFC 7541 section 5.2).
func readString(p []byte) (string, []byte, error) {
	if len(p) == 0 {
		return "", nil, errTruncated
	}
	huff := p[0]&0x80 != 0
	n, p, err := readInt(p, 7)
	if err != nil {
		return "", nil, err
	}
	if n > maxStringLen {
		return "", nil, fmt.Errorf("h2: hpack: string of %d bytes", n)
	}
	if uint64(len(p)) < n {
		return "", nil, errTruncated
	}
	s, p := p[:n], p[n:]
	if !huff {
		return string(s), p, nil
	}
	d, err := HuffmanDecode(s)
	return d, p, err
}

// huffmanCode is the code of one symbol: its bits, right-aligned, and their number.
type huffmanCode struct {
	code uint32
	bits uint8
}

// huffmanNode is a node of the decoding tree: a leaf when sym >= 0.
type huffmanNode struct {
	next [2]int32
	sym  int16
}

var huffmanTree = sync.OnceValue(func() []huffmanNode {
	tree := []huffmanNode{{sym: -1}}
	for sym, c := range huffmanCodes {
		n := 0
		for i := int(c.bits) - 1; i >= 0; i-- {
			bit := c.code >> uint(i) & 1
			if tree[n].next[bit] == 0 {
				tree = append(tree, huffmanNode{sym: -1})
				tree[n].next[bit] = int32(len(tree) - 1)
			}
			n = int(tree[n].next[bit])
		}
		tree[n].sym = int16(sym)
	}
	return tree
})

// HuffmanDecode decodes a Huffman-coded string (RFC 7541 section 5.2 and Appendix
// B). The padding must be at most 7 bits, all ones; EOS must not appear.
func HuffmanDecode(p []byte) (string, error) {
	tree := huffmanTree()
	var sb strings.Builder
	n, depth, ones := 0, 0, true
	for _, b := range p {
		for i := 7; i >= 0; i-- {
			bit := b >> uint(i) & 1
			ones = ones && bit == 1
			depth++
			n = int(tree[n].next[bit])
			if n == 0 {
				return "", errors.New("h2: hpack: invalid Huffman code")
			}
			if sym := tree[n].sym; sym >= 0 {
				if sym == 256 {
					return "", errors.New("h2: hpack: EOS in a Huffman-coded string")
				}
				sb.WriteByte(byte(sym))
				n, depth, ones = 0, 0, true
			}
		}
	}
	if depth > 7 || !ones {
		return "", fmt.Errorf("h2: hpack: invalid Huffman padding (%d bits)", depth)
	}
	return sb.String(), nil
}

// HuffmanEncode encodes s with the Huffman code, padded with ones.
func HuffmanEncode(s string) []byte {
	var out []byte
	var acc uint64
	var nbits uint
	for i := 0; i < len(s); i++ {
		c := huffmanCodes[s[i]]
		acc = acc<<c.bits | uint64(c.code)
		nbits += uint(c.bits)
		for nbits >= 8 {
			nbits -= 8
			out = append(out, byte(acc>>nbits))
		}
	}
	if nbits > 0 {
		out = append(out, byte(acc<<(8-nbits))|byte(0xff>>nbits))
	}
	return out
}

// huffmanCodes is the Huffman code of RFC 7541 Appendix B, indexed by symbol
// (256 is EOS).
var huffmanCodes = [257]huffmanCode{
	{0x1ff8, 13}, {0x7fffd8, 23}, {0xfffffe2, 28}, {0xfffffe3, 28},
	{0xfffffe4, 28}, {0xfffffe5, 28}, {0xfffffe6, 28}, {0xfffffe7, 28},
	{0xfffffe8, 28}, {0xffffea, 24}, {0x3ffffffc, 30}, {0xfffffe9, 28},
	{0xfffffea, 28}, {0x3ffffffd, 30}, {0xfffffeb, 28}, {0xfffffec, 28},
	{0xfffffed, 28}, {0xfffffee, 28}, {0xfffffef, 28}, {0xffffff0, 28},
	{0xffffff1, 28}, {0xffffff2, 28}, {0x3ffffffe, 30}, {0xffffff3, 28},
	{0xffffff4, 28}, {0xffffff5, 28}, {0xffffff6, 28}, {0xffffff7, 28},
	{0xffffff8, 28}, {0xffffff9, 28}, {0xffffffa, 28}, {0xffffffb, 28},
	{0x14, 6}, {0x3f8, 10}, {0x3f9, 10}, {0xffa, 12},
	{0x1ff9, 13}, {0x15, 6}, {0xf8, 8}, {0x7fa, 11},
	{0x3fa, 10}, {0x3fb, 10}, {0xf9, 8}, {0x7fb, 11},
	{0xfa, 8}, {0x16, 6}, {0x17, 6}, {0x18, 6},
	{0x0, 5}, {0x1, 5}, {0x2, 5}, {0x19, 6},
	{0x1a, 6}, {0x1b, 6}, {0x1c, 6}, {0x1d, 6},
	{0x1e, 6}, {0x1f, 6}, {0x5c, 7}, {0xfb, 8},
	{0x7ffc, 15}, {0x20, 6}, {0xffb, 12}, {0x3fc, 10},
	{0x1ffa, 13}, {0x21, 6}, {0x5d, 7}, {0x5e, 7},
	{0x5f, 7}, {0x60, 7}, {0x61, 7}, {0x62, 7},
	{0x63, 7}, {0x64, 7}, {0x65, 7}, {0x66, 7},
	{0x67, 7}, {0x68, 7}, {0x69, 7}, {0x6a, 7},
	{0x6b, 7}, {0x6c, 7}, {0x6d, 7}, {0x6e, 7},
	{0x6f, 7}, {0x70, 7}, {0x71, 7}, {0x72, 7},
	{0xfc, 8}, {0x73, 7}, {0xfd, 8}, {0x1ffb, 13},
	{0x7fff0, 19}, {0x1ffc, 13}, {0x3ffc, 14}, {0x22, 6},
	{0x7ffd, 15}, {0x3, 5}, {0x23, 6}, {0x4, 5},
	{0x24, 6}, {0x5, 5}, {0x25, 6}, {0x26, 6},
	{0x27, 6}, {0x6, 5}, {0x74, 7}, {0x75, 7},
	{0x28, 6}, {0x29, 6}, {0x2a, 6}, {0x7, 5},
	{0x2b, 6}, {0x76, 7}, {0x2c, 6}, {0x8, 5},
	{0x9, 5}, {0x2d, 6}, {0x77, 7}, {0x78, 7},
	{0x79, 7}, {0x7a, 7}, {0x7b, 7}, {0x7ffe, 15},
	{0x7fc, 11}, {0x3ffd, 14}, {0x1ffd, 13}, {0xffffffc, 28},
	{0xfffe6, 20}, {0x3fffd2, 22}, {0xfffe7, 20}, {0xfffe8, 20},
	{0x3fffd3, 22}, {0x3fffd4, 22}, {0x3fffd5, 22}, {0x7fffd9, 23},
	{0x3fffd6, 22}, {0x7fffda, 23}, {0x7fffdb, 23}, {0x7fffdc, 23},
	{0x7fffdd, 23}, {0x7fffde, 23}, {0xffffeb, 24}, {0x7fffdf, 23},
	{0xffffec, 24}, {0xffffed, 24}, {0x3fffd7, 22}, {0x7fffe0, 23},
	{0xffffee, 24}, {0x7fffe1, 23}, {0x7fffe2, 23}, {0x7fffe3, 23},
	{0x7fffe4, 23}, {0x1fffdc, 21}, {0x3fffd8, 22}, {0x7fffe5, 23},
	{0x3fffd9, 22}, {0x7fffe6, 23}, {0x7fffe7, 23}, {0xffffef, 24},
	{0x3fffda, 22}, {0x1fffdd, 21}, {0xfffe9, 20}, {0x3fffdb, 22},
	{0x3fffdc, 22}, {0x7fffe8, 23}, {0x7fffe9, 23}, {0x1fffde, 21},
	{0x7fffea, 23}, {0x3fffdd, 22}, {0x3fffde, 22}, {0xfffff0, 24},
	{0x1fffdf, 21}, {0x3fffdf, 22}, {0x7fffeb, 23}, {0x7fffec, 23},
	{0x1fffe0, 21}, {0x1fffe1, 21}, {0x3fffe0, 22}, {0x1fffe2, 21},
	{0x7fffed, 23}, {0x3fffe1, 22}, {0x7fffee, 23}, {0x7fffef, 23},
	{0xfffea, 20}, {0x3fffe2, 22}, {0x3fffe3, 22}, {0x3fffe4, 22},
	{0x7ffff0, 23}, {0x3fffe5, 22}, {0x3fffe6, 22}, {0x7ffff1, 23},
	{0x3ffffe0, 26}, {0x3ffffe1, 26}, {0xfffeb, 20}, {0x7fff1, 19},
	{0x3fffe7, 22}, {0x7ffff2, 23}, {0x3fffe8, 22}, {0x1ffffec, 25},
	{0x3ffffe2, 26}, {0x3ffffe3, 26}, {0x3ffffe4, 26}, {0x7ffffde, 27},
	{0x7ffffdf, 27}, {0x3ffffe5, 26}, {0xfffff1, 24}, {0x1ffffed, 25},
	{0x7fff2, 19}, {0x1fffe3, 21}, {0x3ffffe6, 26}, {0x7ffffe0, 27},
	{0x7ffffe1, 27}, {0x3ffffe7, 26}, {0x7ffffe2, 27}, {0xfffff2, 24},
	{0x1fffe4, 21}, {0x1fffe5, 21}, {0x3ffffe8, 26}, {0x3ffffe9, 26},
	{0xffffffd, 28}, {0x7ffffe3, 27}, {0x7ffffe4, 27}, {0x7ffffe5, 27},
	{0xfffec, 20}, {0xfffff3, 24}, {0xfffed, 20}, {0x1fffe6, 21},
	{0x3fffe9, 22}, {0x1fffe7, 21}, {0x1fffe8, 21}, {0x7ffff3, 23},
	{0x3fffea, 22}, {0x3fffeb, 22}, {0x1ffffee, 25}, {0x1ffffef, 25},
	{0xfffff4, 24}, {0xfffff5, 24}, {0x3ffffea, 26}, {0x7ffff4, 23},
	{0x3ffffeb, 26}, {0x7ffffe6, 27}, {0x3ffffec, 26}, {0x3ffffed, 26},
	{0x7ffffe7, 27}, {0x7ffffe8, 27}, {0x7ffffe9, 27}, {0x7ffffea, 27},
	{0x7ffffeb, 27}, {0xffffffe, 28}, {0x7ffffec, 27}, {0x7ffffed, 27},
	{0x7ffffee, 27}, {0x7ffffef, 27}, {0x7fffff0, 27}, {0x3ffffee, 26},
	{0x3fffffff, 30}, // EOS
}
