package graceful

import (
	"bufio"
	"io"
	"os"
	"strings"
	"sync"
)

// Bounds of what a failed upgrade's report quotes of the new generation's stderr.
const (
	tailLines   = 10
	tailLineLen = 300
)

// stderrTail copies what a new generation writes on its standard error (a pipe,
// until the handover) to ours, and keeps the last lines for the report of a failed
// upgrade.
type stderrTail struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{} // closed at EOF: the child exited, or put its own stderr back
}

func relayStderr(r *os.File, to io.Writer) *stderrTail {
	t := &stderrTail{done: make(chan struct{})}
	go func() {
		defer close(t.done)
		defer r.Close()
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				io.WriteString(to, line)
				t.add(strings.TrimRight(line, "\n"))
			}
			if err != nil {
				return
			}
		}
	}()
	return t
}

func (t *stderrTail) add(line string) {
	if len(line) > tailLineLen {
		line = line[:tailLineLen] + "..."
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > tailLines {
		t.lines = t.lines[len(t.lines)-tailLines:]
	}
}

// last returns the last lines read, joined, or "".
func (t *stderrTail) last() string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// ended is closed once the child's stderr pipe is at EOF (nil: never).
func (t *stderrTail) ended() <-chan struct{} {
	if t == nil {
		return nil
	}
	return t.done
}
