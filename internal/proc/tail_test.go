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

// TestTailEscapes: what a process writes on stderr reaches the operator's terminal
// (handover reload, handover status): a Tail keeps terminal escapes, other control
// characters, invisible format characters and bytes that are not UTF-8 as visible
// escapes, and printable text (UTF-8 included) as it is. The cut of a long line
// does not split an escape or a character.
func TestTailEscapes(t *testing.T) {
	tl := NewTail()
	for _, l := range []string{
		"\x1b[31mred\x1b[0m \x1b]0;title\x07\n",
		"tab\there, bell\x07, del\x7f, csi\u009b2J\n",
		"héllo wörld ✓ 日本 \\x1b stays a backslash\n",
		"bad \xff\xfe utf-8, rlo \u202eevil\u202c, nbsp\u00a0, \U0001F600\n",
		"\r\x1b[2K\x1b[1A\r\n",
	} {
		tl.Add(l)
	}
	want := []string{
		`\x1b[31mred\x1b[0m \x1b]0;title\x07`,
		`tab\there, bell\x07, del\x7f, csi\u009b2J`,
		`héllo wörld ✓ 日本 \x1b stays a backslash`,
		`bad \xff\xfe utf-8, rlo \u202eevil\u202c, nbsp\u00a0, ` + "\U0001F600",
		`\r\x1b[2K\x1b[1A`,
	}
	got := tl.Lines()
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Errorf("line %d kept as %q, want %q", i, got, want[i])
		}
	}
	for _, l := range got {
		for _, r := range l {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				t.Errorf("line %q keeps control character %U", l, r)
			}
		}
	}
	lastLine := func() string { l := tl.Lines(); return l[len(l)-1] }
	tl.Add(strings.Repeat("é", 300))
	if last := lastLine(); len(last) != TailLineMax+3 || !strings.HasSuffix(last, "é...") {
		t.Errorf("a long UTF-8 line is kept as %d bytes: %q", len(last), last[len(last)-8:])
	}
	tl.Add("x" + strings.Repeat("\x1b", 200))
	if last := lastLine(); len(last) != 1+127*4+3 || !strings.HasSuffix(last, `\x1b...`) {
		t.Errorf("a long line of escapes is kept as %d bytes ending %q: an escape was cut", len(last), last[len(last)-8:])
	}
	if Printable("plain text: ok") != "plain text: ok" {
		t.Errorf("printable text was changed")
	}
}
