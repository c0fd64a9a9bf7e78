package graceful

import (
	"encoding/json"
	"os"

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
//   - A generation that has drained says farewell: its successor gets how its drain
//     went ("drained", for the upgrade's record) and its own upstream channel
//     ("upstream"), so that the line stays connected past its exit.

// lineage is this process's place in its line of generations.
type lineage struct {
	up       channel // to the generation that handed over to this one, while it drains
	upOut    *outbox // what this process tells it
	above    int     // older generations still draining, as the upstream said
	farewell bool    // the drained/upstream messages to the successor are on their way
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
	if e.ch == m.line.up {
		m.onUpstreamMessage(e.m)
	} else {
		closeFiles(e.m.Files)
	}
}

func (e upstreamEnded) handle(m *machine) {
	if e.ch == m.line.up {
		m.line.up.Close()
		m.line.up, m.line.upOut = nil, nil
		m.setAbove(0)
	}
}

// listenUpstream makes ch the channel to the previous generation and reads it.
func (m *machine) listenUpstream(ch channel) {
	if m.line.up != nil && m.line.up != ch {
		m.line.up.Close()
	}
	m.line.up = ch
	m.line.upOut = &outbox{ch: ch, track: m.hold}
	post := m.post
	go func() {
		for {
			msg, err := ch.Receive()
			if err != nil {
				post(upstreamEnded{ch})
				return
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
		var d drainStats
		if json.Unmarshal([]byte(msg.Text), &d) == nil {
			m.history.drained(d)
		}
	case handoff.History:
		if h, err := decodeHistory(msg.Text); err == nil {
			m.history = h
		}
	default:
		if !takeCarried(m.carriers, msg, carry.Final) {
			closeFiles(msg.Files)
		}
	}
}

// setAbove records how many older generations drain, and tells the successor (to
// which this one, draining, is one more).
func (m *machine) setAbove(n int) {
	m.line.above = n
	if m.st == draining {
		m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: n + 1})
	}
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
	m.cutDrains(errFinishNow)
	m.turn(carry.Finishing)
}

// sayFarewell, once this generation has drained, tells its successor how the drain
// went and passes on its channel to an older generation still draining.
func (m *machine) sayFarewell() {
	m.line.farewell = true
	if m.nextPID == 0 {
		return // stopped, not handed over
	}
	d := m.drains.stats
	d.From, d.To = os.Getpid(), m.nextPID
	d.Seconds = m.clock.Now().Sub(m.drains.at).Seconds()
	m.history.drained(d)
	if b, err := json.Marshal(d); err == nil {
		m.tellSuccessor(handoff.Message{Verb: handoff.Drained, Text: string(b)})
	}
	up := m.line.up
	m.line.up, m.line.upOut = nil, nil // from now on the successor reads it, not us
	if up == nil {
		m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: 0})
		return
	}
	f, err := up.File()
	up.Close()
	if err != nil {
		m.tellSuccessor(handoff.Message{Verb: handoff.Above, N: 0})
		return
	}
	m.tellSuccessor(handoff.Message{Verb: handoff.Upstream, N: m.line.above, Files: []*os.File{f}})
}
