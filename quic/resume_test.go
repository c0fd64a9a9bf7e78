//go:build linux

package handoverquic

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// quietClient is a connection that sends a request now and then.
type quietClient struct {
	conn    *quic.Conn
	cc      *http3.ClientConn
	goAways chan quic.StreamID // a deaf client's: see dialDeaf
}

func dialQuiet(ctx context.Context, t *testing.T, line *testLine, p pki, conf *quic.Config) *quietClient {
	t.Helper()
	tr := clientTransport(t)
	conn, err := tr.Dial(ctx, line.addr, p.clientTLS(nil), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return &quietClient{conn: conn, cc: (&http3.Transport{}).NewClientConn(conn)}
}

// ping sends one request and returns the generation that answered.
func (q *quietClient) ping(ctx context.Context, t *testing.T, line *testLine) int {
	t.Helper()
	status, gen, body, _, err := get(ctx, q.cc, "https://"+line.addr.String()+"/ping")
	if err != nil || status != http.StatusOK || string(body) != "ok" {
		t.Fatalf("request: %d %q %v", status, body, err)
	}
	return gen
}

// TestSuccessorDiesPredecessorResumes: generation 2 takes the socket over, then
// dies (its transport closed, its descriptors gone, no word to anyone). Generation
// 1 takes the socket back: a download it was serving completes, its connections
// keep being served (those of clients that did not act on the GOAWAY, here deaf
// ones), new connections reach it, the dead generation's connections are dropped
// (timed out, never reset), and it can hand over again to a new successor.
func TestSuccessorDiesPredecessorResumes(t *testing.T) {
	checkLeaks(t)
	line, g1, p, ctx := servingLine(t, 20*time.Second)

	const size, chunks = 4 << 20, 100 // 2 seconds
	dl := startDownload(ctx, t, line, p, size, chunks)
	var deaf []*quietClient
	for range 4 {
		q := dialDeaf(ctx, t, line, p)
		if gen := q.ping(ctx, t, line); gen != 1 {
			t.Fatalf("generation %d answered, want 1", gen)
		}
		deaf = append(deaf, q)
	}

	g2 := line.takeOver(t, p)
	for _, q := range deaf {
		q.awaitGoAway(ctx, t)
	}
	victim := dialQuiet(ctx, t, line, p, &quic.Config{MaxIdleTimeout: time.Second})
	if gen := victim.ping(ctx, t, line); gen != 2 {
		t.Fatalf("generation %d answered a new connection, want 2", gen)
	}

	line.crash(g2)
	waitFor(t, 5*time.Second, "generation 1 serving again", g1.serving)
	select {
	case <-g1.sock.Draining():
		t.Fatal("generation 1 serves again, but its Draining channel is closed")
	default:
	}
	for i, q := range deaf {
		for range 5 {
			if gen := q.ping(ctx, t, line); gen != 1 {
				t.Fatalf("deaf connection %d: generation %d answered, want 1", i, gen)
			}
		}
	}
	fresh := dialQuiet(ctx, t, line, p, nil)
	if gen := fresh.ping(ctx, t, line); gen != 1 {
		t.Fatalf("a new connection after the resume reached generation %d, want 1", gen)
	}
	// The dead generation's connection: its packets are dropped by generation 1
	// (their tag names no live generation), so it times out; it is never reset.
	vctx, vcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, _, _, _, verr := get(vctx, victim.cc, "https://"+line.addr.String()+"/ping")
	vcancel()
	if verr == nil {
		t.Fatal("a request on the dead generation's connection was answered")
	}
	<-victim.conn.Context().Done()
	if kind, cause := classifyClose(victim.conn); kind != closedIdle {
		t.Errorf("the dead generation's connection ended with %v, want an idle timeout", cause)
	}
	if s := g1.sock.Stats(); s.UnknownGeneration == 0 {
		t.Errorf("generation 1 dropped none of the dead generation's packets: %+v", s)
	}
	if res := <-dl; res.err != nil || res.size != size || res.gen != 1 {
		t.Errorf("download: generation %d, %d of %d bytes, error %v; want all from generation 1", res.gen, res.size, size, res.err)
	}

	// Generation 1 hands over again, to generation 3. The fresh connection is
	// told to go away: its client closes it, and its next request reaches 3.
	line.takeOver(t, p)
	<-fresh.conn.Context().Done()
	if kind, cause := classifyClose(fresh.conn); kind != closedByClient {
		t.Errorf("the fresh connection ended with %v, want closed by its client after the GOAWAY", cause)
	}
	if gen := dialQuiet(ctx, t, line, p, nil).ping(ctx, t, line); gen != 3 {
		t.Fatalf("a new connection reached generation %d, want 3", gen)
	}
	for _, q := range deaf {
		q.conn.CloseWithError(0, "")
	}
	waitFor(t, 10*time.Second, "generation 1 drained", func() bool {
		select {
		case <-g1.doneC:
			return true
		default:
			return false
		}
	})
	if why := g1.sock.finishedWhy(); why != "drained" {
		t.Errorf("generation 1 finished (%s), want drained before its deadline", why)
	}
}
