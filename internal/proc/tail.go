package proc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Bounds of what a Tail keeps. Ten lines hold a Go panic's message and the top of
// its stack, or the end of a Python traceback and its exception, which is what a
// report of a failed start needs; 512 bytes hold a whole structured log line. A
// report (at most about 5 KiB) fits the history a generation hands on and an
// answer of the control socket. (The library kept 10 lines of 300 bytes and
// handover run 20 of 512, of which it quoted 10.)
const (
	TailLines   = 10
	TailLineMax = 512
)

// Tail keeps the last lines a process wrote on its standard error, for the report
// of its failure. They reach logs, `handover reload`, `handover status` and the
// upgrade records, so each is kept Printable: a line with terminal escapes cannot
// act on the terminal of the operator who reads it. Its methods may be called on a nil Tail (a process whose stderr
// is not read): it has no lines and never ends.
type Tail struct {
	mu    sync.Mutex
	lines [TailLines]string // a ring: next is the oldest once full
	next  int
	full  bool
	done  chan struct{}
}

// NewTail returns an empty Tail, which nothing feeds but Add.
func NewTail() *Tail { return &Tail{done: make(chan struct{})} }

// Relay copies r, a process's standard error, to w line by line (so that its lines
// do not interleave with the relaying process's own in the middle) and keeps the
// last lines, until r is at EOF: when the process and every process that inherited
// its stderr have exited or closed it. Then it closes r, and Done is closed.
func Relay(r io.ReadCloser, w io.Writer) *Tail {
	t := NewTail()
	go func() {
		defer close(t.done)
		defer r.Close()
		t.copy(r, w)
	}()
	return t
}

func (t *Tail) copy(r io.Reader, w io.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			w.Write(line)
			// A line longer than the buffer is written in pieces, kept as its
			// beginning.
			t.Add(string(line))
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				w.Write(line)
			}
		}
		if err != nil {
			return
		}
	}
}

// Add keeps line (without its line end), Printable, cut to TailLineMax bytes ("..."
// marks the cut).
func (t *Tail) Add(line string) {
	line, cut := escape(strings.TrimRight(line, "\r\n"), TailLineMax)
	if cut {
		line += "..."
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines[t.next] = line
	t.next = (t.next + 1) % len(t.lines)
	t.full = t.full || t.next == 0
}

// Lines returns the lines kept, oldest first.
func (t *Tail) Lines() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	if t.full {
		out = append(out, t.lines[t.next:]...)
	}
	return append(out, t.lines[:t.next]...)
}

// String returns the lines kept, joined by newlines, or "".
func (t *Tail) String() string { return strings.Join(t.Lines(), "\n") }

// Done is closed once Relay has read the whole stream (nil for a nil Tail: never).
func (t *Tail) Done() <-chan struct{} {
	if t == nil {
		return nil
	}
	return t.done
}

// Printable returns s with whatever a terminal would act on written as visible
// escapes: control characters (C0 such as ESC, DEL, C1; tab, CR and LF) as \x1b,
// \x7f, \u009b, \t, \r, \n; other characters that are not printable (Unicode format characters such as
// the bidirectional overrides, non-ASCII spaces) as \u202e...; bytes that are not
// UTF-8 as \xff. Printable text, UTF-8 included, and backslashes are kept as they are.
func Printable(s string) string {
	out, _ := escape(s, -1)
	return out
}

// escape is Printable, stopping before the escaped text would exceed max bytes
// (max < 0: no bound); cut says it stopped.
func escape(s string, max int) (out string, cut bool) {
	clean := true
	for _, r := range s {
		clean = clean && r != utf8.RuneError && unicode.IsPrint(r)
	}
	if clean && (max < 0 || len(s) <= max) {
		return s, false
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		piece := s[i : i+n]
		switch {
		case r == utf8.RuneError && n == 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case r == '\t':
			piece = `\t`
		case r == '\r':
			piece = `\r`
		case r == '\n':
			piece = `\n`
		case unicode.IsPrint(r):
		case r < utf8.RuneSelf:
			piece = fmt.Sprintf(`\x%02x`, r)
		case r <= 0xffff:
			piece = fmt.Sprintf(`\u%04x`, r)
		default:
			piece = fmt.Sprintf(`\U%08x`, r)
		}
		if max >= 0 && b.Len()+len(piece) > max {
			return b.String(), true
		}
		b.WriteString(piece)
		i += n
	}
	return b.String(), false
}
