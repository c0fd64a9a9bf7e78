//go:build linux

package master

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"sync"
)

// ring keeps the last lines a child wrote to its stderr, for failure reports.
type ring struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

// Bounds of what a ring keeps.
const (
	ringLines   = 20
	ringLineMax = 512
)

func newRing(n int) *ring { return &ring{lines: make([]string, n)} }

func (r *ring) add(line string) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) > ringLineMax {
		line = line[:ringLineMax] + "…"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	r.full = r.full || r.next == 0
}

// last returns up to n of the last lines, oldest first.
func (r *ring) last(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []string
	if r.full {
		all = append(all, r.lines[r.next:]...)
	}
	all = append(all, r.lines[:r.next]...)
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

// copyOutput copies a child's stderr to w line by line (so that its lines do not
// interleave with the master's own in the middle) and keeps the last lines in r. It
// returns at EOF: when the child and every process that inherited its stderr have
// exited or closed it.
func copyOutput(src io.Reader, w io.Writer, r *ring) {
	br := bufio.NewReaderSize(src, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			w.Write(line)
			if errors.Is(err, bufio.ErrBufferFull) {
				// A very long line: written in pieces, kept as its beginning.
				r.add(string(line))
				for errors.Is(err, bufio.ErrBufferFull) {
					line, err = br.ReadSlice('\n')
					w.Write(line)
				}
			} else {
				r.add(string(line))
			}
		}
		if err != nil {
			return
		}
	}
}
