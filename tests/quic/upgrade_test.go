package quictest

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/quic/h3load"
)

// download runs one long GET of size bytes in chunks on its own connection.
type downloadResult struct {
	gen  int
	err  error
	size int
}

func startDownload(ctx context.Context, t *testing.T, s *server, size, chunks int) <-chan downloadResult {
	tr := clientTransport(t)
	out := make(chan downloadResult, 1)
	go func() {
		conn, cc, err := dialH3(ctx, tr, s.addr, s.clientTLS(nil), false)
		if err != nil {
			out <- downloadResult{err: err}
			return
		}
		defer conn.CloseWithError(0, "")
		url := "https://" + s.addr.String() + "/download?size=" + strconv.Itoa(size) + "&chunks=" + strconv.Itoa(chunks)
		status, gen, body, _, err := get(ctx, cc, url)
		if err == nil && status != http.StatusOK {
			err = &net.AddrError{Err: "status " + strconv.Itoa(status)}
		}
		for i, b := range body {
			if err == nil && b != byte(i%251) {
				err = &net.AddrError{Err: "body differs at byte " + strconv.Itoa(i)}
			}
		}
		out <- downloadResult{gen: gen, err: err, size: len(body)}
	}()
	return out
}

// resumed dials a new connection with cache (0-RTT if early), sends one request
// and reports which generation answered and how the TLS session began.
func resumed(ctx context.Context, t *testing.T, s *server, cache tls.ClientSessionCache, early bool) (gen int, didResume, used0RTT bool) {
	t.Helper()
	tr := clientTransport(t)
	conn, cc, err := dialH3(ctx, tr, s.addr, s.clientTLS(cache), early)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.CloseWithError(0, "")
	method := http.MethodGet
	if early {
		method = http3.MethodGet0RTT
	}
	status, gen, _, _, err := do(ctx, cc, method, "https://"+s.addr.String()+"/")
	if err != nil || status != http.StatusOK {
		t.Fatalf("request: %d %v", status, err)
	}
	st := conn.ConnectionState()
	return gen, st.TLS.DidResume, st.Used0RTT
}

// sendForged sends what no generation may take for one of its connections: an
// empty datagram, a truncated long header, short-header packets with a random
// connection ID and with a connection ID of the line's length whose check fails,
// and a long-header packet naming an unknown version. Each is dropped.
func sendForged(t *testing.T, s *server) {
	t.Helper()
	c, err := net.DialUDP("udp", nil, s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	short := make([]byte, 60)
	short[0] = 0x40
	for range 20 {
		io.ReadFull(randReader{}, short[1:])
		c.Write(short)
	}
	for _, pkt := range [][]byte{{}, {0xc0}, {0xc0, 0, 0, 0, 1, 20}, append([]byte{0xc0, 0xfa, 0xfa, 0xfa, 0xfa, 12}, make([]byte, 40)...)} {
		c.Write(pkt)
	}
}

type randReader struct{}

func (randReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(time.Now().UnixNano() >> (i % 8))
	}
	return len(p), nil
}

// TestHTTP3ConnectionsSurviveUpgrades: 16 long-lived HTTP/3 clients, a round of
// requests every 20 ms each (one request for half of them, 4 at once for the
// others), never retried, over 10 upgrades by SIGUSR2 of real processes; a long
// download started on generation 1; forged and truncated datagrams sent during
// the upgrades; a TLS session begun on generation 1 resumed, with 0-RTT, on
// generation 3. No request fails, no connection sees a stateless reset or an idle
// timeout, the download completes intact from generation 1, connections opened
// after each upgrade reach the new generation, and every generation exits cleanly.
func TestHTTP3ConnectionsSurviveUpgrades(t *testing.T) {
	s := newServer(t)
	pid := s.start()
	upgrades(t, s, pid, s.upgrade, func() error {
		pid := s.waitPID(0)
		if err := syscallKill(pid); err != nil {
			return err
		}
		// The generation before it may still stand by for its probation: then it
		// is the parent, and reaps it.
		_, _, err := proc.End(pid, 30*time.Second)
		return err
	})
}

// upgrades runs the clients of TestHTTP3ConnectionsSurviveUpgrades against s,
// whose generation 1 is pid, through 10 upgrades (upgrade starts one, from the
// current generation's PID, and returns the next one's), then stops the line
// (stop returns once the processes are reaped) and checks what every generation
// logged.
func upgrades(t *testing.T, s *server, pid int, upgrade func(pid int) int, stop func() error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cache := tls.NewLRUClientSessionCache(4)
	if gen, _, _ := resumed(ctx, t, s, cache, false); gen != 1 {
		t.Fatalf("generation %d answered, want 1", gen)
	}
	const clients = 16
	const size, chunks = 8 << 20, 250 // 250 chunks 20 ms apart: 5 seconds, past most of the upgrades
	dl := startDownload(ctx, t, s, size, chunks)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	l, wait := runLoad(loadCtx, t, s.addr, s.tls, clients, 4, 100000, 20*time.Millisecond)
	waitFor(t, 10*time.Second, "requests on generation 1", func() bool { return l.OKFrom(1) >= 5*clients })

	const count = 10
	handedAt := map[int]time.Time{}
	var gen3 struct {
		gen            int
		resumed, early bool
	}
	for n := 2; n <= count+1; n++ {
		pid = upgrade(pid)
		handedAt[n] = time.Now()
		waitFor(t, 15*time.Second, "requests on generation "+strconv.Itoa(n), func() bool { return l.OKFrom(n) >= 5*clients })
		if n == 3 {
			gen3.gen, gen3.resumed, gen3.early = resumed(ctx, t, s, cache, true)
		}
		if n == 5 {
			sendForged(t, s)
		}
	}
	res := <-dl
	stopLoad()
	tl := wait()

	t.Logf("requests: %d sent, %d ok (by generation %v), %d failed (%d rejected, %d timed out), %d not sent (connection going away); %d connections, %d dial failures; closes %v",
		tl.Sent, tl.OK, tl.ByGen, tl.Failed, tl.Rejected, tl.TimedOut, tl.NotSent, tl.Dials, tl.DialFails, tl.Closes)
	for _, e := range tl.Errs {
		t.Log(e)
	}
	if tl.Failed != 0 || tl.DialFails != 0 {
		t.Errorf("%d requests failed (%d rejected, %d timed out), %d dials failed", tl.Failed, tl.Rejected, tl.TimedOut, tl.DialFails)
	}
	if n := tl.Closes[h3load.ClosedReset]; n != 0 {
		t.Errorf("%d connections saw a stateless reset", n)
	}
	if n := tl.Closes[h3load.ClosedIdle]; n != 0 {
		t.Errorf("%d connections timed out", n)
	}
	if n := tl.Closes[h3load.ClosedOther]; n != 0 {
		t.Errorf("%d connections ended otherwise", n)
	}
	for _, c := range tl.NewConns {
		want := 1
		for n := 2; n <= count+1; n++ {
			if c.At.After(handedAt[n]) {
				want = n
			}
		}
		if c.Gen < want {
			t.Errorf("a connection dialed at %v reached generation %d, want %d or newer", c.At.Format(time.StampMicro), c.Gen, want)
		}
	}
	if res.err != nil || res.size != size || res.gen != 1 {
		t.Errorf("download: generation %d, %d of %d bytes, error %v; want all from generation 1", res.gen, res.size, size, res.err)
	}
	if gen3.gen != 3 || !gen3.resumed || !gen3.early {
		t.Errorf("the session of generation 1 on generation 3: answered by %d, resumed %v, 0-RTT %v; want 3, true, true", gen3.gen, gen3.resumed, gen3.early)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkFinished(t, s, count)
}

// checkFinished checks, from the log, that each of the n+1 generations finished
// its QUIC drain and exited, and that no generation panicked.
func checkFinished(t *testing.T, s *server, n int) {
	t.Helper()
	fin := s.events("quic_finished")
	if len(fin) < n+1 {
		t.Errorf("%d generations finished their QUIC drain, want %d", len(fin), n+1)
	}
	for _, l := range fin {
		if r := l.Get("reason"); r != "drained" {
			t.Errorf("generation %s finished its QUIC drain by %q, want drained", l.Get("gen"), r)
		}
	}
	exits := 0
	for _, l := range s.events("exit") {
		if l.Has("quic") { // the demo's, not a master's
			exits++
		}
	}
	if exits != n+1 {
		t.Errorf("%d generations exited cleanly, want %d", exits, n+1)
	}
	if other := logsOther(s); other != "" {
		t.Errorf("the server printed something that is not a log line (a panic?):\n%s", other)
	}
}

var _ = quic.Config{}
