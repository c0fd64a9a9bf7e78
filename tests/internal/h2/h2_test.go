package h2

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
)

const wait = 10 * time.Second

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestIntegers: RFC 7541 C.1.
func TestIntegers(t *testing.T) {
	for _, c := range []struct {
		i    uint64
		n    uint
		want string
	}{{10, 5, "0a"}, {1337, 5, "1f9a0a"}, {42, 8, "2a"}, {127, 7, "7f00"}, {1 << 40, 7, "7f81ffffffff1f"}} {
		got := appendInt(nil, 0, c.n, c.i)
		if hex.EncodeToString(got) != c.want {
			t.Errorf("appendInt(%d, %d bits) = %x, want %s", c.i, c.n, got, c.want)
		}
		i, rest, err := readInt(got, c.n)
		if err != nil || i != c.i || len(rest) != 0 {
			t.Errorf("readInt(%x) = %d, %x, %v; want %d", got, i, rest, err, c.i)
		}
	}
	for _, bad := range []string{"", "1f", "1f9a", "1fffffffffffffffffffff7f"} {
		if _, _, err := readInt(unhex(t, bad), 5); err == nil {
			t.Errorf("readInt(%s): no error", bad)
		}
	}
}

// TestHuffman: the strings of RFC 7541 C.4 and C.6, every byte value, and invalid
// codes.
func TestHuffman(t *testing.T) {
	for s, want := range map[string]string{
		"www.example.com":               "f1e3c2e5f23a6ba0ab90f4ff",
		"no-cache":                      "a8eb10649cbf",
		"custom-key":                    "25a849e95ba97d7f",
		"custom-value":                  "25a849e95bb8e8b4bf",
		"private":                       "aec3771a4b",
		"Mon, 21 Oct 2013 20:13:21 GMT": "d07abe941054d444a8200595040b8166e082a62d1bff",
		"https://www.example.com":       "9d29ad171863c78f0b97c8e9ae82ae43d3",
		"307":                           "640eff",
	} {
		if got := hex.EncodeToString(HuffmanEncode(s)); got != want {
			t.Errorf("HuffmanEncode(%q) = %s, want %s", s, got, want)
		}
		if got, err := HuffmanDecode(unhex(t, want)); err != nil || got != s {
			t.Errorf("HuffmanDecode(%s) = %q, %v; want %q", want, got, err, s)
		}
	}
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	for _, s := range []string{"", string(all), string(bytes.Repeat(all, 3)[7:])} {
		if got, err := HuffmanDecode(HuffmanEncode(s)); err != nil || got != s {
			t.Errorf("round trip of %d bytes: %v, equal %v", len(s), err, got == s)
		}
	}
	for name, p := range map[string][]byte{
		"padding of 8 bits": append(HuffmanEncode("a"), 0xff), // "a" is 5 bits, then 3+8 bits of ones
		"padding of zeros":  {0x18},                           // "a" (00011) then 000
		"EOS":               {0xff, 0xff, 0xff, 0xff},         // EOS is 30 ones
	} {
		if got, err := HuffmanDecode(p); err == nil {
			t.Errorf("%s: %x decoded as %q, want an error", name, p, got)
		}
	}
}

// TestDecoderRFC: RFC 7541 C.4 (requests, Huffman) and C.6 (responses, Huffman,
// a 256-byte table with evictions), decoded in sequence on one decoder each.
func TestDecoderRFC(t *testing.T) {
	check := func(d *Decoder, block string, want ...Field) {
		t.Helper()
		got, err := d.Decode(unhex(t, block))
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("Decode(%s) = %v, %v; want %v", block, got, err, want)
		}
	}
	d := NewDecoder()
	check(d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", Field{":method", "GET"}, Field{":scheme", "http"}, Field{":path", "/"}, Field{":authority", "www.example.com"})
	check(d, "8286 84be 5886 a8eb 1064 9cbf", Field{":method", "GET"}, Field{":scheme", "http"}, Field{":path", "/"}, Field{":authority", "www.example.com"}, Field{"cache-control", "no-cache"})
	check(d, "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", Field{":method", "GET"}, Field{":scheme", "https"}, Field{":path", "/index.html"}, Field{":authority", "www.example.com"}, Field{"custom-key", "custom-value"})
	if want := []Field{{"custom-key", "custom-value"}, {"cache-control", "no-cache"}, {":authority", "www.example.com"}}; !slices.Equal(d.DynamicTable(), want) || d.size != 164 {
		t.Errorf("C.4 dynamic table %v (size %d), want %v (164)", d.DynamicTable(), d.size, want)
	}

	d = NewDecoder()
	d.max = 256
	loc, cc := Field{"location", "https://www.example.com"}, Field{"cache-control", "private"}
	check(d, "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
		Field{":status", "302"}, cc, Field{"date", "Mon, 21 Oct 2013 20:13:21 GMT"}, loc)
	check(d, "4883 640e ffc1 c0bf", Field{":status", "307"}, cc, Field{"date", "Mon, 21 Oct 2013 20:13:21 GMT"}, loc)
	cookie := Field{"set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"}
	check(d, "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
		Field{":status", "200"}, cc, Field{"date", "Mon, 21 Oct 2013 20:13:22 GMT"}, loc, Field{"content-encoding", "gzip"}, cookie)
	if want := []Field{cookie, {"content-encoding", "gzip"}, {"date", "Mon, 21 Oct 2013 20:13:22 GMT"}}; !slices.Equal(d.DynamicTable(), want) || d.size != 215 {
		t.Errorf("C.6 dynamic table %v (size %d), want %v (215)", d.DynamicTable(), d.size, want)
	}
}

func TestDecoderErrors(t *testing.T) {
	for name, block := range map[string]string{
		"index 0":                     "80",
		"index beyond the tables":     "be",
		"truncated string":            "0004 6e61 6d65 05 7661",
		"size update above the limit": "3fe2 1f",
		"size update after a field":   "82 20",
		"invalid Huffman":             "0083 ffff ff 00",
	} {
		if got, err := NewDecoder().Decode(unhex(t, block)); err == nil {
			t.Errorf("%s: %s decoded as %v, want an error", name, block, got)
		}
	}
	// A size update to 0 empties the table.
	d := NewDecoder()
	if _, err := d.Decode(unhex(t, "4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")); err != nil || len(d.DynamicTable()) != 1 {
		t.Fatalf("literal with indexing: %v, table %v", err, d.DynamicTable())
	}
	if _, err := d.Decode(unhex(t, "20 be")); err == nil {
		t.Errorf("index 62 after a size update to 0: no error")
	}
}

// TestAppendField: static indexes and raw literals, as the requests use them.
func TestAppendField(t *testing.T) {
	fields := []Field{{":method", "GET"}, {":scheme", "https"}, {":authority", "127.0.0.1:8080"}, {":path", "/stream?n=2"}, {"x-custom", "v"}}
	var block []byte
	for _, f := range fields {
		block = AppendField(block, f)
	}
	want := "82 87 010e" + hex.EncodeToString([]byte("127.0.0.1:8080")) + " 040b" + hex.EncodeToString([]byte("/stream?n=2")) + " 0008" + hex.EncodeToString([]byte("x-custom")) + "0176"
	if hex.EncodeToString(block) != strings.ReplaceAll(want, " ", "") {
		t.Errorf("block %x, want %s", block, want)
	}
	d := NewDecoder()
	if got, err := d.Decode(block); err != nil || !slices.Equal(got, fields) || len(d.DynamicTable()) != 0 {
		t.Errorf("decoded %v, %v (table %v); want %v and an empty table", got, err, d.DynamicTable(), fields)
	}
}

func TestFrames(t *testing.T) {
	in := []Frame{
		{Type: FrameHeaders, Flags: FlagEndHeaders | FlagPadded | FlagPriority, StreamID: 3, Payload: append([]byte{2, 0, 0, 0, 1, 16}, 'h', 'i', 0, 0)},
		{Type: FrameGoAway, Payload: []byte{0x80, 0, 0, 5, 0, 0, 0, 0, 'b', 'y', 'e'}},
		{Type: FrameData, Flags: FlagEndStream, StreamID: 0x7fffffff, Payload: bytes.Repeat([]byte{'x'}, MaxFrameSize)},
	}
	var wire []byte
	for _, f := range in {
		wire = AppendFrame(wire, f)
	}
	r := bytes.NewReader(wire)
	for _, want := range in {
		f, err := ReadFrame(r)
		if err != nil || f.Type != want.Type || f.Flags != want.Flags || f.StreamID != want.StreamID || !bytes.Equal(f.Payload, want.Payload) {
			t.Fatalf("read %v, %v; want %v", f, err, want)
		}
	}
	if _, err := ReadFrame(r); err != io.EOF {
		t.Errorf("after the last frame: %v, want EOF", err)
	}
	if p, err := in[0].content(); err != nil || string(p) != "hi" {
		t.Errorf("content of a padded HEADERS frame with priority: %q, %v", p, err)
	}
	if last, code, debug, err := parseGoAway(in[1]); err != nil || last != 5 || code != ErrCodeNo || debug != "bye" {
		t.Errorf("GOAWAY: %d %v %q %v", last, code, debug, err)
	}
	if s := in[1].String(); s != `GOAWAY stream=0 len=11 last_stream=5 code=NO_ERROR debug="bye"` {
		t.Errorf("String() = %s", s)
	}
	big := AppendFrame(nil, Frame{Type: FrameData, StreamID: 1, Payload: make([]byte, MaxFrameSize+1)})
	if _, err := ReadFrame(bytes.NewReader(big)); err == nil {
		t.Errorf("a frame above MaxFrameSize was read")
	}
	if _, err := ReadFrame(bytes.NewReader(wire[:15])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a cut frame: %v", err)
	}
}

// listen listens on a random loopback port below the ephemeral range.
func listen(t *testing.T) net.Listener {
	t.Helper()
	var err error
	for i := 0; i < 100; i++ {
		var ln net.Listener
		if ln, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(20000+mrand.IntN(12000))); err == nil {
			t.Cleanup(func() { ln.Close() })
			return ln
		}
	}
	t.Fatal(err)
	return nil
}

// server serves handler with net/http's HTTP/2 on a loopback port: TLS if tlsCfg is
// set, else unencrypted with prior knowledge.
func server(t *testing.T, handler http.Handler, tlsCfg *tls.Config, conf *http.HTTP2Config) (*http.Server, string) {
	t.Helper()
	ln := listen(t)
	p := new(http.Protocols)
	srv := &http.Server{Handler: handler, Protocols: p, HTTP2: conf, TLSConfig: tlsCfg}
	errc := make(chan error, 1)
	if tlsCfg != nil {
		p.SetHTTP2(true)
		go func() { errc <- srv.ServeTLS(ln, "", "") }()
	} else {
		p.SetUnencryptedHTTP2(true)
		go func() { errc <- srv.Serve(ln) }()
	}
	t.Cleanup(func() {
		srv.Close()
		if err := <-errc; err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, ln.Addr().String()
}

// TestAgainstNetHTTP: against net/http's server, the client reads headers encoded with
// the dynamic table and Huffman, bodies beyond the initial flow-control windows,
// concurrent streams, and sees a graceful shutdown as one GOAWAY (NO_ERROR) that
// names the stream still in flight, which then completes; the server closes the
// connection once it is quiet, and no stream can be opened after the GOAWAY.
func TestAgainstNetHTTP(t *testing.T) {
	cert, pool := testcert.New(t)
	for _, tc := range []string{"h2c", "TLS"} {
		t.Run(tc, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			mux := http.NewServeMux()
			mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Pid", "4242")
				w.Header().Set("X-Long", strings.Repeat("value ", 30))
				fmt.Fprintf(w, "hello %s %s", r.Proto, r.URL.RequestURI())
			})
			mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
				w.Write(bytes.Repeat([]byte("0123456789"), 30000)) // 300 kB: beyond both 64 kB windows
			})
			mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "first\n")
				http.NewResponseController(w).Flush()
				<-release
				io.WriteString(w, "last\n")
			})
			var cfg *tls.Config
			if tc == "TLS" {
				cfg = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			srv, addr := server(t, mux, cfg, nil)
			var c *Conn
			var err error
			if tc == "TLS" {
				c, err = DialTLS(addr, &tls.Config{RootCAs: pool}, wait)
			} else {
				c, err = Dial(addr, wait)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var streams []*Stream
			for _, path := range []string{"/hello", "/big", "/hello?again", "/nothing"} {
				s, err := c.Get(path)
				if err != nil {
					t.Fatal(err)
				}
				streams = append(streams, s)
			}
			for i, want := range []struct {
				status int
				body   string
			}{{200, "hello HTTP/2.0 /hello"}, {200, strings.Repeat("0123456789", 30000)}, {200, "hello HTTP/2.0 /hello?again"}, {404, "404 page not found\n"}} {
				r, err := streams[i].Wait(wait)
				if err != nil || r.Status != want.status || string(r.Body) != want.body {
					t.Fatalf("stream %d: %v, status %d, %d bytes; want %d with %d bytes", streams[i].ID, err, r.Status, len(r.Body), want.status, len(want.body))
				}
				if r.StreamID != uint32(2*i+1) || (want.status == 200 && i != 1 && (r.PID() != 4242 || r.Get("x-long") != strings.Repeat("value ", 30))) {
					t.Errorf("stream %d: header %v", r.StreamID, r.Header)
				}
			}
			hold, err := c.Get("/hold")
			if err != nil {
				t.Fatal(err)
			}
			if err := hold.WaitData(len("first\n"), wait); err != nil {
				t.Fatal(err)
			}
			if c.Settings() < 1 || c.Frames(FrameWindowUpdate) < 1 {
				t.Errorf("%d SETTINGS and %d WINDOW_UPDATE frames from the server", c.Settings(), c.Frames(FrameWindowUpdate))
			}

			shut := make(chan error, 1)
			go func() { shut <- srv.Shutdown(context.Background()) }()
			g, err := c.WaitGoAway(wait)
			if err != nil {
				t.Fatal(err)
			}
			if g.Code != ErrCodeNo || g.LastStreamID != hold.ID || !slices.Equal(g.Open, []uint32{hold.ID}) {
				t.Errorf("GOAWAY %+v, want NO_ERROR, last stream %d, open [%d]", g, hold.ID, hold.ID)
			}
			if _, err := c.Get("/hello"); err != ErrGoingAway {
				t.Errorf("a stream after GOAWAY: %v, want ErrGoingAway", err)
			}
			close(release)
			r, err := hold.Wait(wait)
			if err != nil || r.Status != 200 || string(r.Body) != "first\nlast\n" {
				t.Errorf("the stream in flight: %v, %d %q", err, r.Status, r.Body)
			}
			if err := c.WaitClosed(wait); err != io.EOF {
				t.Errorf("the connection ended with %v, want EOF (closed by the server)", err)
			}
			if err := <-shut; err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			if n := len(c.GoAways()); n != 1 {
				t.Errorf("%d GOAWAY frames, want 1:\n%s", n, strings.Join(c.Trace(), "\n"))
			}
		})
	}
}

// TestPingAndSettingsAcks: a server that pings an idle connection and closes it
// unless acknowledged keeps it open through several pings, so every PING (and the
// SETTINGS) was acknowledged.
func TestPingAndSettingsAcks(t *testing.T) {
	_, addr := server(t, http.NotFoundHandler(), nil, &http.HTTP2Config{SendPingTimeout: 20 * time.Millisecond, PingTimeout: 300 * time.Millisecond})
	c, err := Dial(addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.wait(wait, "3 PING frames", func() bool { return c.frames[FramePing] >= 3 || c.err != nil }); err != nil || c.Err() != nil {
		t.Fatalf("%v, connection: %v\n%s", err, c.Err(), strings.Join(c.Trace(), "\n"))
	}
	s, err := c.Get("/")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Wait(wait); err != nil || r.Status != 404 {
		t.Errorf("after the pings: %v, %+v", err, r)
	}
}

// TestDialTLSRequiresH2: a TLS server without HTTP/2 is not taken for one.
func TestDialTLSRequiresH2(t *testing.T) {
	cert, pool := testcert.New(t)
	ln := listen(t)
	tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	if c, err := DialTLS(ln.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}}, wait); err == nil {
		c.Close()
		t.Fatal("DialTLS succeeded against an HTTP/1-only server")
	}
	if _, err := Dial("192.0.2.1:80", wait); err == nil {
		t.Fatal("Dial accepted a non-loopback address")
	}
}
