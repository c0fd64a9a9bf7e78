package graceful

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// The h2Conn's framing, on a connection that records what is written and reads from
// a buffer: the first GOAWAY and the PING go between two frames, however net/http
// splits its frames into writes, and the ACK of the PING is seen however the
// client's bytes are split into reads. (The end-to-end behaviour is in
// server_h2_test.go.)

// memConn is a net.Conn that records writes and reads from r.
type memConn struct {
	net.Conn // nil: only Read and Write are used
	mu       sync.Mutex
	w        bytes.Buffer
	r        io.Reader
}

func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Write(p)
}

func (c *memConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *memConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.w.Bytes())
}

// frame returns an HTTP/2 frame.
func frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

// testH2Conn returns an h2Conn on mc, of a Server that does not drain, on which
// the client has sent a request.
func testH2Conn(mc *memConn) *h2Conn {
	h := &h2Conns{s: &Server{}, ackTimeout: time.Hour, conns: map[*h2Conn]struct{}{}}
	c := &h2Conn{Conn: mc, set: h, opaque: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, shutdown: func() {}, requested: true}
	h.conns[c] = struct{}{}
	return c
}

func (c *h2Conn) stateNow() h2State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// serverFrames is what net/http writes first: SETTINGS, WINDOW_UPDATE, then a
// response (HEADERS, a large DATA, an empty DATA with END_STREAM).
func serverFrames() (frames [][]byte, all []byte) {
	frames = [][]byte{
		frame(0x4, 0, 0, make([]byte, 6*5)),
		frame(0x8, 0, 0, []byte{0, 0x0f, 0, 1}),
		frame(0x1, 0x4, 1, []byte{0x88}),
		frame(0x0, 0, 1, bytes.Repeat([]byte("x"), 300)),
		frame(0x0, 0x1, 1, nil),
	}
	return frames, slices.Concat(frames...)
}

// firstStep is what the h2Conn puts between frames.
func firstStep(opaque [8]byte) []byte {
	return append(frame(0x7, 0, 0, []byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0}), frame(0x6, 0, 0, opaque[:])...)
}

// TestH2ConnInjectsBetweenFrames: announced at any byte of net/http's output (before
// the first, at a boundary, inside a header, inside a payload), with net/http's
// bytes written in pieces of any size, the GOAWAY and the PING come out at the
// first frame boundary after the SETTINGS frame and after the announcement, and
// every byte of net/http's goes out once, in order.
func TestH2ConnInjectsBetweenFrames(t *testing.T) {
	frames, all := serverFrames()
	var ends []int // where each frame ends
	for _, f := range frames {
		ends = append(ends, len(f)+func() int {
			if len(ends) == 0 {
				return 0
			}
			return ends[len(ends)-1]
		}())
	}
	for _, piece := range []int{1, 2, 7, 9, 10, 64, len(all)} {
		for at := 0; at <= len(all); at++ {
			mc := &memConn{}
			c := testH2Conn(mc)
			write := func(b []byte) {
				for len(b) > 0 {
					k := min(piece, len(b))
					n, err := c.Write(b[:k])
					if n != k || err != nil {
						t.Fatalf("Write of %d bytes: %d, %v", k, n, err)
					}
					b = b[k:]
				}
			}
			write(all[:at])
			c.set.mu.Lock()
			c.announce(time.Hour)
			c.set.mu.Unlock()
			write(all[at:])
			// The announcement's own goroutine writes when it was made between two
			// frames; wait until the frames are out.
			want := len(all) + len(firstStep(c.opaque))
			eventually(t, "the GOAWAY and the PING to be written", func() bool { return len(mc.written()) == want })
			boundary := 0
			for _, e := range ends {
				if e >= at {
					boundary = e
					break
				}
			}
			wantOut := slices.Concat(all[:boundary], firstStep(c.opaque), all[boundary:])
			if got := mc.written(); !bytes.Equal(got, wantOut) {
				t.Fatalf("pieces of %d, announced at byte %d: the frames went out as\n%x\nwant (first step at byte %d)\n%x", piece, at, got, boundary, wantOut)
			}
		}
	}
}

// TestH2ConnNothingInjectedWhenAnswered: frames still queued when the first step
// ends (the PING timed out before net/http wrote anything) are dropped: net/http's
// GOAWAY, which follows, must not come before them.
func TestH2ConnNothingInjectedWhenAnswered(t *testing.T) {
	_, all := serverFrames()
	mc := &memConn{}
	c := testH2Conn(mc)
	c.set.mu.Lock()
	c.announce(time.Hour)
	c.set.mu.Unlock()
	c.set.answered(c)
	if _, err := c.Write(all); err != nil {
		t.Fatal(err)
	}
	if got := mc.written(); !bytes.Equal(got, all) {
		t.Fatalf("wrote\n%x\nwant net/http's frames only\n%x", got, all)
	}
}

// TestH2ConnSeesPingAck: the client's bytes reach net/http unchanged (the client
// preface dropped over TLS, where net/http does not read it), however they are split;
// the first step ends with the ACK of the h2Conn's PING, not with another ACK.
func TestH2ConnSeesPingAck(t *testing.T) {
	opaque := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	other := frame(0x6, 0x1, 0, []byte("netHTTP!")) // an ACK of net/http's own PING
	ours := frame(0x6, 0x1, 0, opaque[:])
	body := slices.Concat(frame(0x4, 0, 0, nil), frame(0x1, 0x5, 1, []byte{0x82, 0x86, 0x84}), other, frame(0x6, 0, 0, opaque[:]))
	for _, tlsPreface := range []bool{false, true} {
		for _, piece := range []int{1, 3, 9, 17, 1000} {
			in := slices.Concat(body, ours, frame(0x4, 0x1, 0, nil))
			if tlsPreface {
				in = append(slices.Clone(clientPreface), in...)
			}
			mc := &memConn{r: &chunkReader{b: in, piece: piece}}
			c := testH2Conn(mc)
			c.preface = tlsPreface
			c.set.mu.Lock()
			c.announce(time.Hour)
			c.set.mu.Unlock()
			var got []byte
			buf := make([]byte, 64)
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if len(got) == len(body) && c.stateNow() != h2Announced {
					t.Fatalf("preface %v, pieces of %d: the first step ended before the ACK of its PING was read", tlsPreface, piece)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if want := slices.Concat(body, ours, frame(0x4, 0x1, 0, nil)); !bytes.Equal(got, want) {
				t.Fatalf("preface %v, pieces of %d: read\n%x\nwant\n%x", tlsPreface, piece, got, want)
			}
			if s := c.stateNow(); s != h2Answered {
				t.Errorf("preface %v, pieces of %d: state %d after the ACK, want answered", tlsPreface, piece, s)
			}
		}
	}
	mc := &memConn{r: bytes.NewReader([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))}
	c := testH2Conn(mc)
	c.preface = true
	if _, err := c.Read(make([]byte, 64)); err == nil {
		t.Error("a connection without the client preface was read from")
	}
}

// TestH2ConnWaitsForFirstRequest: on a connection whose client has not sent a
// request, the first GOAWAY waits for the first request's HEADERS (a client may have
// requests written but not sent, and may not send them after a GOAWAY); then it
// goes out between the next two frames. If the drain was taken back meanwhile, it
// never goes out.
func TestH2ConnWaitsForFirstRequest(t *testing.T) {
	_, all := serverFrames()
	settings := frame(0x4, 0, 0, make([]byte, 6*5))
	request := slices.Concat(frame(0x4, 0, 0, nil), frame(0x1, 0x5, 1, []byte{0x82, 0x86, 0x84}))
	for _, draining := range []bool{true, false} {
		pr, pw := io.Pipe()
		mc := &memConn{r: pr}
		c := testH2Conn(mc)
		c.requested = false
		c.set.s.drainer.draining.Store(true)
		c.set.mu.Lock()
		c.announce(time.Hour)
		c.set.mu.Unlock()
		if _, err := c.Write(settings); err != nil {
			t.Fatal(err)
		}
		if s := c.stateNow(); s != h2Waiting {
			t.Fatalf("state %d before any request, want waiting", s)
		}
		c.set.s.drainer.draining.Store(draining)
		go func() {
			pw.Write(request)
			pw.Close()
		}()
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(all[len(settings):]); err != nil {
			t.Fatal(err)
		}
		want := slices.Concat(settings, firstStep(c.opaque), all[len(settings):])
		if !draining {
			want = all
		}
		eventually(t, "every frame to be written", func() bool { return len(mc.written()) == len(want) })
		if got := mc.written(); !bytes.Equal(got, want) {
			t.Errorf("draining %v: wrote\n%x\nwant\n%x", draining, got, want)
		}
	}
}

// chunkReader returns b in pieces of at most piece bytes.
type chunkReader struct {
	b     []byte
	piece int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.piece)], r.b)
	r.b = r.b[n:]
	return n, nil
}
