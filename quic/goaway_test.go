//go:build linux

package handoverquic

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// dialDeaf opens an HTTP/3 connection whose client never learns of a GOAWAY: the
// test reads the server's control stream itself and never hands it to the
// http3.ClientConn, so the client keeps sending requests on the connection, as a
// client does whose requests cross the GOAWAY on the way. The GOAWAY identifiers
// the server sends arrive on goAways.
func dialDeaf(ctx context.Context, t *testing.T, line *testLine, p pki) *quietClient {
	t.Helper()
	conn, err := clientTransport(t).Dial(ctx, line.addr, p.clientTLS(nil), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	q := &quietClient{conn: conn, cc: (&http3.Transport{}).NewRawClientConn(conn).ClientConn, goAways: make(chan quic.StreamID, 4)}
	go func() {
		for {
			str, err := conn.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			go readControl(str, q.goAways)
		}
	}()
	return q
}

// readControl reads a server's unidirectional stream: if it is the control
// stream, it sends the identifier of every GOAWAY frame on it to goAways.
func readControl(str *quic.ReceiveStream, goAways chan<- quic.StreamID) {
	r := quicvarint.NewReader(str)
	if typ, err := quicvarint.Read(r); err != nil || typ != 0 {
		str.CancelRead(0)
		return
	}
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			return
		}
		n, err := quicvarint.Read(r)
		if err != nil {
			return
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(str, payload); err != nil {
			return
		}
		if typ == 0x07 {
			id, _, err := quicvarint.Parse(payload)
			if err == nil {
				goAways <- quic.StreamID(id)
			}
		}
	}
}

// awaitGoAway waits for the GOAWAY q's server sends, and checks that it rejects
// no request.
func (q *quietClient) awaitGoAway(ctx context.Context, t *testing.T) {
	t.Helper()
	select {
	case id := <-q.goAways:
		if id != goAwayAll {
			t.Fatalf("GOAWAY with identifier %d, want %d (no request rejected)", id, goAwayAll)
		}
	case <-ctx.Done():
		t.Fatal("no GOAWAY")
	}
}

// TestRequestsCrossingGoAway: requests a client sends after the server sent its
// GOAWAY, before the client read it (the race HTTP/3 servers that reject after
// their GOAWAY lose), are answered by the old generation, several at once; the
// GOAWAY's identifier promises it. A client that moves reaches the new
// generation, and one that never leaves is closed with H3_NO_ERROR at the drain
// deadline.
func TestRequestsCrossingGoAway(t *testing.T) {
	checkLeaks(t)
	line, g1, p, ctx := servingLine(t, 3*time.Second)
	deaf := dialDeaf(ctx, t, line, p)
	stubborn := dialDeaf(ctx, t, line, p)
	for _, q := range []*quietClient{deaf, stubborn} {
		if gen := q.ping(ctx, t, line); gen != 1 {
			t.Fatalf("generation %d answered, want 1", gen)
		}
	}
	line.takeOver(t, p)
	select {
	case <-g1.sock.Draining():
	default:
		t.Fatal("generation 1 handed over, but its Draining channel is open")
	}
	deaf.awaitGoAway(ctx, t)
	stubborn.awaitGoAway(ctx, t)

	// 8 requests at once on a connection told to go away: all answered by 1.
	const n = 8
	gens := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var status int
			status, gens[i], _, _, errs[i] = get(ctx, deaf.cc, "https://"+line.addr.String()+"/ping")
			if errs[i] == nil && status != http.StatusOK {
				errs[i] = &statusError{status}
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || gens[i] != 1 {
			t.Errorf("request %d after the GOAWAY: generation %d, %v; want an answer from generation 1", i, gens[i], errs[i])
		}
	}
	deaf.conn.CloseWithError(0, "")
	if gen := dialQuiet(ctx, t, line, p, nil).ping(ctx, t, line); gen != 2 {
		t.Errorf("a new connection reached generation %d, want 2", gen)
	}

	// The stubborn client keeps its connection until the deadline closes it.
	if gen := stubborn.ping(ctx, t, line); gen != 1 {
		t.Errorf("generation %d answered the stubborn client, want 1", gen)
	}
	select {
	case <-stubborn.conn.Context().Done():
	case <-ctx.Done():
		t.Fatal("the drain deadline did not close the stubborn client's connection")
	}
	if kind, cause := classifyClose(stubborn.conn); kind != closedByServer {
		t.Errorf("the stubborn client's connection ended with %v, want H3_NO_ERROR from the server", cause)
	}
	<-g1.doneC
	if why := g1.sock.finishedWhy(); why != "deadline" {
		t.Errorf("generation 1 finished (%s), want at its deadline", why)
	}
}

// TestControlLayout: the quic-go in the build keeps its streams where
// controlStream looks for the HTTP/3 control stream. A quic-go upgrade that
// moves them fails here (and ServeHTTP3 refuses to serve).
func TestControlLayout(t *testing.T) {
	if _, err := checkControlLayout(); err != nil {
		t.Fatal(err)
	}
	if b := goAwayFrame(goAwayAll); len(b) != 10 || b[0] != 0x07 || b[1] != 8 {
		t.Errorf("GOAWAY frame % x: want type 7, length 8, an 8-byte identifier", b)
	}
}

// finishedWhy says why the Socket finished ("" while it runs).
func (s *Socket) finishedWhy() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.why
}

// remoteAppError returns the application error its peer closed a connection
// with, if it did.
func remoteAppError(conn *quic.Conn) (*quic.ApplicationError, bool) {
	var appErr *quic.ApplicationError
	if errors.As(context.Cause(conn.Context()), &appErr) && appErr.Remote {
		return appErr, true
	}
	return nil, false
}
