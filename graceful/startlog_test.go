package graceful

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// TestStartLogHeld: a new generation's start-up lines wait for flush, keep their
// order, and later ones are written at once; a first generation's are written at
// once; the backstop writes them if nothing flushes.
func TestStartLogHeld(t *testing.T) {
	var mu sync.Mutex
	var got []string
	line := func(s string) func() {
		return func() {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, s)
		}
	}
	written := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}

	var held startLog
	held.holdIf(true)
	held.line(line("keys"))
	held.line(line("state"))
	held.line(line("starting"))
	if w := written(); len(w) != 0 {
		t.Fatalf("written before flush: %v", w)
	}
	held.flush()
	held.line(line("ready"))
	held.flush() // again: nothing twice
	if w := written(); !slices.Equal(w, []string{"keys", "state", "starting", "ready"}) {
		t.Fatalf("written %v; want keys, state, starting, ready", w)
	}

	got = nil
	var first startLog
	first.holdIf(false)
	first.line(line("starting"))
	if w := written(); !slices.Equal(w, []string{"starting"}) {
		t.Fatalf("a first generation's line: written %v; want it at once", w)
	}

	var nilLog *startLog
	got = nil
	nilLog.line(line("keys"))
	if w := written(); !slices.Equal(w, []string{"keys"}) {
		t.Fatalf("a nil startLog: written %v; want the line at once", w)
	}

	// Nothing flushes: the backstop writes the lines.
	var late startLog
	done := make(chan struct{})
	late.holdIf(true)
	late.line(func() { close(done) })
	select {
	case <-done:
	case <-time.After(startLogBackstop + 5*time.Second):
		t.Fatal("the held line was never written without a flush")
	}
}
