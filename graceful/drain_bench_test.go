//go:build linux

package graceful

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkAcceptClose measures accepting and closing one loopback TCP connection
// through a plain net.Listener and through Drainer.Listener. The client side uses
// raw system calls (no allocations) and resets the connection (SO_LINGER 0), so
// that no TIME_WAIT piles up; allocs/op is the server side's, and the difference
// between the two is the tracking record.
func BenchmarkAcceptClose(b *testing.B) {
	b.Run("plain", func(b *testing.B) {
		benchAcceptClose(b, func(l net.Listener) net.Listener { return l })
	})
	b.Run("tracked", func(b *testing.B) {
		d := &Drainer{}
		benchAcceptClose(b, d.Listener)
		if c := d.Counts(); c.Total() != 0 || c.Accepted != uint64(b.N) {
			b.Fatalf("Counts = %+v after %d accept+close", c, b.N)
		}
	})
}

func benchAcceptClose(b *testing.B, wrap func(net.Listener) net.Listener) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	l := wrap(ln)
	defer l.Close()
	sa := &unix.SockaddrInet4{Port: ln.Addr().(*net.TCPAddr).Port, Addr: [4]byte{127, 0, 0, 1}}
	reset := &unix.Linger{Onoff: 1, Linger: 0}
	b.ReportAllocs()
	for b.Loop() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			b.Fatal(err)
		}
		c, err := l.Accept()
		if err != nil {
			b.Fatal(err)
		}
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, reset)
		unix.Close(fd)
		c.Close()
	}
}

// TestTrackingAllocs pins what BenchmarkAcceptClose shows: tracking a connection
// costs exactly one allocation (its record), and untracking it none.
func TestTrackingAllocs(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	inner := &repeatListener{c: nopCloseConn{p1}}
	for _, mode := range []string{"raw", "http"} {
		d := &Drainer{}
		if mode == "http" {
			d.attach(&http.Server{})
		}
		l := d.Listener(inner)
		allocs := testing.AllocsPerRun(1000, func() {
			c, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			d.ConnState(c, http.StateActive)
			d.ConnState(c, http.StateIdle)
			c.Close()
		})
		if allocs != 1 {
			t.Errorf("%s: accept, state changes and close of a tracked connection: %v allocations; want 1", mode, allocs)
		}
	}
}

// repeatListener accepts the same connection forever.
type repeatListener struct{ c net.Conn }

func (l *repeatListener) Accept() (net.Conn, error) { return l.c, nil }
func (l *repeatListener) Close() error              { return nil }
func (l *repeatListener) Addr() net.Addr            { return l.c.LocalAddr() }

type nopCloseConn struct{ net.Conn }

func (nopCloseConn) Close() error { return nil }

// BenchmarkHTTP measures keep-alive request throughput over loopback, from a few
// client goroutines with one connection each, against an http.Server on a plain
// listener and against one with a Drainer attached, serving on Drainer.Listener.
// The clients are minimal (no net/http client), so that the server dominates.
func BenchmarkHTTP(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchHTTP(b, nil) })
	b.Run("graceful", func(b *testing.B) { benchHTTP(b, &Drainer{}) })
}

var benchBody = []byte("hello, world\n")

func benchHTTP(b *testing.B, d *Drainer) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(benchBody)))
		w.Write(benchBody)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var l net.Listener = ln
	if d != nil {
		d.attach(srv)
		l = d.Listener(ln)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(l)
	}()
	defer func() {
		srv.Close()
		<-served
	}()
	addr := ln.Addr().String()

	var mu sync.Mutex
	var failure error
	b.ReportAllocs()
	b.SetParallelism(2) // 2×GOMAXPROCS client goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := newBenchClient(addr)
		if err != nil {
			mu.Lock()
			failure = err
			mu.Unlock()
			return
		}
		defer c.conn.Close()
		for pb.Next() {
			if err := c.roundTrip(); err != nil {
				mu.Lock()
				failure = err
				mu.Unlock()
				return
			}
		}
	})
	b.StopTimer()
	if failure != nil {
		b.Fatal(failure)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// benchClient sends GET requests on one keep-alive connection and reads responses
// with a known Content-Length, without allocating.
type benchClient struct {
	conn net.Conn
	br   *bufio.Reader
	body []byte
}

var benchRequest = []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")

func newBenchClient(addr string) (*benchClient, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &benchClient{conn: c, br: bufio.NewReaderSize(c, 4096), body: make([]byte, 64)}, nil
}

var (
	statusOK      = []byte("HTTP/1.1 200 OK\r\n")
	contentLength = []byte("Content-Length: ")
)

func (c *benchClient) roundTrip() error {
	if _, err := c.conn.Write(benchRequest); err != nil {
		return err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.Equal(line, statusOK) {
		return fmt.Errorf("status line %q", line)
	}
	n := -1
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) == 2 { // "\r\n"
			break
		}
		if v, ok := bytes.CutPrefix(line, contentLength); ok {
			n = 0
			for _, ch := range bytes.TrimSpace(v) {
				n = n*10 + int(ch-'0')
			}
		}
	}
	if n < 0 || n > len(c.body) {
		return errors.New("response without a usable Content-Length")
	}
	if _, err := io.ReadFull(c.br, c.body[:n]); err != nil {
		return err
	}
	if !bytes.Equal(c.body[:n], benchBody) {
		return fmt.Errorf("body %q", c.body[:n])
	}
	return nil
}
