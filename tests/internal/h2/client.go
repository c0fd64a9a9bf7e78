// Package h2 is a minimal HTTP/2 client for end-to-end tests that must see every
// frame.
//
// net/http's Transport (and golang.org/x/net/http2) handle a server's GOAWAY
// silently: they finish the streams in flight, open a new connection and retry what
// the server did not process. That hides whether a draining server said GOAWAY at
// all. This client hides nothing: a Conn is one connection (unencrypted HTTP/2 with
// prior knowledge, or TLS with ALPN "h2"); it writes the connection preface and
// SETTINGS, sends GET requests as HEADERS frames, and reads every frame on a
// goroutine of its own. It acknowledges SETTINGS and PING, replenishes flow-control
// windows, collects each stream's response (status, header fields, body, or
// RST_STREAM), and records every GOAWAY with the streams that were still open when
// it arrived. It never redials, retries or opens a stream after a GOAWAY.
//
// Only loopback addresses are accepted.
package h2

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// writeTimeout bounds each write on a connection.
const writeTimeout = 10 * time.Second

// maxTrace bounds the frames a Conn remembers for Trace.
const maxTrace = 512

// ErrGoingAway is returned by Get once the server has sent GOAWAY: a client must
// open new streams on a new connection.
var ErrGoingAway = errors.New("h2: the server sent GOAWAY on this connection: dial again")

// GoAway is a GOAWAY frame the server sent.
type GoAway struct {
	LastStreamID uint32  // the highest stream the server may have processed
	Code         ErrCode // ErrCodeNo for a graceful shutdown
	Debug        string  // the debug data
	// Open lists the streams of the connection that had not ended when the GOAWAY
	// arrived: the requests in flight.
	Open []uint32
	At   time.Time // when it was read, for messages
}

// Response is what the server answered on one stream.
type Response struct {
	StreamID uint32
	Status   int     // the :status of the final response header block; 0 if none
	Header   []Field // the final response header block, pseudo-header fields included
	Trailer  []Field // a trailing header block, if any
	Body     []byte  // the DATA received
	// Reset is set, with ResetCode, when the server reset the stream (RST_STREAM).
	Reset     bool
	ResetCode ErrCode
	// Err says why the stream ended without its END_STREAM flag: a reset, the
	// connection's end, or a GOAWAY whose last-stream-id excludes it. Nil when it
	// ended normally.
	Err error
	At  time.Time // when it ended, for messages
}

// Get returns the value of the first header field named name (lower case), or "".
func (r *Response) Get(name string) string {
	for _, f := range r.Header {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// PID returns the x-pid header field as an int, or 0 if absent or malformed.
func (r *Response) PID() int {
	n, _ := strconv.Atoi(r.Get("x-pid"))
	return n
}

// Stream is one request on a Conn.
type Stream struct {
	ID      uint32
	c       *Conn
	headers bool // the response header block has arrived
	ended   bool
	resp    Response
}

// Conn is one HTTP/2 client connection. Its methods are safe for concurrent use.
type Conn struct {
	nc        net.Conn
	authority string
	scheme    string

	wmu    sync.Mutex // serializes writes, and stream IDs with their HEADERS
	nextID uint32     // guarded by wmu

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change below
	streams  map[uint32]*Stream
	goaways  []GoAway
	settings int // SETTINGS frames received (not acks)
	frames   map[FrameType]int
	trace    []string
	err      error // why the reader ended; nil while it runs
	done     chan struct{}
}

// Dial opens an unencrypted HTTP/2 connection with prior knowledge (h2c) to addr,
// a loopback host:port, within timeout.
func Dial(addr string, timeout time.Duration) (*Conn, error) {
	if err := rawhttp.CheckLoopback(addr); err != nil {
		return nil, err
	}
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return NewConn(nc, addr, "http")
}

// DialTLS opens an HTTP/2 connection over TLS to addr, a loopback host:port, within
// timeout. cfg's NextProtos default to ["h2"]; the handshake must negotiate "h2".
func DialTLS(addr string, cfg *tls.Config, timeout time.Duration) (*Conn, error) {
	if err := rawhttp.CheckLoopback(addr); err != nil {
		return nil, err
	}
	cfg = cfg.Clone()
	if len(cfg.NextProtos) == 0 {
		cfg.NextProtos = []string{"h2"}
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if p := nc.(*tls.Conn).ConnectionState().NegotiatedProtocol; p != "h2" {
		nc.Close()
		return nil, fmt.Errorf("h2: TLS negotiated protocol %q, not \"h2\"", p)
	}
	return NewConn(nc, addr, "https")
}

// NewConn starts HTTP/2 on nc, an established connection (TLS having negotiated
// "h2", if TLS): it writes the preface and a SETTINGS frame (server push disabled)
// and starts reading. authority and scheme are sent with every request.
func NewConn(nc net.Conn, authority, scheme string) (*Conn, error) {
	c := &Conn{
		nc:        nc,
		authority: authority,
		scheme:    scheme,
		nextID:    1,
		changed:   make(chan struct{}),
		streams:   map[uint32]*Stream{},
		frames:    map[FrameType]int{},
		done:      make(chan struct{}),
	}
	// The preface goes first: the reader acknowledges the server's SETTINGS as soon
	// as they arrive, which over TLS can be before anything was written.
	if err := c.write([]byte(ClientPreface), settingsFrame(SettingEnablePush, 0)); err != nil {
		nc.Close()
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

// Get sends a GET request for path on a new stream.
func (c *Conn) Get(path string) (*Stream, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	switch {
	case c.err != nil:
		c.mu.Unlock()
		return nil, fmt.Errorf("h2: connection ended: %w", c.err)
	case len(c.goaways) > 0:
		c.mu.Unlock()
		return nil, ErrGoingAway
	}
	s := &Stream{ID: c.nextID, c: c}
	s.resp.StreamID = s.ID
	c.streams[s.ID] = s
	c.nextID += 2
	c.mu.Unlock()
	var block []byte
	for _, f := range []Field{{":method", "GET"}, {":scheme", c.scheme}, {":authority", c.authority}, {":path", path}} {
		block = AppendField(block, f)
	}
	if len(block) > MaxFrameSize {
		return nil, fmt.Errorf("h2: request header block of %d bytes", len(block))
	}
	if err := c.writeLocked(nil, Frame{Type: FrameHeaders, Flags: FlagEndStream | FlagEndHeaders, StreamID: s.ID, Payload: block}); err != nil {
		return nil, err
	}
	return s, nil
}

// GoAways returns the GOAWAY frames received so far, in order.
func (c *Conn) GoAways() []GoAway {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.goaways)
}

// WaitGoAway waits up to timeout for the first GOAWAY and returns it.
func (c *Conn) WaitGoAway(timeout time.Duration) (GoAway, error) {
	var g GoAway
	err := c.wait(timeout, "a GOAWAY", func() bool {
		if len(c.goaways) > 0 {
			g = c.goaways[0]
			return true
		}
		return false
	})
	return g, err
}

// Settings returns how many SETTINGS frames (not acknowledgements) the server sent.
func (c *Conn) Settings() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.settings
}

// Frames returns how many frames of type t were received.
func (c *Conn) Frames(t FrameType) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames[t]
}

// Trace returns the frames sent (">") and received ("<") so far, for messages
// (at most the first 512).
func (c *Conn) Trace() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.trace)
}

// Done returns a channel that is closed when the connection has ended: the server
// closed it, it failed, or Close was called.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (io.EOF: the server closed it cleanly), or
// nil while it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// WaitClosed waits up to timeout for the connection to end and returns Err.
func (c *Conn) WaitClosed(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
		return c.Err()
	case <-t.C:
		return fmt.Errorf("h2: the connection is still open after %v", timeout)
	}
}

// RemoteAddr returns the server's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Close closes the connection.
func (c *Conn) Close() error {
	err := c.nc.Close()
	<-c.done
	return err
}

// WaitHeaders waits up to timeout for the response header block (or the stream's
// end).
func (s *Stream) WaitHeaders(timeout time.Duration) error {
	return s.c.wait(timeout, fmt.Sprintf("the response headers of stream %d", s.ID), func() bool { return s.headers || s.ended })
}

// WaitData waits up to timeout until at least n bytes of the body have arrived (or
// the stream has ended).
func (s *Stream) WaitData(n int, timeout time.Duration) error {
	return s.c.wait(timeout, fmt.Sprintf("%d bytes of stream %d", n, s.ID), func() bool { return len(s.resp.Body) >= n || s.ended })
}

// Wait waits up to timeout for the stream to end and returns its response. The
// error is the response's Err, or a timeout.
func (s *Stream) Wait(timeout time.Duration) (*Response, error) {
	if err := s.c.wait(timeout, fmt.Sprintf("the end of stream %d", s.ID), func() bool { return s.ended }); err != nil {
		return nil, err
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	r := s.resp
	r.Body = slices.Clone(r.Body)
	return &r, r.Err
}

// wait waits until cond, evaluated with c.mu held, is true.
func (c *Conn) wait(timeout time.Duration, what string, cond func() bool) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		c.mu.Lock()
		ok, ch := cond(), c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("h2: timed out after %v waiting for %s", timeout, what)
		}
	}
}

// changedLocked wakes the waiters; c.mu is held.
func (c *Conn) changedLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Conn) traceLocked(dir string, f Frame) {
	if len(c.trace) < maxTrace {
		c.trace = append(c.trace, dir+" "+f.String())
	}
}

// write writes raw bytes (the preface) and frames at once.
func (c *Conn) write(raw []byte, frames ...Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(raw, frames...)
}

func (c *Conn) writeLocked(raw []byte, frames ...Frame) error {
	b := raw
	c.mu.Lock()
	for _, f := range frames {
		b = AppendFrame(b, f)
		c.traceLocked(">", f)
	}
	c.mu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("h2: write: %w", err)
	}
	return nil
}

// readLoop reads and handles frames until the connection ends.
func (c *Conn) readLoop() {
	err := c.read()
	c.nc.Close()
	c.mu.Lock()
	c.err = err
	for _, s := range c.streams {
		c.endLocked(s, fmt.Errorf("h2: the connection ended before the stream: %w", err))
	}
	c.changedLocked()
	c.mu.Unlock()
	close(c.done)
}

func (c *Conn) read() error {
	br := bufio.NewReader(c.nc)
	dec := NewDecoder()
	var block []byte // a header block awaiting CONTINUATION frames
	var blockFrame Frame
	for {
		f, err := ReadFrame(br)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.frames[f.Type]++
		c.traceLocked("<", f)
		c.changedLocked()
		c.mu.Unlock()
		if block != nil && (f.Type != FrameContinuation || f.StreamID != blockFrame.StreamID) {
			return fmt.Errorf("h2: %v in the middle of a header block of stream %d", f, blockFrame.StreamID)
		}
		switch f.Type {
		case FrameSettings:
			if f.StreamID != 0 || len(f.Payload)%6 != 0 || (f.Flags&FlagAck != 0 && len(f.Payload) > 0) {
				return fmt.Errorf("h2: malformed %v", f)
			}
			if f.Flags&FlagAck == 0 {
				c.mu.Lock()
				c.settings++
				c.changedLocked()
				c.mu.Unlock()
				if err := c.write(nil, Frame{Type: FrameSettings, Flags: FlagAck}); err != nil {
					return err
				}
			}
		case FramePing:
			if f.StreamID != 0 || len(f.Payload) != 8 {
				return fmt.Errorf("h2: malformed %v", f)
			}
			if f.Flags&FlagAck == 0 {
				if err := c.write(nil, Frame{Type: FramePing, Flags: FlagAck, Payload: f.Payload}); err != nil {
					return err
				}
			}
		case FrameGoAway:
			last, code, debug, err := parseGoAway(f)
			if err != nil {
				return err
			}
			c.goAway(GoAway{LastStreamID: last, Code: code, Debug: debug, At: time.Now()})
		case FrameHeaders, FrameContinuation:
			if f.StreamID == 0 || (f.Type == FrameContinuation && block == nil) {
				return fmt.Errorf("h2: unexpected %v", f)
			}
			p := f.Payload
			if f.Type == FrameHeaders {
				if p, err = f.content(); err != nil {
					return err
				}
				blockFrame = f
			}
			block = append(block, p...)
			if block == nil {
				block = []byte{}
			}
			if f.Flags&FlagEndHeaders == 0 {
				continue
			}
			fields, err := dec.Decode(block)
			block = nil
			if err != nil {
				return err
			}
			c.headers(blockFrame, fields)
		case FrameData:
			p, err := f.content()
			if err != nil {
				return err
			}
			c.data(f, p)
			if n := len(f.Payload); n > 0 {
				updates := []Frame{windowUpdate(0, n)}
				if f.Flags&FlagEndStream == 0 {
					updates = append(updates, windowUpdate(f.StreamID, n))
				}
				if err := c.write(nil, updates...); err != nil {
					return err
				}
			}
		case FrameRSTStream:
			if f.StreamID == 0 || len(f.Payload) != 4 {
				return fmt.Errorf("h2: malformed %v", f)
			}
			code := ErrCode(binary.BigEndian.Uint32(f.Payload))
			c.mu.Lock()
			if s := c.streams[f.StreamID]; s != nil {
				s.resp.Reset, s.resp.ResetCode = true, code
				c.endLocked(s, fmt.Errorf("h2: stream %d reset by the server: %v", s.ID, code))
			}
			c.mu.Unlock()
		case FramePushPromise:
			return fmt.Errorf("h2: %v although push is disabled", f)
		}
		// PRIORITY, WINDOW_UPDATE (this client sends no DATA) and unknown types
		// are ignored.
	}
}

// goAway records g and ends the streams above its last-stream-id: the server did not
// process them.
func (c *Conn) goAway(g GoAway) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, s := range c.streams {
		if !s.ended {
			g.Open = append(g.Open, id)
		}
	}
	slices.Sort(g.Open)
	c.goaways = append(c.goaways, g)
	for id, s := range c.streams {
		if id > g.LastStreamID {
			c.endLocked(s, fmt.Errorf("h2: stream %d not processed: GOAWAY with last-stream-id %d", id, g.LastStreamID))
		}
	}
	c.changedLocked()
}

// headers takes a decoded header block of f's stream.
func (c *Conn) headers(f Frame, fields []Field) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil || s.ended {
		return
	}
	if !s.headers {
		status := 0
		for _, fl := range fields {
			if fl.Name == ":status" {
				status, _ = strconv.Atoi(fl.Value)
			}
		}
		if status >= 100 && status < 200 {
			return // an interim response
		}
		s.headers, s.resp.Status, s.resp.Header = true, status, fields
	} else {
		s.resp.Trailer = fields
	}
	if f.Flags&FlagEndStream != 0 {
		c.endLocked(s, nil)
	}
	c.changedLocked()
}

// data takes the content of a DATA frame.
func (c *Conn) data(f Frame, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil || s.ended {
		return
	}
	s.resp.Body = append(s.resp.Body, p...)
	if f.Flags&FlagEndStream != 0 {
		c.endLocked(s, nil)
	}
	c.changedLocked()
}

// endLocked ends s with err (nil: END_STREAM); c.mu is held.
func (c *Conn) endLocked(s *Stream, err error) {
	if s.ended {
		return
	}
	s.ended, s.resp.Err, s.resp.At = true, err, time.Now()
	c.changedLocked()
}
