package graceful

import (
	"context"
	"net"
	"time"
)

// target is something the Upgrader drains: a Server, or a Drainer whose listener
// came from the Upgrader. The fields after the first three are owned by the loop.
type target struct {
	d        *Drainer
	s        *Server // nil for a bare Drainer
	internal bool    // the control socket's: not counted, not logged
	timeout  time.Duration

	cancel context.CancelCauseFunc // set while its drain runs
	epoch  int                     // counts its drains, so that a stale end is ignored
	ended  bool                    // its drain ended (not taken back)
}

// drain drains t until every connection has closed or ctx is done (see
// Drainer.wait). hard closes its listeners at once; otherwise they only stop
// accepting.
func (t *target) drain(ctx context.Context, hard bool) error {
	t.d.stopAccepting(hard)
	if t.s != nil {
		t.s.startDrain() // after stopAccepting: see Server.startDrain
	}
	return t.d.wait(ctx)
}

func (t *target) resume()            { t.d.resume() }
func (t *target) resumable() bool    { return t.d.resumable() }
func (t *target) counts() ConnCounts { return t.d.Counts() }
func (t *target) closeListeners()    { t.d.closeListeners() }
func (t *target) serves(l net.Listener) bool {
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	for _, tl := range t.d.listeners {
		if tl.Listener == l {
			return true
		}
	}
	return false
}

// addr names t's first listener in logs.
func (t *target) addr() string {
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	if len(t.d.listeners) == 0 {
		return ""
	}
	return t.d.listeners[0].Addr().String()
}
