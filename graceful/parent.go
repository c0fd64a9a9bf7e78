package graceful

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// A new generation's side of the handover channel, until it is ready: the initial
// batch (read in New), an error that keeps it from starting (reported to the
// parent), and the confirmation of the handover (Ready). From then on the parent
// is its upstream (lineage.go).

// parentLink is the channel to the parent that started this process, until Ready.
type parentLink struct {
	mu sync.Mutex
	ch *handoff.Channel
}

func (p *parentLink) get() *handoff.Channel {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ch
}

// take returns the channel, which is the caller's from now on.
func (p *parentLink) take() *handoff.Channel {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := p.ch
	p.ch = nil
	return ch
}

// openParent takes the channel a handover parent passed, if any.
func (u *Upgrader) openParent() {
	if u.set.Marker() == nil {
		return
	}
	if f := u.set.Channel(); f != nil {
		u.parent.ch, _ = handoff.NewChannel(f)
	}
}

// readInit reads the parent's initial batch, up to "end" (see handoff.Message). The
// parent makes it once this process has started (its SaveState may take up to its
// UpgradeTimeout): it is waited for as long as this process's own UpgradeTimeout,
// and at least initTimeout. A parent that went away meanwhile (the channel ends)
// leaves this process to carry on without the rest, as one that goes away before
// it confirms the handover does (see confirmWithParent); one that abandons the
// upgrade ("abort") makes it fail.
func (u *Upgrader) readInit(p *handoff.Channel) error {
	p.SetDeadline(time.Now().Add(max(initTimeout, u.cfg.UpgradeTimeout)))
	defer p.SetDeadline(time.Time{})
	for {
		m, err := p.Receive()
		if errors.Is(err, io.EOF) {
			u.log.Warn("the parent generation went away before its first messages were all sent; carrying on without the rest", "event", "parent_lost")
			return nil
		}
		if err != nil {
			return fmt.Errorf("the parent generation's first messages: %w", err)
		}
		switch m.Verb {
		case handoff.End:
			return nil
		case handoff.Abort:
			return fmt.Errorf("graceful: the parent generation abandoned the upgrade: %s", m.Text)
		case handoff.History:
			// Decoded when first needed, not on the way to the first answer: the
			// parent sends the history again with this upgrade in it.
			u.m.historyIn = &m.Text
		case handoff.Above:
			u.m.line.above = m.N
		case handoff.Prepare:
			u.hold() // a two-phase upgrade's: no accepting before "main"
		default:
			if !takeCarried(u.ext.carriers, m, carry.Initial) {
				closeFiles(m.Files)
				u.log.Warn("ignoring an unexpected message from the parent generation", "event", "protocol", "verb", m.Verb)
			}
		}
	}
}

// reportStartError tells the parent generation, if any, why this one cannot start.
func (u *Upgrader) reportStartError(err error) {
	u.logs.flush()
	if p := u.parent.get(); p != nil {
		p.Send(handoff.Message{Verb: handoff.Error, Text: err.Error()}, time.Second)
	}
}

// confirmWithParent tells the parent this process is ready and waits for its answer
// (on the caller's goroutine). It returns the channel to keep as upstream, or nil,
// and what else the parent said meanwhile (the history with this upgrade in it),
// for the machine.
func (u *Upgrader) confirmWithParent(p *handoff.Channel) (*handoff.Channel, []handoff.Message, error) {
	if u.viaLink {
		// A serving child under a master answers at once, or not at all.
		p.SetDeadline(time.Now().Add(linkTimeout))
		defer p.SetDeadline(time.Time{})
	}
	if err := p.Send(handoff.Message{Verb: handoff.Ready, PID: os.Getpid()}, sendTimeout); err != nil {
		p.Close()
		u.log.Warn("could not tell the parent generation we are ready; carrying on as the current generation", "event", "parent_lost", "err", err)
		return nil, nil, nil
	}
	var said []handoff.Message
	for {
		m, err := p.Receive()
		switch {
		case err == nil && m.Verb == handoff.Main:
			return p, said, nil
		case err == nil && m.Verb == handoff.Abort:
			p.Close()
			return nil, said, fmt.Errorf("graceful: the parent generation abandoned the upgrade: %s", m.Text)
		case err != nil:
			p.Close()
			u.log.Warn("the parent generation went away before confirming the handover; carrying on as the current generation", "event", "parent_lost", "err", err)
			return nil, said, nil
		default:
			// The history with this upgrade in it replaces the initial batch's: the
			// machine takes it once this process is ready.
			said = append(said, m)
		}
	}
}
