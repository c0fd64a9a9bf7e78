package graceful

import (
	"sync"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// outbox sends messages on a handover channel to another generation, beside the
// machine, one at a time and in the order they were given. The machine counts each
// message until it is sent (track): the process does not finish before, since its
// exit would beat the message, and the other generation would take it for a crash.
// It is the successor as a carrier sees it (carry.Peer).
type outbox struct {
	ch    channel
	track func() (release func())

	mu    sync.Mutex
	queue []outgoing
	busy  bool // a goroutine sends the queue
}

type outgoing struct {
	m       handoff.Message
	sent    func(err error) // called once it is sent, or failed
	release func()
}

var _ carry.Peer = (*outbox)(nil)

// send queues m; sent is called once it is sent or failed.
func (o *outbox) send(m handoff.Message, sent func(err error)) {
	q := outgoing{m: m, sent: sent, release: o.track()}
	o.mu.Lock()
	o.queue = append(o.queue, q)
	start := !o.busy
	o.busy = true
	o.mu.Unlock()
	if start {
		go o.flush()
	}
}

func (o *outbox) flush() {
	for {
		o.mu.Lock()
		if len(o.queue) == 0 {
			o.busy = false
			o.mu.Unlock()
			return
		}
		q := o.queue[0]
		o.queue = o.queue[1:]
		o.mu.Unlock()
		q.sent(o.ch.Send(q.m, sendTimeout))
		q.release()
	}
}

// tell sends m and closes its files once it is sent.
func (o *outbox) tell(m handoff.Message) {
	o.send(m, func(error) { closeFiles(m.Files) })
}

// Send sends m and returns once it is sent or failed; m's files stay the caller's.
func (o *outbox) Send(m handoff.Message) error {
	done := make(chan error, 1)
	o.send(m, func(err error) { done <- err })
	return <-done
}
