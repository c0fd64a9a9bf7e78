package graceful

import (
	"os"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// After the handover, the successor: the generation this process handed over to.
// One goroutine (successor.watch) reads what it says and, without a service manager,
// watches its exit, for as long as this process lives:
//
//	"done"     it is no longer the current generation (it handed over in turn, or
//	           stops): its exit will be no crash
//	"current"  it is the current generation again (it resumed): watch it again
//	"finish"   too many generations drain: passed up the line (lineage.go)
//	its exit   judged once its channel is read to the end (a "done" may be on its
//	           way), at most lastWordsWait after it: the machine hears
//	           successorExited, with whether it had retired
//
// A successor that dies without having retired leaves nothing serving unless this
// process acts: it resumes (takes its drains back) if it can, else starts its own
// build again (the last good build, /proc/self/exe) on the sockets it kept open, a
// replacement, at most maxReplacements times. One that retired may have passed its
// end of the channel on to its own successor, which then talks to this process: the
// channel is kept until nobody holds the other end (successorGone).
//
// The successor is on probation for Config.Probation from the handover: until then
// this process, once drained, stands by (settle does not finish it), its listeners
// stopped but open and the copies of its sockets kept, so that a death within the
// probation is met as one during the drain (resume, or a replacement). The
// probation ends early when the successor retires ("done": the current generation
// is another one, or none), or this process is asked to stop. It is armed only
// where a death can be seen and met: without a service manager, by a process that
// can resume or start a replacement. A successor that dies after its probation
// (this process lived on, draining servers of its own) is not met.
//
// Under a service manager, systemd supervises the new main process: its exit is not
// ours to see, only what it says.

// successor is the generation this process handed over to.
type successor struct {
	g        *generation
	pid      int     // the PID it said it is ready as
	released bool    // supervised by the service manager: its exit is not ours to see
	out      *outbox // what this process tells it
}

// successors is what this process keeps for the generations that follow it.
type successors struct {
	cur      *successor // the one watched, if any
	reserve  *fds.Child // the sockets kept open while draining, for a replacement
	replaced int        // replacements started
	until    time.Time  // the end of cur's probation; zero: not on probation
	stop     func() bool
}

// Events of the successor watch.
type (
	successorFinish struct{ s *successor }
	successorExited struct {
		s       *successor
		retired bool // it had said "done" (and not "current" since)
	}
	successorGone    struct{ s *successor } // its channel ended, after its exit was judged
	successorRetired struct{ s *successor } // it said "done"
	successorTook    struct {               // it has the sockets of a "conns" message
		s *successor
		n int
	}
	probationOver struct{ s *successor }
)

func (e successorFinish) handle(m *machine) {
	if e.s == m.next.cur {
		m.passFinish()
	}
}
func (e successorExited) handle(m *machine) { m.onSuccessorExit(e.s, e.retired) }
func (e successorRetired) handle(m *machine) {
	if e.s == m.next.cur {
		m.endProbation("retired")
	}
}
func (e probationOver) handle(m *machine) {
	if e.s == m.next.cur {
		m.endProbation("passed")
	}
}
func (e successorTook) handle(m *machine) {
	for _, c := range m.carriers {
		if w, ok := c.(peerWatcher); ok {
			w.peerTook(e.s.out, e.n)
		}
	}
}

// peerWatcher is a carrier that hears what a successor it sent to says back, and
// when that one is gone (connCarrier).
type peerWatcher interface {
	peerTook(p carry.Peer, n int) // the successor has the n sockets of a "conns"
	peerGone(p carry.Peer)        // it exited, or its channel ended
}

// successorEnded tells the carriers that s is gone.
func (m *machine) successorEnded(s *successor) {
	for _, c := range m.carriers {
		if w, ok := c.(peerWatcher); ok {
			w.peerGone(s.out)
		}
	}
}

func (e successorGone) handle(m *machine) {
	m.successorEnded(e.s)
	if e.s == m.next.cur {
		e.s.g.ch.Close() // nobody holds the other end any more
		m.next.cur = nil
	}
}

// watchSuccessor starts watching g, which took over as pid.
func (m *machine) watchSuccessor(g *generation, pid int) {
	s := &successor{g: g, pid: pid, released: m.notifier != nil, out: &outbox{ch: g.ch, track: m.hold}}
	if s.released {
		// systemd supervises the new main process from now on; the channel stays,
		// for what this process says as it drains.
		g.proc.Release()
	} else if m.next.reserve == nil {
		// Keep the sockets open while draining, whatever the application does with
		// its listeners: a successor that dies may need them.
		if r, err := m.set.ForChild(); err != nil {
			m.log.Warn("could not keep the sockets open while draining", "event", "reserve_failed", "err", err)
		} else {
			m.next.reserve = r
		}
	}
	m.next.cur = s
	go s.watch(m.post, m.clock)
}

// watch reads what s says until its channel ends, and judges its exit.
func (s *successor) watch(post func(event), clk clock) {
	w := &successorWatch{s: s, post: post, msgs: s.g.msgs, exited: s.g.proc.Exited()}
	if s.released {
		w.exited = nil
	}
	for w.msgs != nil || w.exited != nil {
		select {
		case m, ok := <-w.msgs:
			w.onMessage(m, ok)
		case <-w.exited:
			w.exited, w.dead = nil, true
			if w.msgs == nil {
				w.judge()
			} else {
				w.settle = clk.NewTimer(lastWordsWait) // a "done" may still be on its way
			}
		case <-timerC(w.settle):
			w.settle = nil
			w.judge()
		}
	}
	if w.settle != nil {
		w.settle.Stop()
	}
	if !w.died { // the machine closed the channel of one that died
		post(successorGone{s})
	}
}

// successorWatch is the local state of a successor's watch.
type successorWatch struct {
	s      *successor
	post   func(event)
	msgs   <-chan handoff.Message // until its channel ends
	exited <-chan struct{}        // until it exits (nil if not ours to see)
	settle timer                  // armed at its exit while its channel is open

	retired bool // it said "done" (and not "current" since)
	dead    bool
	judged  bool // its exit was posted
	died    bool // judged as a death: it had not retired
}

func (w *successorWatch) onMessage(m handoff.Message, ok bool) {
	if !ok {
		w.msgs = nil
		w.judge()
		return
	}
	closeFiles(m.Files)
	switch m.Verb {
	case handoff.Done:
		w.retired = true
		w.post(successorRetired{w.s})
	case handoff.Current:
		w.retired = false
	case handoff.Finish:
		w.post(successorFinish{w.s})
	case handoff.ConnsTaken:
		w.post(successorTook{w.s, m.N})
	}
}

// judge posts the exit of a dead successor, once.
func (w *successorWatch) judge() {
	if w.dead && !w.judged {
		w.judged, w.died = true, !w.retired
		w.post(successorExited{w.s, w.retired})
	}
}

// onSuccessorExit handles the exit of the successor s, while this process drains or
// after (see finish).
func (m *machine) onSuccessorExit(s *successor, retired bool) {
	if !retired {
		// The connections s did not take are this process's again (served by
		// drains taken back, after a resumption). Not those of one that retired:
		// its farewell may have passed its channel to this process down the line,
		// which the generation reading it now answers on (conns-taken) for as long
		// as it lives; they are given back only at the channel's end
		// (successorGone). Given back now, a connection that newer generation
		// serves would be served here too: two readers of one socket.
		defer m.successorEnded(s)
	}
	if s != m.next.cur {
		return
	}
	status := s.g.proc.ExitStatus()
	if retired {
		m.log.Info("the new generation exited after handing over or stopping; nothing to do", "event", "successor_retired", "child", s.g.proc.Pid(), "status", status)
		return // its channel is kept until it ends (successorGone)
	}
	s.g.ch.Close()
	m.next.cur = nil
	m.endProbation("")
	attrs := []any{"event", "successor_died", "child", s.g.proc.Pid(), "status", status}
	switch {
	case m.st == exited:
		m.log.Warn("the new generation died after its probation; nothing is done", append(attrs, "action", "none")...)
		return
	case m.final:
		m.log.Error("the new generation died while this process was draining; it is stopping, so nothing is done", append(attrs, "action", "none")...)
	case m.st == draining && m.resumable():
		m.log.Error("the new generation died after taking over, while this process drained or stood by; serving again", append(attrs, "action", "resume")...)
		m.resume(s, status)
		return
	case m.next.reserve == nil || m.next.replaced >= maxReplacements:
		m.log.Error("the new generation died after taking over; this process cannot resume, and no replacement is left", append(attrs, "action", "none", "replacements", m.next.replaced)...)
	default:
		m.next.replaced++
		m.log.Error("the new generation died after taking over; starting this process's own build on the sockets kept open", append(attrs, "action", "replace", "attempt", m.next.replaced)...)
		m.startAttempt(&attempt{trigger: "replacement", started: m.clock.Now(), replacement: true}, selfExecutable, nil)
	}
	m.hist().died(os.Getpid(), s.pid, status)
}

// startProbation puts the successor that took over in attempt a on probation,
// until a.probation (see above).
func (m *machine) startProbation(a *attempt) {
	m.endProbation("")
	if a.probation.IsZero() || m.next.cur == nil || m.next.cur.released {
		return
	}
	m.next.until = a.probation
	m.next.stop = m.after(a.probation.Sub(m.clock.Now()), probationOver{m.next.cur})
}

// endProbation ends the successor's probation, if it is on one; why, if not empty,
// is logged (passed, retired, stop).
func (m *machine) endProbation(why string) {
	if m.next.until.IsZero() {
		return
	}
	m.next.stop()
	m.next.until, m.next.stop = time.Time{}, nil
	if why != "" {
		m.log.Info("the new generation's probation is over", "event", "probation_over", "reason", why, "child", m.nextPID)
	}
}

// standingBy reports whether this process, drained, stands by for its successor's
// probation: it could meet a death (resume, or start a replacement).
func (m *machine) standingBy() bool {
	if m.next.until.IsZero() || m.final || m.next.cur == nil {
		return false
	}
	return m.resumable() || m.next.reserve != nil && m.next.replaced < maxReplacements
}

// probationWindow is when the probation of a successor that takes over now would
// end, or zero if it would have none (see above).
func (m *machine) probationWindow() time.Time {
	if m.notifier != nil || m.cfg.Probation <= 0 || !m.resumable() && m.next.replaced >= maxReplacements {
		return time.Time{}
	}
	return m.clock.Now().Add(m.cfg.Probation)
}

// probationUntil is, for Status, the end of the probation of the last handover this
// process took part in, while it lasts: its successor's, or, in the new generation,
// its own (as its predecessor promised it).
func (m *machine) probationUntil() time.Time {
	if !m.next.until.IsZero() {
		return m.next.until
	}
	pid, now := os.Getpid(), m.clock.Now()
	recs := m.history.Records // decoded by status, once the process no longer starts
	for i := len(recs) - 1; i >= 0; i-- {
		if r := recs[i]; r.To == pid {
			if r.Outcome == "ok" && r.ProbationUntil.After(now) {
				return r.ProbationUntil
			}
			break
		}
	}
	return time.Time{}
}

// resume takes the drains back after the successor s died: this process is the
// current generation again.
func (m *machine) resume(s *successor, status string) {
	m.hist().died(os.Getpid(), s.pid, status)
	m.st = serving
	m.nextPID = 0
	m.line.drained = false
	m.unsayFarewell()
	m.takeBackDrains()
	m.exit.reopen()
	m.main = true
	m.writePIDFile()
	m.tellUpstream(handoff.Current)
	m.turn(carry.Serving)
	m.log.Warn("serving again: the new generation died after taking over", "event", "resumed", "dead", s.g.proc.Pid(), "status", status)
}

// tellSuccessor sends msg to the successor, beside the machine (its files are
// closed once sent); the process does not finish before it is sent.
func (m *machine) tellSuccessor(msg handoff.Message) {
	if m.next.cur == nil {
		closeFiles(msg.Files)
		return
	}
	m.next.cur.out.tell(msg)
}
