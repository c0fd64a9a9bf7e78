package proc

import (
	"io"
	"strings"
	"testing"
)

// TestTail: a Tail keeps the last TailLines lines, oldest first, without their line
// ends, each cut to TailLineMax bytes; a nil Tail has none and never ends.
func TestTail(t *testing.T) {
	tl := NewTail()
	if got := tl.Lines(); len(got) != 0 {
		t.Errorf("empty: %q", got)
	}
	for _, l := range []string{"a\n", "b\r\n", "c"} {
		tl.Add(l)
	}
	if got := tl.String(); got != "a\nb\nc" {
		t.Errorf("String = %q", got)
	}
	for i := 0; i < TailLines; i++ {
		tl.Add(strings.Repeat("x", i+1))
	}
	got := tl.Lines()
	if len(got) != TailLines || got[0] != "x" || got[TailLines-1] != strings.Repeat("x", TailLines) {
		t.Errorf("after %d more lines: %q", TailLines, got)
	}
	tl.Add(strings.Repeat("y", 2000))
	if last := tl.Lines()[TailLines-1]; len(last) != TailLineMax+3 || !strings.HasSuffix(last, "...") {
		t.Errorf("a long line is kept as %d bytes", len(last))
	}
	var none *Tail
	if none.Lines() != nil || none.String() != "" || none.Done() != nil {
		t.Errorf("a nil Tail has lines or ends")
	}
}

// TestRelay: Relay copies everything, a line longer than its buffer included, keeps
// the last lines (the long one by its beginning), closes the reader and ends at EOF.
func TestRelay(t *testing.T) {
	var out strings.Builder
	long := strings.Repeat("y", 70<<10)
	in := "one\ntwo\n" + long + "\nlast without newline"
	r := &closeReader{Reader: strings.NewReader(in)}
	tl := Relay(r, &out)
	<-tl.Done()
	if out.String() != in {
		t.Errorf("copied %d bytes, want %d", out.Len(), len(in))
	}
	got := tl.Lines()
	if len(got) != 4 || got[0] != "one" || got[3] != "last without newline" || !strings.HasPrefix(got[2], "yyy") {
		t.Errorf("kept %q", got)
	}
	if !r.closed {
		t.Errorf("the reader was not closed")
	}
}

type closeReader struct {
	io.Reader
	closed bool
}

func (c *closeReader) Close() error { c.closed = true; return nil }
