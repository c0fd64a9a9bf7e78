package graceful

import (
	"sync"
	"time"
)

// startLogBackstop is how long after New a new generation's start-up lines wait at
// most for Ready before they are written anyway (an application that takes its
// time, or never gets there).
const startLogBackstop = 50 * time.Millisecond

// startLog holds back the lines a new generation logs as it starts (the TLS keys,
// the state, "starting") until it has started accepting (Ready), or fails: the
// first line a process logs costs about half a millisecond (slog's caller lookup
// and the handler's code faulted in, the local time zone loaded), which its first
// answer would wait for. The lines keep their order; a line logged meanwhile on
// another path (a warning) is written at once. A first generation (no switch waits
// for it) writes its lines at once.
type startLog struct {
	mu   sync.Mutex
	held []func() // the calls that log the lines
	open bool     // written at once from now on
}

// holdIf holds the lines back until flush, or at most startLogBackstop, if hold
// (a new generation); else they are written at once from now on.
func (s *startLog) holdIf(hold bool) {
	if !hold {
		s.flush()
		return
	}
	time.AfterFunc(startLogBackstop, s.flush)
}

// line logs a line (calls f), or holds it back. A nil startLog holds nothing.
func (s *startLog) line(f func()) {
	if s == nil {
		f()
		return
	}
	s.mu.Lock()
	if !s.open {
		s.held = append(s.held, f)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	f()
}

// flush writes the held-back lines, in order, and the later ones at once. It may
// be called any number of times, from any goroutine.
func (s *startLog) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.held {
		f()
	}
	s.held, s.open = nil, true
}
