//go:build linux

package control

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/wire"
)

// The control socket's server against misbehaving clients, over real unix sockets:
// requests cut short, clients that leave before their answer, more connections than
// it serves at once, accepts that fail.

// countingServer counts the upgrades it is asked for.
type countingServer struct{ upgrades atomic.Int32 }

func (s *countingServer) Status() (wire.Status, error) {
	return wire.Status{PID: 1, Generation: 1, State: "serving"}, nil
}

func (s *countingServer) Upgrade(string) Outcome {
	s.upgrades.Add(1)
	return Outcome{PID: 2, Generation: 2}
}

// listenControl listens on a new unix socket (not yet accepting) and returns it with
// its path.
func listenControl(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, path
}

// serveControl accepts on ln (Accept) until the test ends, logging JSON to log.
func serveControl(t *testing.T, ln net.Listener, s Server, log io.Writer) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Accept(ln, slog.New(slog.NewJSONHandler(log, nil)), s)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
}

// dial connects to path.
func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.UnixConn)
}

// shortReadTimeout sets the server's wait for a request line to d for the test.
func shortReadTimeout(t *testing.T, d time.Duration) {
	old := readTimeout
	readTimeout = d
	t.Cleanup(func() { readTimeout = old })
}

// events returns the event= attributes of a JSON log, in order.
func events(log string) []string {
	var out []string
	for _, rec := range jsonLines(log) {
		if e, ok := rec["event"].(string); ok {
			out = append(out, e)
		}
	}
	return out
}

// TestPartialRequest: "upgrade" without a newline is not a request, whether the
// client then closes its writing side or just waits: it is answered with an error
// that says a request ends with a newline (at once, or at the read timeout), and no
// upgrade runs. (Before, the line was taken as a request at EOF or at the timeout,
// and the upgrade ran.)
func TestPartialRequest(t *testing.T) {
	shortReadTimeout(t, 300*time.Millisecond)
	ln, path := listenControl(t)
	s := &countingServer{}
	var log syncBuffer
	serveControl(t, ln, s, &log)

	t.Run("then EOF", func(t *testing.T) {
		c := dial(t, path)
		io.WriteString(c, Upgrade)
		c.CloseWrite()
		resp, err := ReadResponse(c)
		if err != nil || resp.OK || !strings.Contains(resp.Error, "bad request: unexpected EOF: the line ends without a newline") ||
			!strings.Contains(resp.Error, "ended by a newline") {
			t.Errorf("answer %+v, %v; want a bad request: no newline", resp, err)
		}
	})
	t.Run("then nothing", func(t *testing.T) {
		c := dial(t, path)
		io.WriteString(c, Upgrade)
		start := time.Now()
		resp, err := ReadResponse(c)
		if err != nil || resp.OK || !strings.Contains(resp.Error, "bad request: no whole request line within 300ms;") {
			t.Errorf("answer %+v, %v; want a bad request at the read timeout", resp, err)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Errorf("answered after %v, before the read timeout", took)
		}
	})
	if n := s.upgrades.Load(); n != 0 {
		t.Errorf("%d upgrades ran for requests without a newline", n)
	}
	if got := events(log.String()); len(got) != 2 || got[0] != "control_bad_request" || got[1] != "control_bad_request" {
		t.Errorf("events %v, want two control_bad_request", got)
	}
	// A whole request still runs.
	c := dial(t, path)
	io.WriteString(c, Upgrade+"\n")
	if resp, err := ReadResponse(c); err != nil || !resp.OK || resp.Generation != 2 || s.upgrades.Load() != 1 {
		t.Errorf("a whole request: %+v, %v; %d upgrades", resp, err, s.upgrades.Load())
	}
}

// TestAbandonedUpgrade: an upgrade request whose client closed its end before the
// server read it (it waited in the socket's queue: here the server is not accepting
// yet) is not run, and logged (event control_abandoned). A client that only shut
// down its writing side is still there: its upgrade runs and it reads the answer.
func TestAbandonedUpgrade(t *testing.T) {
	ln, path := listenControl(t)
	gone := dial(t, path)
	io.WriteString(gone, Upgrade+"\n")
	gone.Close()
	half := dial(t, path)
	io.WriteString(half, Upgrade+"\n")
	half.CloseWrite()

	s := &countingServer{}
	var log syncBuffer
	serveControl(t, ln, s, &log)
	resp, err := ReadResponse(half)
	if err != nil || !resp.OK || resp.Generation != 2 {
		t.Errorf("the half-closed client: %+v, %v; want its upgrade's outcome", resp, err)
	}
	// (The two connections are served side by side: the gone one's may end last.)
	var got []string
	for deadline := time.Now().Add(5 * time.Second); len(got) == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got = events(log.String())
	}
	if len(got) != 1 || got[0] != "control_abandoned" {
		t.Errorf("events %v, want one control_abandoned", got)
	}
	if n := s.upgrades.Load(); n != 1 {
		t.Errorf("%d upgrades ran, want 1 (the half-closed client's; not the gone one's)", n)
	}
}

// TestConnectionCap: MaxConns idle connections are served at once; one more is
// answered at once with "busy" and closed. When one of them closes, a new client is
// answered; the idle ones are answered with an error at the read timeout and closed.
func TestConnectionCap(t *testing.T) {
	shortReadTimeout(t, 3*time.Second)
	ln, path := listenControl(t)
	s := &countingServer{}
	var log syncBuffer
	serveControl(t, ln, s, &log)
	var idle []*net.UnixConn
	for i := 0; i < MaxConns; i++ {
		idle = append(idle, dial(t, path))
	}
	start := time.Now()
	extra := dial(t, path)
	resp, err := ReadResponse(extra)
	if err != nil || resp.OK || resp.Error != "busy: 16 control connections are open at once (the most served); try again" {
		t.Fatalf("connection %d: %+v, %v; want busy", MaxConns+1, resp, err)
	}
	if took := time.Since(start); took >= readTimeout {
		t.Errorf("busy answered after %v, not at once", took)
	}
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("the refused connection was not closed: %v", err)
	}
	// One idle connection leaves: a new client gets its status. (Its slot is freed
	// once its server has seen the close: a client refused meanwhile tries again.)
	idle[0].Close()
	idle = idle[1:]
	var got Response
	for i := 0; ; i++ {
		c := dial(t, path)
		io.WriteString(c, Status+"\n")
		if got, err = ReadResponse(c); err == nil && got.OK || i == 100 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !got.OK || got.Status == nil {
		t.Errorf("after one idle connection closed: %+v, %v; want the status", got, err)
	}
	for i, c := range idle {
		resp, err := ReadResponse(c)
		if err != nil || resp.OK || !strings.Contains(resp.Error, "bad request: no whole request line within 3s;") {
			t.Errorf("idle connection %d: %+v, %v; want a bad request at the read timeout", i, resp, err)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("idle connection %d was not closed: %v", i, err)
		}
	}
	if n := strings.Count(strings.Join(events(log.String()), " "), "control_busy"); n < 1 {
		t.Errorf("no control_busy logged")
	}
}

// failingListener fails its first n accepts with EMFILE (the process is out of
// descriptors), then accepts from the listener it wraps.
type failingListener struct {
	net.Listener
	n     int
	fails atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if int(l.fails.Load()) < l.n {
		l.fails.Add(1)
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: errors.New("too many open files")}
	}
	return l.Listener.Accept()
}

// TestAcceptRetries: a failed accept is logged and tried again, after pauses that
// double from 5 ms to at most 1 s; the control socket then answers. (An accept loop
// that returned at the first failure left `handover status` and `reload` without an
// answer for good.)
func TestAcceptRetries(t *testing.T) {
	ln, path := listenControl(t)
	fl := &failingListener{Listener: ln, n: 4}
	var log syncBuffer
	serveControl(t, fl, &countingServer{}, &log)
	c := dial(t, path)
	io.WriteString(c, Status+"\n")
	if resp, err := ReadResponse(c); err != nil || !resp.OK {
		t.Fatalf("after %d failed accepts: %+v, %v", fl.fails.Load(), resp, err)
	}
	var pauses []string
	for _, rec := range jsonLines(log.String()) {
		if rec["event"] == "control_accept_failed" {
			pauses = append(pauses, rec["retry_in"].(string))
		}
	}
	if strings.Join(pauses, " ") != "5ms 10ms 20ms 40ms" {
		t.Errorf("pauses after the failed accepts: %v; want 5ms 10ms 20ms 40ms", pauses)
	}
	var d time.Duration
	for i := 0; i < 20; i++ {
		d = retryPause(d)
	}
	if d != time.Second {
		t.Errorf("the pause grows to %v, want at most 1s", d)
	}
}

// jsonLines parses a JSON log, one record a line.
func jsonLines(log string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			out = append(out, rec)
		}
	}
	return out
}
