package tests

// Slow and long-lived clients across an upgrade: slowloris, hijacked (websocket-style)
// connections and server-sent events. (HTTP/2 is in h2_test.go.)

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// probePkg is the test server of testdata/probedemo.
const probePkg = "./testdata/probedemo"

// closedAt returns when c is closed by the server (a read returns an error), reading
// and discarding what arrives, or the zero time if it stays open past timeout.
func closedAt(c net.Conn, timeout time.Duration) (time.Time, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return time.Time{}, err
	}
	return time.Now(), err
}

// TestSlowloris: clients that send their request headers one byte a second hold
// connections that are neither idle nor answerable; they must not keep an old
// generation past its drain deadline. The old one force-closes them at the deadline,
// not before (no earlier than the signal plus the deadline), and exits after that;
// the new one serves meanwhile.
func TestSlowloris(t *testing.T) {
	const n = 8
	drain := 3 * time.Second
	d := startDemo(t, demoOpts{drain: drain})
	old := d.current()
	header := "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + strings.Repeat("a", 120) + "\r\n\r\n"
	type loris struct {
		sent   int
		closed time.Time
		err    error
	}
	results := make(chan loris, n)
	var started atomic.Int32 // clients that have sent two bytes
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			var l loris
			closed := make(chan struct{})
			go func() {
				l.closed, l.err = closedAt(c, 60*time.Second)
				close(closed)
			}()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for l.sent < len(header) {
				if _, err := c.Write([]byte{header[l.sent]}); err != nil {
					break
				}
				if l.sent++; l.sent == 2 {
					started.Add(1)
				}
				select {
				case <-tick.C:
				case <-closed:
				}
				select {
				case <-closed:
					results <- l
					return
				default:
				}
			}
			<-closed
			results <- l
		}()
	}
	// Every slow client has sent bytes to the old generation before the upgrade.
	if err := proc.WaitFor(func() bool { return tcpConns(old) == n && started.Load() == n }, 5*time.Second, "the slow clients to reach the old generation"); err != nil {
		t.Fatal(err)
	}
	// The drain starts after the signal, so its deadline is no earlier than this
	// plus drain.
	signalled := time.Now()
	_, cur := d.upgrade()
	if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != cur {
		t.Errorf("a request during the old generation's drain: %v, answered by %d, want %d", err, respPID(resp), cur)
	}
	if err := waitGone(old, 2*drain+10*time.Second); err != nil { // hang guard
		t.Fatal(err)
	}
	exited := time.Now() // no earlier than the exit
	earliest := signalled.Add(drain)
	t.Logf("the old generation was seen gone %v after the signal (drain deadline %v)", exited.Sub(signalled).Round(time.Millisecond), drain)
	for i := 0; i < n; i++ {
		l := <-results
		switch {
		case l.closed.IsZero():
			t.Errorf("a slow client was not disconnected: %v", l.err)
		case l.closed.Before(earliest):
			t.Errorf("a slow client (%d bytes sent) was disconnected %v after the signal, before the drain deadline %v: it was not waited for", l.sent, l.closed.Sub(signalled).Round(time.Millisecond), drain)
		case l.closed.After(exited):
			t.Errorf("a slow client (%d bytes sent) was disconnected after the old generation exited", l.sent)
		}
	}
	// The old generation force-closed them at its deadline, and said so.
	ev := d.events()
	if ev.Count("drain_deadline", logs.KV("pid", old)) != 1 || ev.Count("drained", logs.KV("pid", old)) != 0 {
		t.Errorf("the old generation did not report its drain deadline (event=drain_deadline):\n%s", tail(d.log(), 10))
	}
	d.stop()
}

// wsClient is a client of a hijacked line-echo endpoint (/ws, /hold).
type wsClient struct {
	c     net.Conn
	br    *bufio.Reader
	pid   int
	mu    sync.Mutex
	lines []string
}

// dialWS opens path, reads the 101 answer and the greeting, then collects every line
// the server sends until it closes; done receives the time of the close.
func dialWS(t testing.TB, addr, path string) (*wsClient, <-chan time.Time) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w := &wsClient{c: c, br: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: line-echo\r\nConnection: Upgrade\r\n\r\n", path, addr)
	for {
		line, err := w.br.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "X-Pid: "); ok {
			w.pid, _ = strconv.Atoi(v)
		}
		if strings.HasPrefix(line, "hello ") {
			break
		}
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	done := make(chan time.Time, 1)
	go func() {
		for {
			line, err := w.br.ReadString('\n')
			if line != "" {
				w.mu.Lock()
				w.lines = append(w.lines, strings.TrimSpace(line))
				w.mu.Unlock()
			}
			if err != nil {
				done <- time.Now()
				return
			}
		}
	}()
	return w, done
}

func (w *wsClient) received() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.lines...)
}

// waitLine waits until a received line starts with prefix.
func (w *wsClient) waitLine(prefix string, timeout time.Duration) error {
	return proc.WaitFor(func() bool {
		for _, l := range w.received() {
			if strings.HasPrefix(l, prefix) {
				return true
			}
		}
		return false
	}, timeout, fmt.Sprintf("a line %q", prefix))
}

// TestHijackedConnections: websocket-style connections, which net/http no longer
// tracks once hijacked, learn of the drain. The demo's /ws says "bye" and closes at
// once, so the old generation exits long before its deadline. An application that says
// "bye" but keeps the connection open (probedemo's /hold) is force-closed at the drain
// deadline, while the client is still talking on it.
func TestHijackedConnections(t *testing.T) {
	t.Run("polite application", func(t *testing.T) {
		const drain = 30 * time.Second
		d := startDemo(t, demoOpts{drain: drain})
		old := d.current()
		var clients []*wsClient
		var dones []<-chan time.Time
		for i := 0; i < 3; i++ {
			w, done := dialWS(t, d.addr, "/ws")
			fmt.Fprintf(w.c, "ping %d\n", i)
			if err := w.waitLine(fmt.Sprintf("echo ping %d", i), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			clients, dones = append(clients, w), append(dones, done)
		}
		signalled := time.Now()
		_, cur := d.upgrade()
		var closed []time.Time
		for i, w := range clients {
			select {
			case at := <-dones[i]:
				closed = append(closed, at)
				t.Logf("/ws %d closed %v after the signal: %q", i, at.Sub(signalled).Round(time.Millisecond), w.received())
			case <-time.After(drain + 10*time.Second): // hang guard
				t.Fatalf("/ws %d still open past the drain deadline: %q", i, w.received())
			}
			lines := w.received()
			if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], fmt.Sprintf("bye pid=%d ", old)) {
				t.Errorf("/ws %d: last lines %q, want a bye from %d", i, lines, old)
			}
		}
		// The old generation exits once they are closed, by itself: before its drain
		// deadline, which it never reached.
		if err := waitGone(old, drain); err != nil {
			t.Errorf("the old generation did not exit before its drain deadline: %v", err)
		}
		exited := time.Now()
		for i, at := range closed {
			if at.After(exited) {
				t.Errorf("/ws %d was closed after the old generation exited: it was not told", i)
			}
		}
		if ev := d.events(); ev.Count("drain_deadline", logs.KV("pid", old)) != 0 || ev.Count("drained", logs.KV("pid", old)) != 1 {
			t.Errorf("the old generation's drain did not end by itself (event=drained, no drain_deadline):\n%s", tail(d.log(), 10))
		}
		if w, _ := dialWS(t, d.addr, "/ws"); w.pid != cur {
			t.Errorf("a new /ws reached pid %d, want %d", w.pid, cur)
		}
		d.stop()
	})
	t.Run("application that keeps the connection", func(t *testing.T) {
		drain := 3 * time.Second
		d := startDemoSpec(t, demoSpec{program: proc.Binary(t, probePkg), drain: drain})
		old := d.current()
		w, done := dialWS(t, d.addr, "/hold")
		if w.pid != old {
			t.Fatalf("/hold answered by %d, want %d", w.pid, old)
		}
		signalled := time.Now() // the drain's deadline is no earlier than this plus drain
		_, cur := d.upgrade()
		if err := w.waitLine(fmt.Sprintf("bye pid=%d", old), drain); err != nil {
			t.Fatalf("%v: got %q", err, w.received())
		}
		// The client keeps talking; the connection still works after the bye, before
		// the deadline (its echo arrives before the close).
		fmt.Fprintf(w.c, "still here\n")
		var at time.Time
		select {
		case at = <-done:
			t.Logf("/hold closed %v after the signal (drain deadline %v)", at.Sub(signalled).Round(time.Millisecond), drain)
		case <-time.After(2*drain + 10*time.Second): // hang guard
			t.Fatalf("/hold still open long after the drain deadline")
		}
		if !slices.Contains(w.received(), "echo still here") {
			t.Errorf("the held connection stopped echoing before the deadline: got %q", w.received())
		}
		if at.Before(signalled.Add(drain)) {
			t.Errorf("/hold closed %v after the signal, before the drain deadline %v", at.Sub(signalled).Round(time.Millisecond), drain)
		}
		if err := waitGone(old, drain); err != nil { // hang guard: it exits right after the close
			t.Error(err)
		}
		if ev := d.events(); ev.Count("drain_deadline", logs.KV("pid", old)) != 1 {
			t.Errorf("the old generation did not report its drain deadline (event=drain_deadline)")
		}
		if resp, err := rawhttp.Get(d.addr, "/", 5*time.Second); err != nil || resp.PID() != cur {
			t.Errorf("after the drain: %v, answered by %d, want %d", err, respPID(resp), cur)
		}
		d.stop()
	})
}

// TestSSEEndsCleanly: a server-sent-event stream open on the old generation ends with
// its "event: bye" and a proper end of the chunked body (no reset, no truncation);
// the client's reconnection reaches the new generation; the old generation exits long
// before its deadline.
func TestSSEEndsCleanly(t *testing.T) {
	const drain = 30 * time.Second
	d := startDemo(t, demoOpts{drain: drain})
	old := d.current()
	c, err := rawhttp.Dial(d.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := make(chan struct{})
	done := make(chan inflight, 1)
	go func() {
		var lines []string
		resp, err := c.Stream("GET", "/events?n=600&interval=100", nil, 10*time.Second, func(l []byte) error {
			lines = append(lines, string(l))
			if string(l) == "id: 1" {
				close(first)
			}
			return nil
		})
		done <- inflight{resp: resp, lines: lines, err: err}
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	_, cur := d.upgrade()
	upgraded := time.Now()
	var s inflight
	select {
	case s = <-done:
	case <-time.After(drain + 10*time.Second): // hang guard
		t.Fatal("the event stream did not end")
	}
	t.Logf("the stream ended %v after the upgrade with %d lines; last: %q", time.Since(upgraded).Round(time.Millisecond), len(s.lines), lastN(s.lines, 4))
	if s.err != nil {
		t.Fatalf("the event stream ended with an error (reset or truncated chunked body): %v", s.err)
	}
	if s.resp.Status != 200 || s.resp.PID() != old || s.resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("response %d from %d (%s), want 200 text/event-stream from %d", s.resp.Status, s.resp.PID(), s.resp.Header.Get("Content-Type"), old)
	}
	bye := -1
	for i, l := range s.lines {
		if l == "event: bye" {
			bye = i
		}
		if v, ok := strings.CutPrefix(l, "data: "); ok && !strings.HasPrefix(v, fmt.Sprintf("pid=%d ", old)) {
			t.Errorf("event data %q is not from the old generation %d", v, old)
		}
	}
	if bye < 0 || !slicesHasPrefix(s.lines[bye:], "event: bye", "retry: 100", "data: pid=") {
		t.Errorf("the stream does not end with the bye event: %q", lastN(s.lines, 6))
	}
	// The client reconnects, as an EventSource does, and reaches the new generation.
	reconnectEvents(t, d.addr, old, cur)
	// The old generation exits by itself once the stream has ended: before its drain
	// deadline, which it never reaches.
	if err := waitGone(old, drain); err != nil {
		t.Errorf("the old generation did not exit before its drain deadline: %v", err)
	}
	if ev := d.events(); ev.Count("drain_deadline", logs.KV("pid", old)) != 0 || ev.Count("drained", logs.KV("pid", old)) != 1 {
		t.Errorf("the old generation's drain did not end by itself (event=drained, no drain_deadline)")
	}
	d.stop()
}

// reconnectEvents reconnects to /events as an EventSource does after the bye: once
// the old generation has stopped accepting, the new one, cur, answers. The old one
// tells its handlers it drains (the stream's bye) a moment before its listeners
// stop, so a reconnection in that moment may still reach it: it must then answer
// in full, draining (Connection: close), and the client tries again after the
// retry the bye gave (100ms).
func reconnectEvents(t *testing.T, addr string, old, cur int) {
	t.Helper()
	for i := 0; i < 20; i++ {
		resp, err := rawhttp.Get(addr, "/events?n=1", 5*time.Second)
		switch {
		case err == nil && resp.Status == 200 && resp.PID() == cur:
			return
		case err == nil && resp.Status == 200 && resp.PID() == old && resp.Header.Get("Connection") == "close":
			t.Logf("reconnection %d reached the old generation as it stopped accepting; it answered, draining", i+1)
			time.Sleep(100 * time.Millisecond) // the bye's retry:
		default:
			t.Fatalf("reconnection: %v, status %d from %d (Connection: %q), want 200 from %d (or from the old %d, draining)",
				err, statusOf(resp), respPID(resp), connHeader(resp), cur, old)
		}
	}
	t.Errorf("20 reconnections 100ms apart, all answered by the old generation %d: it never stopped accepting", old)
}

func connHeader(r *rawhttp.Response) string {
	if r == nil {
		return ""
	}
	return r.Header.Get("Connection")
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// slicesHasPrefix reports whether lines begin with lines having the given prefixes.
func slicesHasPrefix(lines []string, prefixes ...string) bool {
	if len(lines) < len(prefixes) {
		return false
	}
	for i, p := range prefixes {
		if !strings.HasPrefix(lines[i], p) {
			return false
		}
	}
	return true
}
