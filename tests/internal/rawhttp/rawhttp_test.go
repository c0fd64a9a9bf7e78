package rawhttp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const testTimeout = 5 * time.Second

// newServer starts an httptest server on 127.0.0.1 and records the remote
// address of every request.
func newServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var remotes []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes = append(remotes, r.RemoteAddr)
		mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), remotes...)
	}
}

func addrOf(srv *httptest.Server) string { return srv.Listener.Addr().String() }

func dial(t *testing.T, addr string) *Conn {
	t.Helper()
	c, err := Dial(addr, testTimeout)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawServer is a hand-written TCP server on 127.0.0.1 whose per-connection
// behaviour is given by handle. It counts accepted connections.
type rawServer struct {
	ln       net.Listener
	accepted atomic.Int32
	wg       sync.WaitGroup
}

func newRawServer(t *testing.T, handle func(net.Conn, *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *rawServer) addr() string { return s.ln.Addr().String() }

// readRequestHead consumes one request head (requests have no body here).
func readRequestHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "\r\n" {
			return nil
		}
	}
}

func TestContentLength(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", "4242")
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	})
	c := dial(t, addrOf(srv))
	resp, err := c.Do("GET", "/", nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || string(resp.Body) != "hello" || resp.PID() != 4242 || resp.Close {
		t.Fatalf("got status=%d body=%q pid=%d close=%v", resp.Status, resp.Body, resp.PID(), resp.Close)
	}
	if !c.Reusable() || resp.Elapsed <= 0 {
		t.Fatalf("Reusable=%v Elapsed=%v", c.Reusable(), resp.Elapsed)
	}
	if k := KindOf(resp, err); k != OK {
		t.Fatalf("KindOf = %v", k)
	}
}

func TestChunked(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "part%d\n", i)
			w.(http.Flusher).Flush()
		}
	})
	c := dial(t, addrOf(srv))
	resp, err := c.Do("GET", "/", nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Transfer-Encoding"); got != "chunked" {
		t.Fatalf("server did not chunk: Transfer-Encoding=%q", got)
	}
	if string(resp.Body) != "part0\npart1\npart2\n" {
		t.Fatalf("body %q", resp.Body)
	}
	// The connection is still in sync: a second request works.
	if _, err := c.Do("GET", "/", nil, testTimeout); err != nil {
		t.Fatalf("second request after chunked body: %v", err)
	}
}

// TestSendBody: Send's body arrives whole with its Content-Length, and the keep-alive
// connection stays in sync for the next request.
func TestSendBody(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %q %v", r.Method, r.ContentLength, b, err)
	})
	c := dial(t, addrOf(srv))
	for i, body := range []string{"key=value", "", "second"} {
		resp, err := c.Send("POST", "/", nil, []byte(body), testTimeout)
		want := fmt.Sprintf("POST %d %q <nil>", len(body), body)
		if err != nil || string(resp.Body) != want {
			t.Fatalf("request %d: %v, %q; want %q", i, err, respBody(resp), want)
		}
	}
}

func respBody(r *Response) []byte {
	if r == nil {
		return nil
	}
	return r.Body
}

func TestKeepAliveReuse(t *testing.T) {
	srv, remotes := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	})
	c := dial(t, addrOf(srv))
	for i := 0; i < 3; i++ {
		path := fmt.Sprintf("/r%d", i)
		resp, err := c.Do("GET", path, nil, testTimeout)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if string(resp.Body) != path || resp.Close || !c.Reusable() {
			t.Fatalf("request %d: body=%q close=%v reusable=%v", i, resp.Body, resp.Close, c.Reusable())
		}
	}
	rs := remotes()
	if len(rs) != 3 || rs[0] != rs[1] || rs[1] != rs[2] || rs[0] != c.LocalAddr().String() {
		t.Fatalf("requests did not share one connection: %v (local %v)", rs, c.LocalAddr())
	}
	if c.Requests() != 3 {
		t.Fatalf("Requests() = %d", c.Requests())
	}
}

func TestServerConnectionClose(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	c := dial(t, addrOf(srv))
	resp, err := c.Do("GET", "/", nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Close || c.Reusable() || string(resp.Body) != "bye" {
		t.Fatalf("close=%v reusable=%v body=%q", resp.Close, c.Reusable(), resp.Body)
	}
	if _, err := c.Do("GET", "/", nil, testTimeout); !errors.Is(err, ErrNotReusable) {
		t.Fatalf("Do after Connection: close = %v, want ErrNotReusable", err)
	}
}

func TestClientConnectionClose(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})
	c := dial(t, addrOf(srv))
	resp, err := c.Do("GET", "/", CloseHeader(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if c.Reusable() || !resp.Close {
		t.Fatalf("reusable=%v close=%v after request with Connection: close", c.Reusable(), resp.Close)
	}
	resp, err = Get(addrOf(srv), "/", testTimeout)
	if err != nil || resp.Status != 200 {
		t.Fatalf("Get: %v %v", resp, err)
	}
}

func TestReadToEOFAndHTTP10(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if readRequestHead(br) != nil {
			return
		}
		io.WriteString(c, "HTTP/1.0 200 OK\r\nX-Pid: 7\r\n\r\nuntil-eof")
	})
	c := dial(t, s.addr())
	resp, err := c.Do("GET", "/", nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Body) != "until-eof" || !resp.Close || c.Reusable() || resp.PID() != 7 || resp.Proto != "HTTP/1.0" {
		t.Fatalf("body=%q close=%v reusable=%v pid=%d proto=%s", resp.Body, resp.Close, c.Reusable(), resp.PID(), resp.Proto)
	}
}

// TestIdleCloseNotRetried: the server answers one keep-alive request and then
// closes the connection; the next Do must fail (EOF or Reset), not redial.
func TestIdleCloseNotRetried(t *testing.T) {
	closed := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if readRequestHead(br) != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		c.Close()
		close(closed)
	})
	c := dial(t, s.addr())
	resp, err := c.Do("GET", "/", nil, testTimeout)
	if err != nil || resp.Close || !c.Reusable() {
		t.Fatalf("first request: resp=%+v err=%v", resp, err)
	}
	<-closed
	_, err = c.Do("GET", "/", nil, testTimeout)
	if k := Classify(err); k != EOF && k != Reset {
		t.Fatalf("Do on server-closed conn: err=%v kind=%v, want EOF or Reset", err, k)
	}
	if c.Reusable() {
		t.Fatal("conn still reusable after error")
	}
	if n := s.accepted.Load(); n != 1 {
		t.Fatalf("server accepted %d connections; the client must not redial", n)
	}
}

func TestTruncatedBody(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if readRequestHead(br) != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
	})
	_, err := dial(t, s.addr()).Do("GET", "/", nil, testTimeout)
	if !errors.Is(err, io.ErrUnexpectedEOF) || Classify(err) != EOF {
		t.Fatalf("err=%v kind=%v, want unexpected EOF", err, Classify(err))
	}
}

func TestRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(addr, testTimeout)
	if k := Classify(err); k != Refused {
		t.Fatalf("Dial(closed port) err=%v kind=%v, want Refused", err, k)
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		<-release // never answer until the test ends
	})
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup
	c := dial(t, s.addr())
	start := time.Now()
	_, err := c.Do("GET", "/", nil, 100*time.Millisecond)
	if k := Classify(err); k != Timeout {
		t.Fatalf("err=%v kind=%v, want Timeout", err, k)
	}
	if d := time.Since(start); d > testTimeout {
		t.Fatalf("timeout took %v", d)
	}
}

func TestNonLoopbackRefusedWithoutDialing(t *testing.T) {
	for _, addr := range []string{"192.0.2.1:80", "example.com:80", "[2001:db8::1]:80", "nonsense"} {
		if _, err := Dial(addr, time.Millisecond); err == nil || !strings.Contains(err.Error(), "rawhttp:") {
			t.Errorf("Dial(%q) = %v, want a rawhttp refusal", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:1", "[::1]:1", "localhost:1", "127.3.4.5:1"} {
		if err := CheckLoopback(addr); err != nil {
			t.Errorf("CheckLoopback(%q) = %v", addr, err)
		}
	}
}

// TestStreamIncremental proves lines are delivered as they arrive: the
// server does not write line i+1 until the client callback has seen line i.
func TestStreamIncremental(t *testing.T) {
	next := make(chan struct{})
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "line %d\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(testTimeout):
				return // client never acknowledged: the body ends early
			}
		}
	})
	c := dial(t, addrOf(srv))
	var got []string
	resp, err := c.Stream("GET", "/stream", nil, testTimeout, func(line []byte) error {
		got = append(got, string(line))
		next <- struct{}{}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != "line 0|line 1|line 2" || string(resp.Body) != "line 0\nline 1\nline 2\n" {
		t.Fatalf("lines %q body %q", got, resp.Body)
	}
	if !c.Reusable() {
		t.Fatal("conn not reusable after complete stream")
	}
}

func TestStreamCallbackError(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a\nb\n")
	})
	c := dial(t, addrOf(srv))
	stop := errors.New("stop")
	_, err := c.Stream("GET", "/", nil, testTimeout, func([]byte) error { return stop })
	if !errors.Is(err, stop) || c.Reusable() {
		t.Fatalf("err=%v reusable=%v", err, c.Reusable())
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		err  error
		want Kind
	}{
		{nil, OK},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, Refused},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, Reset},
		{fmt.Errorf("x: %w", syscall.EPIPE), Reset},
		{fmt.Errorf("x: %w", io.EOF), EOF},
		{io.ErrUnexpectedEOF, EOF},
		{os.ErrDeadlineExceeded, Timeout},
		{&StatusError{Code: 503}, Status},
		{errors.New("weird"), Other},
	}
	for _, c := range cases {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if KindOf(&Response{Status: 502}, nil) != Status {
		t.Error("KindOf(502) != Status")
	}
	if Refused.String() != "Refused" || Kind(99).String() != "Kind(99)" {
		t.Error("Kind.String")
	}
}
