package handoff

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sameMessage(a, b Message) bool {
	return a.Verb == b.Verb && a.PID == b.PID && a.N == b.N && a.Text == b.Text && len(a.Files) == len(b.Files)
}

// maxErrorLen bounds error messages that quote input: it is clipped to 64 bytes,
// which %q may spell with four characters each.
const maxErrorLen = 400

func TestParseMessage(t *testing.T) {
	long := strings.Repeat("x", 200)
	tests := []struct {
		line    string
		want    Message
		wantErr string
	}{
		{line: "ready 1", want: Message{Verb: "ready", PID: 1}},
		{line: "ready 4194304", want: Message{Verb: "ready", PID: 4194304}},
		{line: "ready 007", want: Message{Verb: "ready", PID: 7}},
		{line: "main", want: Message{Verb: "main"}},
		{line: "main ", want: Message{Verb: "main"}},
		{line: "error", want: Message{Verb: "error"}},
		{line: "error ", want: Message{Verb: "error"}},
		{line: "error cannot bind: address in use", want: Message{Verb: "error", Text: "cannot bind: address in use"}},
		{line: "abort upgrade abandoned", want: Message{Verb: "abort", Text: "upgrade abandoned"}},
		{line: "abort  two spaces ", want: Message{Verb: "abort", Text: " two spaces "}},

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
		{line: "done", want: Message{Verb: "done"}},
		{line: "done 5", wantErr: "takes no argument"},
		{line: "current", want: Message{Verb: "current"}},
		{line: "end", want: Message{Verb: "end"}},
		{line: "finish", want: Message{Verb: "finish"}},
		{line: "keys", want: Message{Verb: "keys"}},
		{line: "above 0", want: Message{Verb: "above", N: 0}},
		{line: "above 3", want: Message{Verb: "above", N: 3}},
		{line: "conns-taken 8", want: Message{Verb: "conns-taken", N: 8}},
		{line: "conns-taken", wantErr: "needs a count"},
		{line: "upstream 2", want: Message{Verb: "upstream", N: 2}},
		{line: "history [{\"trigger\":\"SIGUSR2\"}]", want: Message{Verb: "history", Text: "[{\"trigger\":\"SIGUSR2\"}]"}},
		{line: "state v2", want: Message{Verb: "state", Text: "v2"}},
		{line: "drained {}", want: Message{Verb: "drained", Text: "{}"}},
		{line: "above", wantErr: "needs a count"},
		{line: "above -1", wantErr: "needs a count"},
		{line: "upstream x", wantErr: "needs a count"},
		{line: "end now", wantErr: "takes no argument"},
		{line: "finish 2", wantErr: "takes no argument"},
		{line: "current 1", wantErr: "takes no argument"},
		{line: "ready " + long, wantErr: "..."}, // clipped in the error
	}
	for _, tt := range tests {
		got, err := ParseMessage(tt.line)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseMessage(%q) = %+v, %v; want error containing %q", tt.line, got, err, tt.wantErr)
			}
			if err != nil && len(err.Error()) > maxErrorLen {
				t.Errorf("ParseMessage(%q): error of %d bytes is not clipped", tt.line, len(err.Error()))
			}
			continue
		}
		if err != nil || !sameMessage(got, tt.want) {
			t.Errorf("ParseMessage(%q) = %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
	}
}

func TestMessageString(t *testing.T) {
	tests := []struct {
		m    Message
		want string
	}{
		{Message{Verb: "ready", PID: 42}, "ready 42"},
		{Message{Verb: "main"}, "main"},
		{Message{Verb: "error", Text: "line one\nline two"}, "error line one line two"},
		{Message{Verb: "abort", Text: ""}, "abort "},
	}
	for _, tt := range tests {
		if got := tt.m.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.m, got, tt.want)
		}
	}
	huge := Message{Verb: "error", Text: strings.Repeat("é", maxMessage)}
	if s := huge.String(); len(s) > maxMessage || strings.Contains(s, "\n") {
		t.Errorf("String of a huge message is %d bytes; want at most %d", len(s), maxMessage)
	}
}

// checkRoundTrip checks that a message parsed from a line survives String and
// parseMessage, as it must to cross the channel.
func checkRoundTrip(t *testing.T, line string) {
	m, err := ParseMessage(line)
	if err != nil {
		if len(err.Error()) > maxErrorLen {
			t.Fatalf("ParseMessage(%q): error of %d bytes", clip(line), len(err.Error()))
		}
		return
	}
	s := m.String()
	if len(s) > maxMessage {
		t.Fatalf("ParseMessage(%q).String() is %d bytes; receive accepts at most %d", line, len(s), maxMessage)
	}
	if strings.Contains(s, "\n") {
		t.Fatalf("ParseMessage(%q).String() = %q contains a newline", line, s)
	}
	m2, err := ParseMessage(s)
	if err != nil {
		t.Fatalf("ParseMessage(%q) = %+v, whose String %q does not parse: %v", line, m, s, err)
	}
	// String makes the text one line and bounds it: a line that was already both
	// comes back unchanged, any other reaches a fixed point.
	if !strings.Contains(line, "\n") && len(m.Text) <= maxMessage-16 {
		if !sameMessage(m2, m) {
			t.Fatalf("round trip of %q: %+v became %+v", line, m, m2)
		}
	}
	if s2 := m2.String(); s2 != s {
		t.Fatalf("round trip of %q is not stable: %q then %q", line, s, s2)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{"ready 1", "ready 0", "ready +1", "ready 007", "main", "main ", "main x", "current", "current x", "end", "finish", "keys", "above 2", "above -2", "upstream 1", "history []", "state v1", "drained {}", "error", "error boom", "abort why\nnot", "done", "done x", "", " ", "ready 9223372036854775807", "ready 9223372036854775808"} {
		f.Add(s)
	}
	f.Fuzz(checkRoundTrip)
}

// pair returns both ends of a handover channel, the child's opened as the child
// does.
func pair(t *testing.T) (parent, child *Channel) {
	t.Helper()
	parent, f, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	child, err = NewChannel(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		parent.Close()
		child.Close()
	})
	for _, c := range []*Channel{parent, child} {
		c.conn.SetDeadline(time.Now().Add(waitBound))
	}
	return parent, child
}

func TestChannelExchange(t *testing.T) {
	parent, child := pair(t)
	msgs := []Message{{Verb: Error, Text: "first\nattempt"}, {Verb: Ready, PID: 1234}}
	for _, m := range msgs {
		if err := child.Send(m, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := parent.Receive(); err != nil || !sameMessage(got, Message{Verb: Error, Text: "first attempt"}) {
		t.Fatalf("receive = %+v, %v", got, err)
	}
	if got, err := parent.Receive(); err != nil || !sameMessage(got, msgs[1]) {
		t.Fatalf("receive = %+v, %v", got, err)
	}
	if err := parent.Send(Message{Verb: Main}, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := child.Receive(); err != nil || got.Verb != Main {
		t.Fatalf("child receive = %+v, %v", got, err)
	}
	child.Close()
	if got, err := parent.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("receive after the child closed = %+v, %v; want io.EOF", got, err)
	}
}

// Descriptors travel with their message, arrive close-on-exec, and refer to the same
// open file.
func TestChannelPassesFiles(t *testing.T) {
	parent, child := pair(t)
	f, err := os.CreateTemp(t.TempDir(), "payload")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("payload"); err != nil {
		t.Fatal(err)
	}
	if err := parent.Send(Message{Verb: Main, Files: []*os.File{f, f}}, time.Second); err != nil {
		t.Fatal(err)
	}
	got, err := child.Receive()
	if err != nil || got.Verb != Main || len(got.Files) != 2 {
		t.Fatalf("receive = %+v, %v; want main with 2 files", got, err)
	}
	for _, g := range got.Files {
		defer g.Close()
		flags, err := unix.FcntlInt(g.Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("received fd %d: flags %#x, %v; want close-on-exec", g.Fd(), flags, err)
		}
		b := make([]byte, 7)
		if _, err := g.ReadAt(b, 0); err != nil || string(b) != "payload" {
			t.Errorf("received file reads %q, %v", b, err)
		}
	}
	many := make([]*os.File, maxFiles+1)
	for i := range many {
		many[i] = f
	}
	if err := parent.Send(Message{Verb: Main, Files: many}, time.Second); err == nil {
		t.Errorf("a message with %d descriptors was sent", len(many))
	}
}

func TestChannelSocketPairIsCloseOnExec(t *testing.T) {
	parent, f, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	defer f.Close()
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("the child's end is inheritable before it is passed deliberately")
	}
}

// The longest message passes; one byte more is an error, and the next message is
// read whole (a packet never bleeds into the next).
func TestChannelLongestMessage(t *testing.T) {
	parent, child := pair(t)
	line := "error " + strings.Repeat("a", maxMessage-len("error "))
	if _, err := child.conn.Write([]byte(line)); err != nil {
		t.Fatal(err)
	}
	got, err := parent.Receive()
	if err != nil || got.Verb != Error || len(got.Text) != maxMessage-len("error ") {
		t.Fatalf("a message of exactly %d bytes: %v (text of %d bytes)", maxMessage, err, len(got.Text))
	}
	if _, err := child.conn.Write([]byte(line + "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := parent.Receive(); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("a message of %d bytes: %v; want too long", maxMessage+1, err)
	}
	if err := child.Send(Message{Verb: Done}, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := parent.Receive(); err != nil || got.Verb != Done {
		t.Fatalf("the message after an over-long one = %+v, %v", got, err)
	}
}

func TestChannelSendTimeout(t *testing.T) {
	parent, _ := pair(t)
	m := Message{Verb: Error, Text: strings.Repeat("x", 4000)}
	start := time.Now()
	var err error
	// The child never reads: the socket buffers fill up and send times out.
	for i := 0; i < 100000 && err == nil; i++ {
		err = parent.Send(m, 20*time.Millisecond)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("send to a peer that does not read: %v; want a deadline error", err)
	}
	if took := time.Since(start); took > waitBound {
		t.Fatalf("send timed out only after %s", took)
	}
}

// waitBound bounds every wait in these tests: a hang guard, not a timing goal.
const waitBound = 10 * time.Second

// A peer that exits with messages it never read still delivers what it said before
// it went: the messages it sent, then EOF (EOF at once if it said nothing). Linux
// marks the survivor's end ECONNRESET when the closing end had unread data, and a
// SOCK_SEQPACKET read reports that before the queued messages. A successor told to
// stop says "done" and exits while its predecessor's last news is still on its way
// to it: the "done" must be read, or the predecessor takes a clean exit for a crash.
func TestChannelLastWordsOfAPeerThatDidNotRead(t *testing.T) {
	for _, said := range [][]Message{{{Verb: Done}, {Verb: Error, Text: "bye"}}, nil} {
		parent, child := pair(t)
		for _, m := range []Message{{Verb: Above, N: 0}, {Verb: Drained, Text: "{}"}} {
			if err := parent.Send(m, time.Second); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range said {
			if err := child.Send(m, time.Second); err != nil {
				t.Fatal(err)
			}
		}
		child.Close() // with the parent's two messages unread
		for _, want := range said {
			if got, err := parent.Receive(); err != nil || !sameMessage(got, want) {
				t.Fatalf("receive = %+v, %v; want %+v", got, err, want)
			}
		}
		if got, err := parent.Receive(); !errors.Is(err, io.EOF) {
			t.Fatalf("receive after the %d messages it said = %+v, %v; want io.EOF", len(said), got, err)
		}
	}
}
