//go:build linux

package handoverquic

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// The raw QUIC test protocol ("echo"): the client opens a stream, writes a
// message and closes its side; the server answers "<generation> <message>" and
// closes. When its generation drains, the server opens a unidirectional stream
// to each client ("move": its GOAWAY), and keeps answering; a client that reads
// it sends no new stream on that connection, closes it once its streams are
// answered, and dials again.
const echoALPN = "handover-echo"

// Application error codes of the echo protocol.
const (
	echoBye      quic.ApplicationErrorCode = 0   // the client leaves
	echoDeadline quic.ApplicationErrorCode = 0x5 // the server's generation finished
)

// serveEcho serves the echo protocol on g's Socket through a Listener, until the
// Socket finishes.
func serveEcho(t *testing.T, g *testGen, p pki) {
	tlsConf := p.serverTLS(t)
	tlsConf.NextProtos = []string{echoALPN}
	ln, err := g.sock.Listen(tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetDeadlineError(echoDeadline, "generation finished")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go echoConn(conn, g.gen, g.sock.Draining())
		}
	}()
	t.Cleanup(func() {
		g.sock.Close()
		<-done
	})
}

// echoConn serves one echo connection; once draining is closed, it tells the
// client to move.
func echoConn(conn *quic.Conn, gen uint64, draining <-chan struct{}) {
	go func() {
		select {
		case <-draining:
		case <-conn.Context().Done():
			return
		}
		if str, err := conn.OpenUniStream(); err == nil {
			str.Write([]byte("move"))
			str.Close()
		}
	}()
	for {
		str, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go func() {
			msg, err := io.ReadAll(str)
			if err != nil {
				str.CancelWrite(1)
				return
			}
			fmt.Fprintf(str, "%d %s", gen, msg)
			str.Close()
		}()
	}
}

// echoTally is the outcome of the echo clients.
type echoTally struct {
	mu          sync.Mutex
	ok, failed  int
	dials       int
	byGen       map[int]int
	closedOther int // connections that ended otherwise than by their client
	errs        []string
}

func (e *echoTally) note(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f()
}

func (e *echoTally) okFrom(gen int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byGen[gen]
}

// echoClient sends k streams at once every interval, at most max rounds, until
// ctx ends, and moves when told to.
func (e *echoTally) echoClient(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, k, max int, interval time.Duration) {
	var conn *quic.Conn
	var moving *atomic.Bool // set once conn's server says move
	leave := func() {
		if conn == nil {
			return
		}
		conn.CloseWithError(echoBye, "")
		if _, ok := remoteAppError(conn); ok {
			e.note(func() { e.closedOther++; e.fail("connection closed by the server: %v", context.Cause(conn.Context())) })
		}
		conn = nil
	}
	defer leave()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range max {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if conn != nil && moving.Load() {
			leave()
		}
		if conn == nil {
			var err error
			if conn, moving, err = dialEcho(ctx, tr, addr, tlsConf); err != nil {
				if ctx.Err() == nil {
					e.note(func() { e.failed++; e.fail("dial: %v", err) })
				}
				continue
			}
			e.note(func() { e.dials++ })
		}
		var wg sync.WaitGroup
		for j := range k {
			wg.Go(func() { e.echo(ctx, conn, fmt.Sprintf("%d.%d", i, j)) })
		}
		wg.Wait()
	}
}

// dialEcho dials an echo connection; moving is set once its server says move.
func dialEcho(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config) (conn *quic.Conn, moving *atomic.Bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err = tr.Dial(dctx, addr, tlsConf, &quic.Config{})
	if err != nil {
		return nil, nil, err
	}
	moving = new(atomic.Bool)
	go func() {
		str, err := conn.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		if b, _ := io.ReadAll(str); string(b) == "move" {
			moving.Store(true)
		}
	}()
	return conn, moving, nil
}

// echo sends one message on a new stream and tallies the answer.
func (e *echoTally) echo(ctx context.Context, conn *quic.Conn, msg string) {
	n, err := echoOnce(ctx, conn, msg)
	e.note(func() {
		switch {
		case err != nil && ctx.Err() != nil:
			// cut by the end of the test
		case err != nil:
			e.failed++
			e.fail("stream: %v", err)
		default:
			e.ok++
			e.byGen[n]++
		}
	})
}

// echoOnce sends one message on a new stream, and returns the generation that
// answered it.
func echoOnce(ctx context.Context, conn *quic.Conn, msg string) (gen int, err error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	str, err := conn.OpenStreamSync(sctx)
	if err != nil {
		return 0, err
	}
	str.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err = io.WriteString(str, msg); err == nil {
		err = str.Close()
	}
	var answer []byte
	if err == nil {
		answer, err = io.ReadAll(str)
	}
	if err != nil {
		return 0, err
	}
	g, rest, _ := bytes.Cut(answer, []byte(" "))
	if gen, _ = strconv.Atoi(string(g)); gen == 0 || string(rest) != msg {
		return 0, fmt.Errorf("answer %q to %q", answer, msg)
	}
	return gen, nil
}

func (e *echoTally) fail(format string, args ...any) {
	if len(e.errs) < 20 {
		e.errs = append(e.errs, fmt.Sprintf(format, args...))
	}
}

// TestRawQUICDrain: 8 raw QUIC clients (streams, no HTTP/3), a round of streams
// every 20 ms each (one for half of them, 3 at once for the others), across two
// handovers: no stream fails, each old generation learns of its drain (Draining),
// tells its clients to move in the protocol's own way and finishes as soon as
// they have left, before its deadline; and a client that never leaves is closed
// at the deadline with the CONNECTION_CLOSE error code the application chose.
func TestRawQUICDrain(t *testing.T) {
	checkLeaks(t)
	p := newPKI(t)
	line := newTestLine(t, 4*time.Second)
	g1 := line.start()
	serveEcho(t, g1, p)
	waitFor(t, 5*time.Second, "generation 1 serving", g1.serving)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tlsConf := &tls.Config{RootCAs: p.pool, NextProtos: []string{echoALPN}}

	// The stubborn client ignores "move" and keeps its connection to generation 1.
	stubborn, err := clientTransport(t).Dial(ctx, line.addr, tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer stubborn.CloseWithError(echoBye, "")

	e := &echoTally{byGen: map[int]int{}}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	const clients = 8
	for i := range clients {
		tr := clientTransport(t)
		wg.Go(func() { e.echoClient(loadCtx, tr, line.addr, tlsConf, 1+2*(i%2), 3000, 20*time.Millisecond) })
	}
	waitFor(t, 10*time.Second, "streams on generation 1", func() bool { return e.okFrom(1) >= 10*clients })
	gens := []*testGen{g1}
	for n := 2; n <= 3; n++ {
		g := line.start()
		serveEcho(t, g, p)
		line.handOver(g)
		waitFor(t, 5*time.Second, fmt.Sprintf("generation %d serving", n), g.serving)
		gens = append(gens, g)
		if n == 2 {
			// The stubborn client is served on by generation 1, through forwarding.
			if gen, err := echoOnce(ctx, stubborn, "still here"); gen != 1 {
				t.Errorf("the stubborn client after the handover: generation %d answered, %v; want 1", gen, err)
			}
		}
		waitFor(t, 10*time.Second, "streams on generation "+strconv.Itoa(n), func() bool { return e.okFrom(n) >= 10*clients })
	}
	// Generation 2's clients all moved to 3: it finishes before its deadline.
	waitFor(t, 3*time.Second, "generation 2 drained", func() bool { return isClosed(gens[1].doneC) })
	stopLoad()
	wg.Wait()

	// The stubborn client keeps its connection until generation 1's deadline.
	select {
	case <-stubborn.Context().Done():
	case <-ctx.Done():
		t.Fatal("the deadline did not close the stubborn connection")
	}
	if appErr, ok := remoteAppError(stubborn); !ok || appErr.ErrorCode != echoDeadline || appErr.ErrorMessage != "generation finished" {
		t.Errorf("the stubborn connection ended with %v, want the server's application error %#x %q", context.Cause(stubborn.Context()), echoDeadline, "generation finished")
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	t.Logf("streams: %d ok (by generation %v), %d failed; %d connections, %d closed by a server", e.ok, e.byGen, e.failed, e.dials, e.closedOther)
	for _, s := range e.errs {
		t.Log(s)
	}
	if e.failed != 0 || e.closedOther != 0 {
		t.Errorf("%d streams failed, %d connections closed by a server", e.failed, e.closedOther)
	}
	<-g1.doneC
	for i, want := range []string{"deadline", "drained"} {
		if why := gens[i].sock.finishedWhy(); why != want {
			t.Errorf("generation %d finished (%s), want %s", i+1, why, want)
		}
	}
}
