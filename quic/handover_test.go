//go:build linux

package handoverquic

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// download runs one long GET of size bytes in chunks on its own connection and
// reports the generation that served it and what went wrong, if anything.
type downloadResult struct {
	gen  int
	err  error
	size int
}

func startDownload(ctx context.Context, t *testing.T, line *testLine, p pki, size, chunks int) <-chan downloadResult {
	tr := clientTransport(t)
	out := make(chan downloadResult, 1)
	go func() {
		conn, cc, err := dialH3(ctx, tr, line.addr, p.clientTLS(nil), false)
		if err != nil {
			out <- downloadResult{err: err}
			return
		}
		defer conn.CloseWithError(0, "")
		url := "https://" + line.addr.String() + "/download?size=" + strconv.Itoa(size) + "&chunks=" + strconv.Itoa(chunks)
		status, gen, body, _, err := get(ctx, cc, url)
		if err == nil && status != http.StatusOK {
			err = &statusError{status}
		}
		if err == nil {
			for i, b := range body {
				if b != byte(i%251) {
					err = &corruptError{i}
					break
				}
			}
		}
		out <- downloadResult{gen: gen, err: err, size: len(body)}
	}()
	return out
}

type statusError struct{ code int }

func (e *statusError) Error() string { return "status " + strconv.Itoa(e.code) }

type corruptError struct{ at int }

func (e *corruptError) Error() string { return "body differs at byte " + strconv.Itoa(e.at) }

// TestHandoverKeepsConnections: 16 long-lived HTTP/3 clients, a round of requests
// every 20 ms each (one request for half of them, 4 at once for the others),
// never retried, while generation 1 hands over to 2 and 2 to 3; and a long
// download started on generation 1. No request fails (none is rejected), no
// connection sees a stateless reset or an idle timeout, the download completes
// intact, and the connections opened after each handover reach the newest
// generation.
func TestHandoverKeepsConnections(t *testing.T) {
	checkLeaks(t)
	line, g1, p, ctx := servingLine(t, 20*time.Second)
	const clients = 16
	const size, chunks = 8 << 20, 150 // 150 chunks 20 ms apart: 3 seconds
	dl := startDownload(ctx, t, line, p, size, chunks)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	l, wait := runLoad(loadCtx, t, line.addr, p, clients, 4, 3000, 20*time.Millisecond)
	waitFor(t, 10*time.Second, "requests on generation 1", func() bool { return l.okFrom(1) >= 5*clients })

	handedAt := map[int]time.Time{}
	for _, n := range []int{2, 3} {
		line.takeOver(t, p)
		handedAt[n] = time.Now()
		waitFor(t, 10*time.Second, "requests on generation "+strconv.Itoa(n), func() bool { return l.okFrom(n) >= 5*clients })
	}
	res := <-dl
	stopLoad()
	wait()

	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("requests: %d sent, %d ok (by generation %v), %d failed (%d rejected), %d not sent (connection going away); %d connections, %d dial failures; closes %v",
		l.sent, l.ok, l.byGen, l.failed, l.rejected, l.notSent, l.dials, l.dialFails, l.closes)
	for _, e := range l.errs {
		t.Log(e)
	}
	if l.failed != 0 || l.rejected != 0 || l.dialFails != 0 {
		t.Errorf("%d requests failed (%d rejected), %d dials failed", l.failed, l.rejected, l.dialFails)
	}
	if n := l.closes[closedReset]; n != 0 {
		t.Errorf("%d connections saw a stateless reset", n)
	}
	if n := l.closes[closedIdle]; n != 0 {
		t.Errorf("%d connections timed out", n)
	}
	if n := l.closes[closedOther]; n != 0 {
		t.Errorf("%d connections ended otherwise", n)
	}
	// handedAt[n] is taken just after generation n was seen reading the socket:
	// a connection dialed later reaches n or a newer one.
	onNewest := 0
	for _, c := range l.newConns {
		want := 1
		for n := 2; n <= 3; n++ {
			if c.at.After(handedAt[n]) {
				want = n
			}
		}
		if c.gen < want {
			t.Errorf("a connection dialed at %v reached generation %d, want %d or newer", c.at.Format(time.StampMicro), c.gen, want)
		}
		if c.gen == 3 {
			onNewest++
		}
	}
	if onNewest < clients {
		t.Errorf("%d connections reached generation 3, want at least %d (every client moves)", onNewest, clients)
	}
	if res.err != nil || res.size != size || res.gen != 1 {
		t.Errorf("download: generation %d, %d of %d bytes, error %v; want all from generation 1", res.gen, res.size, size, res.err)
	}
	for _, g := range line.gens {
		t.Logf("generation %d: %+v", g.gen, g.sock.Stats())
	}
	if s := g1.sock.Stats(); s.Injected == 0 {
		t.Errorf("generation 1 got no forwarded packets: %+v", s)
	}
}
