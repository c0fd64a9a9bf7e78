package graceful

import (
	"cmp"
	"context"
	"errors"
	"net"
	"time"
)

// The drains of the process: every Server and Drainer of the Upgrader (and the
// control socket) is a target, drained together when a new generation has taken
// over or the process stops, each within its deadline. A drain that is not final
// only stops accepting (the sockets stay open), and can be taken back until it ends:
// the process serves again (resume, successor.go).

// target is something the Upgrader drains: a Server, or a Drainer whose listener
// came from the Upgrader. The fields after the first four are owned by the machine.
type target struct {
	d        *Drainer
	s        *Server // nil for a bare Drainer
	internal bool    // the control socket's: not counted, not logged
	timeout  time.Duration

	cancel context.CancelCauseFunc // set while its drain runs
	epoch  int                     // counts its drains, so that a stale end is ignored
	ended  bool                    // its drain ended (not taken back)
}

// stopAccepting starts t's drain, on the machine (so that a resume that follows
// finds it stopped). final closes its listeners at once; otherwise they only stop
// accepting.
func (t *target) stopAccepting(final bool) {
	t.d.handsOver()
	t.d.stopAccepting(final)
}

// drain drains t, once it stopped accepting, until every connection has closed or
// ctx is done (see Drainer.wait).
func (t *target) drain(ctx context.Context) error {
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
	return t.d.listeners[0].Listener.Addr().String()
}

// drains is the machine's part of the drains.
type drains struct {
	targets []*target
	err     error      // ErrDrainDeadline once a drain had to force-close
	stats   drainStats // of this process's drain after the handover (for the record)
	at      time.Time  // when it started
	cut     string     // why the drains are being cut short ("max_draining"), if they are
}

// drainEnded: the drain of t (its epoch-th) ended.
type drainEnded struct {
	t     *target
	epoch int
	err   error
	stats drainStats
}

func (e drainEnded) handle(m *machine) {
	if e.epoch == e.t.epoch {
		m.onDrainEnded(e.t, e.err, e.stats)
	}
}

// adopt makes t one of the process's drain targets. A target adopted once the
// process drains starts draining at once.
func (m *machine) adopt(t *target) {
	t.d.mu.Lock()
	t.d.reopened = m.reopened
	t.d.mu.Unlock()
	m.drains.targets = append(m.drains.targets, t)
	if m.st == draining || m.st == stopping {
		m.startDrain(t)
	}
}

// reopened hears of a listener made again on its socket as a drain was taken back
// (see listener.park), or of the error that kept it from being made: then the
// process serves again without that socket, which it says.
func (m *machine) reopened(old, ln net.Listener, err error) {
	if err != nil {
		m.log.Error("a listener cannot be made again on its socket as the process serves again; it no longer accepts there", "event", "listener_lost", "addr", old.Addr().String(), "err", err)
		return
	}
	m.set.Reopened(old, ln)
}

// startDrains drains every target, each within its deadline. final closes the
// listeners at once; otherwise they only stop accepting, and the drain can be taken
// back until it ends.
func (m *machine) startDrains(final bool) {
	m.final = m.final || final
	m.drains.stats = drainStats{}
	m.drains.at = m.clock.Now()
	m.drains.cut = ""
	for _, t := range m.drains.targets {
		m.startDrain(t)
	}
}

func (m *machine) startDrain(t *target) {
	if t.cancel != nil || t.ended {
		return
	}
	d := t.timeout
	if d <= 0 {
		d = m.cfg.DrainTimeout
	}
	ctx, cancelDeadline := context.WithTimeout(context.Background(), d)
	ctx, cancel := context.WithCancelCause(ctx)
	t.cancel = cancel
	t.epoch++
	epoch := t.epoch
	log := m.log.With("addr", t.addr())
	if !t.internal {
		log.Info("draining", "event", "drain_start", "connections", t.counts().Total(), "deadline", d.String())
	}
	c0, f0, r0 := t.counts(), t.d.forced.Load(), t.d.requests.Load()
	h0 := t.d.handedOver.Load()
	t.stopAccepting(m.final)
	post := m.post
	go func() {
		defer cancelDeadline()
		start := time.Now()
		err := t.drain(ctx)
		c1 := t.counts()
		forced, handed := int(t.d.forced.Load()-f0), int(t.d.handedOver.Load()-h0)
		stats := drainStats{
			Forced:        forced,
			HandedOver:    handed,
			Closed:        c0.Total() + int(c1.Accepted+c1.Received-c0.Accepted-c0.Received) - forced - handed - c1.Total(),
			RequestsAfter: t.d.requests.Load() - r0,
		}
		took := time.Since(start).Round(time.Millisecond).String()
		switch {
		case t.internal:
		case errors.Is(err, ErrDrainDeadline):
			log.Warn("drain deadline reached; force-closed the remaining connections", "event", "drain_deadline", "took", took)
		case err == nil:
			log.Info("drained", "event", "drained", "took", took, "handed_over", handed)
		}
		post(drainEnded{t: t, epoch: epoch, err: err, stats: stats})
	}()
}

func (m *machine) onDrainEnded(t *target, err error, d drainStats) {
	if errors.Is(err, errResumed) {
		return
	}
	t.cancel = nil
	t.ended = true
	if errors.Is(err, ErrDrainDeadline) {
		m.drains.err = err
		if !t.internal && m.drains.stats.Killed == "" {
			m.drains.stats.Killed = cmp.Or(m.drains.cut, "deadline")
		}
	}
	if !t.internal {
		m.drains.stats.Closed += d.Closed
		m.drains.stats.Forced += d.Forced
		m.drains.stats.HandedOver += d.HandedOver
		m.drains.stats.RequestsAfter += d.RequestsAfter
	}
}

func (m *machine) drainsEnded() bool {
	for _, t := range m.drains.targets {
		if !t.ended {
			return false
		}
	}
	return true
}

// cutDrains ends every drain in progress at once, as at its deadline.
func (m *machine) cutDrains(why error) {
	for _, t := range m.drains.targets {
		if t.cancel != nil {
			t.cancel(why)
		}
	}
}

// makeFinal makes the drain final: the listeners are closed, and it cannot be
// taken back.
func (m *machine) makeFinal() {
	if !m.final {
		m.final = true
		m.closeListeners()
	}
}

func (m *machine) closeListeners() {
	for _, t := range m.drains.targets {
		t.closeListeners()
	}
}

// takeBackDrains ends the drains without ending the connections: the listeners
// accept again.
func (m *machine) takeBackDrains() {
	for _, t := range m.drains.targets {
		if t.cancel != nil {
			t.cancel(errResumed)
			t.cancel = nil
		}
		t.epoch++ // a drain that ended just now is not news any more
		t.ended = false
		t.resume()
	}
}

// resumable reports whether every socket the process holds is served by a target
// that can take its drain back (a datagram socket: by a carrier that takes it
// back, carry.Host.TakesBack), and the application did not take Exit.
func (m *machine) resumable() bool {
	if m.exit.taken() {
		return false
	}
	lns, pcs := m.set.Listeners()
	for _, pc := range pcs {
		if !m.taken.has(pc) {
			return false
		}
	}
	for _, ln := range lns {
		t := m.targetOf(ln)
		if t == nil || !t.resumable() {
			return false
		}
	}
	return true
}

func (m *machine) targetOf(ln net.Listener) *target {
	for _, t := range m.drains.targets {
		if t.serves(ln) {
			return t
		}
	}
	return nil
}

// connections counts the open connections of the targets (the control socket's
// aside).
func (m *machine) connections() ConnCounts {
	var c ConnCounts
	for _, t := range m.drains.targets {
		if !t.internal {
			c.Add(t.counts())
		}
	}
	return c
}
