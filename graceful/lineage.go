package graceful

import (
	"encoding/json"
	"os"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The lineage: the older generations that still drain while this one serves. Each
// generation keeps the channel to the one that handed over to it (its upstream)
// for as long as that one drains, and knows how many drain above it:
//
//	gen 1 (draining) ◄── upstream ── gen 2 (draining) ◄── upstream ── gen 3 (serving)
//	                                  above = 1                         above = 2
//
//   - "above n" comes down the line whenever the count changes; a generation that
//     drains passes n+1 on to its successor.
//   - When a handover makes more than MaxDraining generations drain, the new
//     drainer sends "finish" up; each passes it on, and the oldest (the one with no
//     upstream) force-closes its connections at once (as at its deadline).
//   - A generation whose drain has ended tells its successor how it went
//     ("drained", for the upgrade's record) and that it no longer drains ("above",
//     without itself). A generation that has handed over passes the "drained" of
//     older generations on down the line, so that the current generation's
//     records of every upgrade are completed, however many upgrades followed.
//   - A generation that finishes (after its successor's probation: successor.go)
//     says farewell: its successor gets its own upstream channel ("upstream"), so
//     that the line stays connected past its exit. Until then it passes on what
//     the older generations say. The successor stops reading this generation's
//     channel as it takes the one passed on, so nothing about the older generations
//     may follow "upstream": the farewell first stops this generation's reader of
//     the channel (without closing it), hands on what that reader read (connections
//     the older generation handed over included: "conns-taken" goes back up as
//     ever), and passes the channel on only then (sayFarewell). What the older
//     generation sends from then on waits in the channel for the successor.

// lineage is this process's place in its line of generations.
type lineage struct {
	up       channel // to the generation that handed over to this one, while it drains
	upOut    *outbox // what this process tells it
	above    int     // older generations still draining, as the upstream said
	drained  bool    // this process's drain ended: "drained" is on its way to the successor
	farewell bool    // the farewell began: the upstream channel goes to the successor
	// hushed is the upstream channel whose reader the farewell stopped, until that
	// reader has posted its end: what it read is handled before the channel is
	// passed on.
	hushed channel
	// relay holds the drains of older generations heard of after the history was
	// handed to the new generation of the attempt in progress: they follow it once
	// it took over.
	relay []drainStats
}

// Events of the upstream channel.
type (
	upstreamMessage struct {
		ch channel
		m  handoff.Message
	}
	upstreamEnded struct{ ch channel }
)

func (e upstreamMessage) handle(m *machine) {
	switch {
	case e.ch == m.line.up:
		m.onUpstreamMessage(e.m)
	case e.m.Verb == handoff.Drained:
		// Read from a channel this process no longer listens to (an "upstream"
		// replaced it): the news still goes down the line.
		m.onUpstreamDrained(e.m)
	case e.m.Verb == handoff.Conns:
		// Connections handed over on such a channel (a generation of an older
		// build may send them after "upstream"): its reader said it has them, so
		// they are served here (or handed on, or dropped with a word), never
		// closed unseen.
		if !takeCarried(m.carriers, e.m, carry.Final) {
			closeFiles(e.m.Files)
		}
	default:
		closeFiles(e.m.Files)
	}
}

func (e upstreamEnded) handle(m *machine) {
	if e.ch == m.line.hushed {
		// All its reader read was handled: it goes to the successor (sayFarewell),
		// or, if the process serves again since, it is read again.
		m.line.hushed = nil
		if !m.line.farewell && e.ch == m.line.up {
			m.listenUpstream(e.ch)
		}
		return
	}
	if e.ch == m.line.up {
		m.line.up.Close()
		m.line.up, m.line.upOut = nil, nil
		m.setAbove(0)
	}
}

// listenUpstream makes ch the channel to the previous generation and reads it; once
// the farewell began, its reader stops at once (sayFarewell).
func (m *machine) listenUpstream(ch channel) {
	if m.line.up != nil && m.line.up != ch {
		m.line.up.Close()
	}
	m.line.up = ch
	if m.line.farewell {
		m.line.hushed = ch
		ch.SetReadDeadline(aLongTimeAgo)
	} else {
		ch.SetReadDeadline(time.Time{})
	}
	out := &outbox{ch: ch, track: m.hold}
	m.line.upOut = out
	post := m.post
	go func() {
		for {
			msg, err := ch.Receive()
			if err != nil {
				post(upstreamEnded{ch})
				return
			}
			if msg.Verb == handoff.Conns {
				// The sockets are in this process's hands: the sender lets its
				// copies go (connCarrier.send), before any is served here.
				out.tell(handoff.Message{Verb: handoff.ConnsTaken, N: len(msg.Files)})
			}
			post(upstreamMessage{ch, msg})
		}
	}()
}

// onUpstreamMessage handles what an older generation says after the handover.
func (m *machine) onUpstreamMessage(msg handoff.Message) {
	switch msg.Verb {
	case handoff.Above:
		m.setAbove(msg.N)
	case handoff.Upstream:
		// The previous generation is done: its own channel to an older, still
		// draining generation is ours now.
		if len(msg.Files) != 1 {
			closeFiles(msg.Files)
			return
		}
		ch, err := handoff.NewChannel(msg.Files[0])
		if err != nil {
			m.log.Warn("the channel to an older generation is lost", "event", "protocol", "err", err)
			return
		}
		m.listenUpstream(ch)
		m.setAbove(msg.N)
	case handoff.Drained:
		m.onUpstreamDrained(msg)
	case handoff.History:
		// Decoded when first needed (hist): not as the process starts to serve.
		text := msg.Text
		m.historyIn = &text
	default:
		if !takeCarried(m.carriers, msg, carry.Final) {
			closeFiles(msg.Files)
		}
	}
}

// onUpstreamDrained records how an older generation's drain went, and passes it on
// to the generations that have this upgrade in their history already: the
// successor, or the new generation of the attempt in progress once it took over.
func (m *machine) onUpstreamDrained(msg handoff.Message) {
	closeFiles(msg.Files)
	var d drainStats
	if json.Unmarshal([]byte(msg.Text), &d) != nil {
		return
	}
	m.hist().drained(d)
	switch {
	case m.nextPID != 0:
		m.tellDrained(d)
	case m.att != nil && m.att.ready != 0:
		m.line.relay = append(m.line.relay, d)
	}
}

// tellDrained tells the successor how a drain went.
func (m *machine) tellDrained(d drainStats) {
	if b, err := json.Marshal(d); err == nil {
		m.tellSuccessor(handoff.Message{Verb: handoff.Drained, Text: string(b)})
	}
}

// setAbove records how many older generations drain, and tells the successor (to
// which this one is one more while it drains).
func (m *machine) setAbove(n int) {
	m.line.above = n
	if m.st == draining {
		m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: n + m.drainingNow()})
	}
}

// drainingNow is 1 while this process drains after a handover, 0 once its drain
// ended (it may still stand by: successor.go).
func (m *machine) drainingNow() int {
	if m.line.drained {
		return 0
	}
	return 1
}

// tellUpstream sends verb to the previous generation, if it still listens, beside
// the machine; the process does not finish before it is sent (its exit would beat
// the message, and the previous generation would take it for a crash).
func (m *machine) tellUpstream(verb string) {
	if m.line.upOut != nil {
		m.line.upOut.tell(handoff.Message{Verb: verb})
	}
}

// retire tells the generation that handed over to this one, if it still listens,
// that this process is no longer the current generation. The channel stays open:
// "current" follows if this process resumes.
func (m *machine) retire() {
	m.tellUpstream(handoff.Done)
}

// checkDraining, as this process starts to drain after a handover, makes the oldest
// draining generation finish if more drain than MaxDraining.
func (m *machine) checkDraining() {
	if draining := m.line.above + 1; draining > m.cfg.MaxDraining {
		m.log.Warn("more generations drain than MaxDraining: the oldest finishes now", "event", "too_many_draining", "draining", draining, "max", m.cfg.MaxDraining)
		m.tellUpstream(handoff.Finish)
	}
}

// passFinish handles "finish" from the successor: an older generation drains, so
// the oldest finishes; if none, this one is the oldest.
func (m *machine) passFinish() {
	if m.line.up != nil {
		m.tellUpstream(handoff.Finish)
	} else {
		m.finishNow()
	}
}

// finishNow ends this generation's drain at once, as at its deadline: too many
// generations drain, and this is the oldest.
func (m *machine) finishNow() {
	if m.st != draining && m.st != stopping {
		return
	}
	m.log.Warn("finishing the drain now: too many generations drain, and this is the oldest", "event", "drain_finish_now")
	m.drains.cut = "max_draining"
	m.cutDrains(errFinishNow)
	m.turn(carry.Finishing)
}

// sayDrained, once every drain of this generation has ended, tells the carriers
// (the application's last state goes now: no request is answered any more) and,
// after a handover, tells the successor how the drain went and that this
// generation no longer drains.
func (m *machine) sayDrained() {
	m.line.drained = true
	m.turn(carry.Drained)
	if m.nextPID == 0 {
		return // stopped, not handed over
	}
	d := m.drains.stats
	d.From, d.To = os.Getpid(), m.nextPID
	d.Seconds = m.clock.Now().Sub(m.drains.at).Seconds()
	m.hist().drained(d)
	m.tellDrained(d)
	m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: m.line.above})
}

// sayFarewell, as this generation finishes, passes on its channel to an older
// generation still draining, so that the line stays connected past its exit; it
// reports whether that is done (the process may finish once nothing is on its way).
// It takes two steps, each once nothing is on its way (settle). First the reader of
// the channel is stopped, the channel left open: a "conns" the older generation
// sent meanwhile may be read already, its "conns-taken" on its way back up (that
// generation has let its copies go), and nothing but this process can hand those
// connections on; the reader ends at a message's boundary, and what it read is
// handled as ever (connections handed on to the successor, ahead of what follows).
// Then, once the reader has ended, the channel goes to the successor: nothing
// about the older generation follows "upstream", which makes the successor stop
// reading this process's channel (listenUpstream).
func (m *machine) sayFarewell() bool {
	up := m.line.up
	switch {
	case m.nextPID == 0 || up == nil:
		// Stopped, not handed over; or no older generation drains (any more).
		m.line.farewell = true
		return true
	case !m.line.farewell:
		m.line.farewell = true
		m.line.hushed = up
		up.SetReadDeadline(aLongTimeAgo) // its reader posts its end (upstreamEnded)
		return false
	case m.line.hushed != nil:
		return false // its reader has not ended yet
	}
	m.line.up, m.line.upOut = nil, nil // from now on the successor reads it, not us
	f, err := up.File()
	up.Close()
	if err != nil {
		m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: 0})
		return true
	}
	m.tellSuccessor(handoff.Message{Verb: handoff.Upstream, N: m.line.above, Files: []*os.File{f}})
	return true
}

// unsayFarewell: the process serves again (resume) before its farewell was done; the
// upstream channel is read again (at once if its reader had ended, else once its
// end is posted: upstreamEnded). Only a process that handed over resumes: its
// farewell stopped the reader (that of one that stopped is never taken back).
func (m *machine) unsayFarewell() {
	if !m.line.farewell {
		return
	}
	m.line.farewell = false
	if up := m.line.up; up != nil && m.line.hushed == nil {
		m.listenUpstream(up)
	}
}
