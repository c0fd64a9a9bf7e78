package graceful

import (
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// maxErrorLen bounds error messages that quote input: it is clipped to 64 bytes,
// which %q may spell with four characters each.
const maxErrorLen = 400

func TestParseMessage(t *testing.T) {
	long := strings.Repeat("x", 200)
	tests := []struct {
		line    string
		want    message
		wantErr string
	}{
		{line: "ready 1", want: message{verb: "ready", pid: 1}},
		{line: "ready 4194304", want: message{verb: "ready", pid: 4194304}},
		{line: "ready 007", want: message{verb: "ready", pid: 7}},
		{line: "main", want: message{verb: "main"}},
		{line: "main ", want: message{verb: "main"}},
		{line: "error", want: message{verb: "error"}},
		{line: "error ", want: message{verb: "error"}},
		{line: "error cannot bind: address in use", want: message{verb: "error", text: "cannot bind: address in use"}},
		{line: "abort upgrade abandoned", want: message{verb: "abort", text: "upgrade abandoned"}},
		{line: "abort  two spaces ", want: message{verb: "abort", text: " two spaces "}},

		{line: "", wantErr: "unknown message"},
		{line: " ready 1", wantErr: "unknown message"},
		{line: "READY 1", wantErr: "unknown message"},
		{line: "hello", wantErr: "unknown message"},
		{line: "ready", wantErr: "positive PID"},
		{line: "ready ", wantErr: "positive PID"},
		{line: "ready 0", wantErr: "positive PID"},
		{line: "ready -5", wantErr: "positive PID"},
		{line: "ready +5", wantErr: "positive PID"},
		{line: "ready 5 ", wantErr: "positive PID"},
		{line: "ready  5", wantErr: "positive PID"},
		{line: "ready 0x10", wantErr: "positive PID"},
		{line: "ready 99999999999999999999", wantErr: "positive PID"},
		{line: "main now", wantErr: "takes no argument"},
		{line: "done", want: message{verb: "done"}},
		{line: "done 5", wantErr: "takes no argument"},
		{line: "ready " + long, wantErr: "..."}, // clipped in the error
	}
	for _, tt := range tests {
		got, err := parseMessage(tt.line)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseMessage(%q) = %+v, %v; want error containing %q", tt.line, got, err, tt.wantErr)
			}
			if err != nil && len(err.Error()) > maxErrorLen {
				t.Errorf("parseMessage(%q): error of %d bytes is not clipped", tt.line, len(err.Error()))
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseMessage(%q) = %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
	}
}

func TestMessageString(t *testing.T) {
	tests := []struct {
		m    message
		want string
	}{
		{message{verb: "ready", pid: 42}, "ready 42"},
		{message{verb: "main"}, "main"},
		{message{verb: "error", text: "line one\nline two"}, "error line one line two"},
		{message{verb: "abort", text: ""}, "abort "},
	}
	for _, tt := range tests {
		if got := tt.m.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.m, got, tt.want)
		}
	}
	huge := message{verb: "error", text: strings.Repeat("é", maxMessage)}
	if s := huge.String(); len(s) > maxMessage || strings.Contains(s, "\n") {
		t.Errorf("String of a huge message is %d bytes; want at most %d", len(s), maxMessage)
	}
}

// checkRoundTrip checks that a message parsed from a line survives String and
// parseMessage, as it must to cross the channel.
func checkRoundTrip(t *testing.T, line string) {
	m, err := parseMessage(line)
	if err != nil {
		if len(err.Error()) > maxErrorLen {
			t.Fatalf("parseMessage(%q): error of %d bytes", clip(line), len(err.Error()))
		}
		return
	}
	s := m.String()
	if len(s) > maxMessage {
		t.Fatalf("parseMessage(%q).String() is %d bytes; receive accepts at most %d", line, len(s), maxMessage)
	}
	if strings.Contains(s, "\n") {
		t.Fatalf("parseMessage(%q).String() = %q contains a newline", line, s)
	}
	m2, err := parseMessage(s)
	if err != nil {
		t.Fatalf("parseMessage(%q) = %+v, whose String %q does not parse: %v", line, m, s, err)
	}
	// String makes the text one line and bounds it: a line that was already both
	// comes back unchanged, any other reaches a fixed point.
	if !strings.Contains(line, "\n") && len(m.text) <= maxMessage-16 {
		if m2 != m {
			t.Fatalf("round trip of %q: %+v became %+v", line, m, m2)
		}
	}
	if s2 := m2.String(); s2 != s {
		t.Fatalf("round trip of %q is not stable: %q then %q", line, s, s2)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{"ready 1", "ready 0", "ready +1", "ready 007", "main", "main ", "main x", "error", "error boom", "abort why\nnot", "done", "done x", "", " ", "ready 9223372036854775807", "ready 9223372036854775808"} {
		f.Add(s)
	}
	f.Fuzz(checkRoundTrip)
}

// pair returns both ends of a handover channel, the child's opened as the child
// does.
func pair(t *testing.T) (parent, child *channel) {
	t.Helper()
	parent, f, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	child, err = newChannel(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		parent.close()
		child.close()
	})
	for _, c := range []*channel{parent, child} {
		c.conn.SetDeadline(time.Now().Add(waitBound))
	}
	return parent, child
}

func TestChannelExchange(t *testing.T) {
	parent, child := pair(t)
	msgs := []message{{verb: "error", text: "first\nattempt"}, {verb: "ready", pid: 1234}}
	for _, m := range msgs {
		if err := child.send(m, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := parent.receive(); err != nil || got != (message{verb: "error", text: "first attempt"}) {
		t.Fatalf("receive = %+v, %v", got, err)
	}
	if got, err := parent.receive(); err != nil || got != msgs[1] {
		t.Fatalf("receive = %+v, %v", got, err)
	}
	if err := parent.send(message{verb: "main"}, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := child.receive(); err != nil || got.verb != "main" {
		t.Fatalf("child receive = %+v, %v", got, err)
	}
	child.close()
	if got, err := parent.receive(); !errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("receive after the child closed = %+v, %v; want io.EOF", got, err)
	}
}

func TestChannelSocketPairIsCloseOnExec(t *testing.T) {
	parent, f, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.close()
	defer f.Close()
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("the child's end is inheritable before it is passed deliberately")
	}
}

func TestChannelLongestMessage(t *testing.T) {
	parent, child := pair(t)
	line := "error " + strings.Repeat("a", maxMessage-len("error "))
	if _, err := io.WriteString(child.conn, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := parent.receive()
	if err != nil || got.verb != "error" || len(got.text) != maxMessage-len("error ") {
		t.Fatalf("a line of exactly %d bytes: %v (text of %d bytes)", maxMessage, err, len(got.text))
	}
	if _, err := io.WriteString(child.conn, line+"a\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := parent.receive(); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("a line of %d bytes: %v; want too long", maxMessage+1, err)
	}
}

// A peer that sends an endless line gets an error after maxMessage bytes; receive
// does not buffer the line.
func TestChannelOverlongLine(t *testing.T) {
	parent, child := pair(t)
	junk := []byte(strings.Repeat("z", 8<<20)) // no newline
	wrote := make(chan error, 1)
	go func() {
		_, err := child.conn.Write(junk)
		wrote <- err
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := parent.receive()
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("receive of an endless line: %v; want too long", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("receive allocated %d bytes for an over-long line", alloc)
	}
	select {
	case err := <-wrote:
		t.Fatalf("the peer wrote all 8 MiB (%v): receive read far past the limit", err)
	default:
	}
	parent.close()
	<-wrote
}

func TestChannelEOFMidLine(t *testing.T) {
	for _, tt := range []struct {
		name, data string
	}{
		// "ready 12" of "ready 123\n" must not be taken for PID 12.
		{"short", "ready 12"},
		{"longer than the buffer", "error " + strings.Repeat("x", 1000)},
		{"after a message", "main\nmai"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			parent, child := pair(t)
			if _, err := io.WriteString(child.conn, tt.data); err != nil {
				t.Fatal(err)
			}
			child.close()
			if strings.HasPrefix(tt.data, "main\n") {
				if m, err := parent.receive(); err != nil || m.verb != "main" {
					t.Fatalf("first receive = %+v, %v", m, err)
				}
			}
			m, err := parent.receive()
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("receive of %q then EOF = %q, %v; want io.ErrUnexpectedEOF", clip(tt.data), clip(m.String()), err)
			}
		})
	}
}

func TestChannelSendTimeout(t *testing.T) {
	parent, _ := pair(t)
	m := message{verb: "error", text: strings.Repeat("x", maxMessage-32)}
	start := time.Now()
	var err error
	// The child never reads: the socket buffers fill up and send times out.
	for i := 0; i < 100000 && err == nil; i++ {
		err = parent.send(m, 20*time.Millisecond)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("send to a peer that does not read: %v; want a deadline error", err)
	}
	if took := time.Since(start); took > waitBound {
		t.Fatalf("send timed out only after %s", took)
	}
}
