// Package rawhttp is a minimal HTTP/1.1 client for end-to-end tests that must
// see every failure.
//
// net/http's Client silently retries idempotent requests when a reused
// keep-alive connection turns out to be closed by the server, which hides
// exactly the drain bugs a zero-downtime restart must not have. This client
// never retries, never redials and never pools: one Conn is one TCP
// connection, and every error is returned to the caller, classifiable with
// Classify into Refused, Reset, EOF, Timeout or Other.
//
// Only loopback addresses (127.0.0.0/8, ::1, "localhost") are accepted.
package rawhttp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout is used when a timeout argument is zero or negative, so that
// no call can block forever.
const DefaultTimeout = 10 * time.Second

// MaxBody bounds the size of a response body this client will buffer.
const MaxBody = 16 << 20

// ErrNotReusable is returned by Do and Stream on a Conn that can no longer
// carry a request: the previous exchange failed, either side asked for
// Connection: close, or the Conn was closed. The caller must Dial again.
var ErrNotReusable = errors.New("rawhttp: connection not reusable (closed, failed, or Connection: close); dial again")

// CheckLoopback returns an error unless addr is a host:port whose host is a
// loopback IP literal or "localhost".
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("rawhttp: bad address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("rawhttp: refusing non-loopback address %q (only 127.0.0.0/8, [::1] and localhost)", addr)
	}
	return nil
}

// CloseHeader returns a header asking the server to close the connection
// after its response.
func CloseHeader() http.Header {
	return http.Header{"Connection": {"close"}}
}

// Response is one complete HTTP response.
type Response struct {
	Proto   string        // e.g. "HTTP/1.1"
	Status  int           // e.g. 200
	Header  http.Header   // canonicalized keys
	Body    []byte        // the whole (de-chunked) body
	Close   bool          // server said Connection: close, HTTP/1.0 without keep-alive, or body delimited by EOF
	Elapsed time.Duration // from writing the request to reading the last body byte
}

// PID returns the X-Pid header as an int or, without one, the number after the
// first "pid " or "pid=" in the body (as the examples write it); 0 if neither.
func (r *Response) PID() int {
	if r == nil {
		return 0
	}
	if v := r.Header.Get("X-Pid"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0
		}
		return n
	}
	body := string(r.Body)
	i := strings.Index(body, "pid ")
	if j := strings.Index(body, "pid="); i < 0 || j >= 0 && j < i {
		i = j
	}
	if i < 0 {
		return 0
	}
	digits := body[i+4:]
	end := strings.IndexFunc(digits, func(c rune) bool { return c < '0' || c > '9' })
	if end >= 0 {
		digits = digits[:end]
	}
	n, _ := strconv.Atoi(digits)
	return n
}

// Conn is one client TCP connection carrying sequential HTTP/1.1 requests.
// It is not safe for concurrent use.
type Conn struct {
	addr     string
	nc       net.Conn
	br       *bufio.Reader
	reusable bool
	closed   bool
	requests int
}

// Dial connects to addr (host:port on loopback) within timeout.
// A refused connection yields an error that Classify reports as Refused.
func Dial(addr string, timeout time.Duration) (*Conn, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return &Conn{addr: addr, nc: nc, br: bufio.NewReaderSize(nc, 16<<10), reusable: true}, nil
}

// NewConn wraps a connection dialled by other means (for example inside another
// network namespace); it is not checked for loopback.
func NewConn(nc net.Conn) *Conn {
	return &Conn{addr: nc.RemoteAddr().String(), nc: nc, br: bufio.NewReaderSize(nc, 16<<10), reusable: true}
}

// Get dials addr, sends one GET with Connection: close and returns the
// response. timeout bounds the dial and, separately, the exchange.
func Get(addr, path string, timeout time.Duration) (*Response, error) {
	c, err := Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Do(http.MethodGet, path, CloseHeader(), timeout)
}

// Reusable reports whether another request may be sent on c. It is false
// after any error, after a Connection: close exchange, and after Close.
func (c *Conn) Reusable() bool { return c.reusable && !c.closed }

// Requests returns how many requests have been written on c.
func (c *Conn) Requests() int { return c.requests }

// LocalAddr returns the client side address of the connection.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// Close closes the connection. It is idempotent.
func (c *Conn) Close() error {
	c.reusable = false
	if c.closed {
		return nil
	}
	c.closed = true
	return c.nc.Close()
}

// Do sends one request (no body) and reads the whole response. timeout
// bounds the whole exchange. header may be nil; a Host header is always
// sent, and header's Connection: close makes the Conn unusable afterwards.
//
// Do never retries: if the server closed the connection, the error
// (EOF or Reset per Classify) is returned. After any error the underlying
// connection is closed.
func (c *Conn) Do(method, path string, header http.Header, timeout time.Duration) (*Response, error) {
	return c.Send(method, path, header, nil, timeout)
}

// Send is Do with a request body, sent with its Content-Length right after the
// header (a POST or PUT as clients send them, in one write). It never retries
// either: a POST on a keep-alive connection the server closed fails.
func (c *Conn) Send(method, path string, header http.Header, body []byte, timeout time.Duration) (*Response, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return c.exchange(method, path, header, body, time.Now().Add(timeout), func() {}, nil)
}

// Stream is like Do but delivers the body incrementally: fn is called with
// each line (without its trailing "\n" or "\r\n") as soon as the line has
// arrived, and once more with any unterminated tail at the end. The slice
// is only valid during the call. If fn returns an error, reading stops and
// that error is returned (wrapped).
//
// idle bounds the wait for the response headers and, separately, for each
// piece of the body, so a slow stream of any total length can be read.
// The returned Response also holds the whole body.
func (c *Conn) Stream(method, path string, header http.Header, idle time.Duration, fn func(line []byte) error) (*Response, error) {
	if idle <= 0 {
		idle = DefaultTimeout
	}
	bump := func() { _ = c.nc.SetReadDeadline(time.Now().Add(idle)) }
	return c.exchange(method, path, header, nil, time.Now().Add(idle), bump, fn)
}

// exchange writes a request and reads a response. deadline is set once on
// the connection; bump is called before each body read (to extend a read
// deadline when streaming). lineFn, if non-nil, receives body lines.
func (c *Conn) exchange(method, path string, header http.Header, body []byte, deadline time.Time, bump func(), lineFn func([]byte) error) (*Response, error) {
	if !c.Reusable() {
		return nil, ErrNotReusable
	}
	// Pessimistic: only a clean keep-alive exchange makes c reusable again.
	c.reusable = false
	start := time.Now()
	resp, reqClose, err := c.roundTrip(method, path, header, body, deadline, bump, lineFn)
	if err != nil {
		c.Close()
		return nil, err
	}
	resp.Elapsed = time.Since(start)
	if resp.Close || reqClose {
		c.Close()
	} else {
		_ = c.nc.SetDeadline(time.Time{})
		c.reusable = true
	}
	return resp, nil
}

func (c *Conn) roundTrip(method, path string, header http.Header, body []byte, deadline time.Time, bump func(), lineFn func([]byte) error) (*Response, bool, error) {
	if err := c.nc.SetDeadline(deadline); err != nil {
		return nil, false, err
	}
	req, reqClose := buildRequest(c.addr, method, path, header, body)
	if _, err := c.nc.Write(req); err != nil {
		return nil, reqClose, fmt.Errorf("rawhttp: write request: %w", err)
	}
	c.requests++

	resp, err := c.readHead()
	if err != nil {
		return nil, reqClose, err
	}

	var pending []byte
	sink := func(p []byte) error {
		if len(resp.Body)+len(p) > MaxBody {
			return fmt.Errorf("rawhttp: body larger than %d bytes", MaxBody)
		}
		resp.Body = append(resp.Body, p...)
		if lineFn == nil {
			return nil
		}
		pending = append(pending, p...)
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				return nil
			}
			if err := lineFn(bytes.TrimSuffix(pending[:i], []byte("\r"))); err != nil {
				return fmt.Errorf("rawhttp: stream callback: %w", err)
			}
			pending = pending[i+1:]
		}
	}
	if err := c.readBody(method, resp, bump, sink); err != nil {
		return nil, reqClose, err
	}
	if lineFn != nil && len(pending) > 0 {
		if err := lineFn(pending); err != nil {
			return nil, reqClose, fmt.Errorf("rawhttp: stream callback: %w", err)
		}
	}
	return resp, reqClose, nil
}

func buildRequest(host, method, path string, header http.Header, body []byte) ([]byte, bool) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, host)
	keys := make([]string, 0, len(header))
	for k := range header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	reqClose, hasLen := false, false
	for _, k := range keys {
		if strings.EqualFold(k, "Host") {
			continue
		}
		for _, v := range header[k] {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
			if strings.EqualFold(k, "Connection") && hasToken(v, "close") {
				reqClose = true
			}
			if strings.EqualFold(k, "Content-Length") {
				hasLen = true
			}
		}
	}
	if !hasLen && (len(body) > 0 || method != http.MethodGet && method != http.MethodHead) {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes(), reqClose
}

// readHead reads the status line and headers, skipping 1xx interim responses.
func (c *Conn) readHead() (*Response, error) {
	for interim := 0; interim < 10; interim++ {
		line, err := c.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("rawhttp: server closed connection before response: %w", err)
			}
			return nil, fmt.Errorf("rawhttp: read status line: %w", err)
		}
		proto, rest, _ := strings.Cut(string(line), " ")
		codeStr, _, _ := strings.Cut(rest, " ")
		code, err := strconv.Atoi(codeStr)
		if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
			return nil, fmt.Errorf("rawhttp: malformed status line %q", line)
		}
		resp := &Response{Proto: proto, Status: code, Header: http.Header{}}
		for n := 0; ; n++ {
			line, err := c.readLine()
			if err != nil {
				return nil, fmt.Errorf("rawhttp: read headers: %w", unexpected(err))
			}
			if len(line) == 0 {
				break
			}
			k, v, ok := strings.Cut(string(line), ":")
			if !ok || n > 200 {
				return nil, fmt.Errorf("rawhttp: malformed header line %q", line)
			}
			resp.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		if code >= 200 || code == http.StatusSwitchingProtocols {
			conn := strings.Join(resp.Header.Values("Connection"), ",")
			resp.Close = hasToken(conn, "close") || (proto == "HTTP/1.0" && !hasToken(conn, "keep-alive"))
			return resp, nil
		}
	}
	return nil, errors.New("rawhttp: too many 1xx responses")
}

// readBody reads the body framed per RFC 9112 section 6.3 and passes it to sink.
func (c *Conn) readBody(method string, resp *Response, bump func(), sink func([]byte) error) error {
	switch {
	case method == http.MethodHead, resp.Status < 200, resp.Status == 204, resp.Status == 304:
		return nil
	case hasToken(strings.Join(resp.Header.Values("Transfer-Encoding"), ","), "chunked"):
		return c.readChunked(bump, sink)
	case resp.Header.Get("Content-Length") != "":
		n, err := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("rawhttp: bad Content-Length %q", resp.Header.Get("Content-Length"))
		}
		return c.copyN(n, bump, sink)
	}
	// Delimited by connection close.
	resp.Close = true
	buf := make([]byte, 32<<10)
	for {
		bump()
		n, err := c.br.Read(buf)
		if n > 0 {
			if err := sink(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("rawhttp: read body: %w", err)
		}
	}
}

func (c *Conn) readChunked(bump func(), sink func([]byte) error) error {
	for {
		bump()
		line, err := c.readLine()
		if err != nil {
			return fmt.Errorf("rawhttp: read chunk size: %w", unexpected(err))
		}
		sizeStr, _, _ := strings.Cut(string(line), ";")
		n, err := strconv.ParseInt(strings.TrimSpace(sizeStr), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("rawhttp: bad chunk size line %q", line)
		}
		if n == 0 {
			for i := 0; ; i++ { // trailers, then the final CRLF
				line, err := c.readLine()
				if err != nil {
					return fmt.Errorf("rawhttp: read trailer: %w", unexpected(err))
				}
				if len(line) == 0 {
					return nil
				}
				if i > 200 {
					return errors.New("rawhttp: too many trailer lines")
				}
			}
		}
		if err := c.copyN(n, bump, sink); err != nil {
			return err
		}
		line, err = c.readLine()
		if err != nil {
			return fmt.Errorf("rawhttp: read chunk end: %w", unexpected(err))
		}
		if len(line) != 0 {
			return fmt.Errorf("rawhttp: chunk not followed by CRLF: %q", line)
		}
	}
}

func (c *Conn) copyN(n int64, bump func(), sink func([]byte) error) error {
	if n > MaxBody {
		return fmt.Errorf("rawhttp: body length %d over limit %d", n, MaxBody)
	}
	buf := make([]byte, min(n, 32<<10))
	for n > 0 {
		bump()
		k, err := io.ReadFull(c.br, buf[:min(n, int64(len(buf)))])
		if k > 0 {
			if err := sink(buf[:k]); err != nil {
				return err
			}
			n -= int64(k)
		}
		if err != nil {
			return fmt.Errorf("rawhttp: read body (%d bytes missing): %w", n, unexpected(err))
		}
	}
	return nil
}

// readLine returns one line without its CRLF. The slice is valid until the
// next read. A partial line at EOF yields io.ErrUnexpectedEOF.
func (c *Conn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errors.New("rawhttp: line too long")
	}
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
}

// unexpected turns a bare io.EOF in the middle of a response into
// io.ErrUnexpectedEOF (both classify as EOF).
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// hasToken reports whether the comma-separated list v contains token,
// case-insensitively.
func hasToken(v, token string) bool {
	for _, t := range strings.Split(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}
