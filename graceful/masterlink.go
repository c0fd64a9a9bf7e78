package graceful

import (
	"os"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Under a `handover run` master no child starts another: the master starts each,
// and stops the old one once the new one is ready. What a generation hands on beside
// the sockets (the application's state, idle connections, the TLS keys) goes from
// child to child all the same, over a channel of their own, found through the
// master's fd store:
//
//   - A library child keeps one end of a socket pair (its link) in the master's fd
//     store (handoff.LinkName), and reads the other (serveLinks). The store passes
//     it to every later child; a child's changes of the store take effect when it
//     takes over, so the link in the store is always the serving child's.
//   - A new child that inherits a link sends on it a handover channel of its own
//     ("next"; openLink) and uses that channel as a child of the old generation
//     uses its parent's: the serving child writes the initial batch on it (the
//     carriers' Batch: SaveState(false)...; read in New), the new child says
//     "ready" once it is ready and, before it tells the master READY=1, waits for
//     "main" (the serving child has noted it as its successor; at most
//     linkTimeout).
//   - The master stops the old child once the new one is ready. A child stopped
//     while a new child that said "ready" listens hands over to it as after an
//     upgrade of its own: its carriers hear HandedOver (then Drained) with that
//     child as successor, its idle connections go to it as they become idle, and
//     its final state once its drain ended. Without one (the new child is not a
//     library build, went away, or never said "ready"), it stops as before.
//   - A two-phase upgrade's new child says "ready" before it waits for its commit
//     (the master stops the old child as soon as it commits it).
//
// A new child that finds no link (the first child, a restart after a crash: the
// link's reader died with its process), or whose link nobody answers, starts with
// what the fd store kept.

// linkTimeout bounds how long a new child waits for the serving child's "main",
// and how long sending on a link may take.
const linkTimeout = 5 * time.Second

// openLink, in a child of a `handover run` master, sends a channel of its own on
// the link it inherited from the serving child, if any, and makes that channel its
// parent's: the initial batch comes on it, and "ready" goes on it.
func (u *Upgrader) openLink() {
	links := u.set.ClaimFiles(handoff.LinkName)
	if len(links) == 0 {
		return
	}
	closeFiles(links[:len(links)-1])
	link, err := handoff.NewChannel(links[len(links)-1])
	if err != nil || u.set.Master() == 0 || u.parent.get() != nil {
		if link != nil {
			link.Close()
		}
		return
	}
	defer link.Close()
	mine, theirs, err := handoff.SocketPair()
	if err != nil {
		u.log.Warn("no channel to the serving child: starting without what it would hand on", "event", "link_lost", "reason", "channel", "err", err)
		return
	}
	err = link.Send(handoff.Message{Verb: handoff.Next, Files: []*os.File{theirs}}, linkTimeout)
	theirs.Close()
	if err != nil {
		mine.Close()
		u.log.Info("no serving child listens on the link: starting without what it would hand on", "event", "link_lost", "reason", "none", "err", err)
		return
	}
	u.parent.ch, u.viaLink = mine, true
}

// serveLinks, in a library child of a `handover run` master, puts its link in the
// master's fd store and serves the new children that send their channels on it,
// for as long as the process lives.
func (u *Upgrader) serveLinks(store carry.Store) {
	if u.set.Master() == 0 || store == nil {
		return
	}
	mine, theirs, err := handoff.SocketPair()
	if err != nil {
		u.log.Warn("no link for the next child: it will start without what this one hands on", "event", "link_lost", "reason", "store", "err", err)
		return
	}
	err = store.Put(handoff.LinkName, theirs)
	theirs.Close()
	if err != nil {
		mine.Close()
		u.log.Warn("no link for the next child: it will start without what this one hands on", "event", "link_lost", "reason", "store", "err", err)
		return
	}
	go func() {
		defer mine.Close()
		for {
			m, err := mine.Receive()
			if err != nil {
				return
			}
			if m.Verb != handoff.Next || len(m.Files) != 1 {
				closeFiles(m.Files)
				continue
			}
			if ch, err := handoff.NewChannel(m.Files[0]); err == nil {
				go u.serveNext(ch)
			}
		}
	}()
}

// serveNext serves a new child's channel: the initial batch, then its "ready"
// (noted by the machine, which answers "main"), then nothing but its end.
func (u *Upgrader) serveNext(ch *handoff.Channel) {
	release := u.m.hold()
	batch := carrierBatch(u.ext.carriers)
	ok := true
	for _, m := range batch {
		ok = ok && ch.Send(m, linkTimeout) == nil
		closeFiles(m.Files)
	}
	ok = ok && ch.Send(handoff.Message{Verb: handoff.End}, linkTimeout) == nil
	release()
	if !ok {
		ch.Close()
		return
	}
	ch.SetDeadline(time.Now().Add(u.cfg.UpgradeTimeout))
	m, err := ch.Receive()
	ch.SetDeadline(time.Time{})
	if err != nil || m.Verb != handoff.Ready {
		closeFiles(m.Files)
		ch.Close()
		return
	}
	noted := make(chan bool, 1)
	u.post(linkReady{ch: ch, pid: m.PID, noted: noted})
	if !<-noted || ch.Send(handoff.Message{Verb: handoff.Main}, linkTimeout) != nil {
		u.post(linkGone{ch})
		ch.Close()
		return
	}
	for {
		m, err := ch.Receive()
		if err != nil {
			u.post(linkGone{ch})
			return
		}
		closeFiles(m.Files) // "done", "finish": the master runs the line
		if m.Verb == handoff.ConnsTaken {
			u.post(linkTook{ch, m.N})
		}
	}
}

// masterNext is the new child of the master that said "ready" on its channel: the
// successor this process hands over to when the master stops it.
type masterNext struct {
	ch  *handoff.Channel
	out *outbox
	pid int
}

// Events of the link.
type (
	// linkReady: a new child said "ready" on its channel; noted says whether the
	// machine took it as its successor.
	linkReady struct {
		ch    *handoff.Channel
		pid   int
		noted chan<- bool
	}
	// linkGone: a new child's channel ended.
	linkGone struct{ ch *handoff.Channel }
	// linkTook: the new child has the n sockets of a "conns" message sent to it.
	linkTook struct {
		ch *handoff.Channel
		n  int
	}
)

func (e linkReady) handle(m *machine) { e.noted <- m.onLinkReady(e) }
func (e linkGone) handle(m *machine)  { m.onLinkGone(e.ch) }

func (e linkTook) handle(m *machine) {
	if l := m.link; l != nil && l.ch == e.ch {
		for _, c := range m.carriers {
			if w, ok := c.(peerWatcher); ok {
				w.peerTook(l.out, e.n)
			}
		}
	}
}

// onLinkReady notes the new child of e as the successor, while this process serves.
func (m *machine) onLinkReady(e linkReady) bool {
	if m.st != serving {
		return false
	}
	m.link = &masterNext{ch: e.ch, out: &outbox{ch: e.ch, track: m.hold}, pid: e.pid}
	m.log.Info("a new child of the master is ready: it takes over what this one hands on when the master stops this one", "event", "link_ready", "child", e.pid)
	return true
}

// onLinkGone forgets a successor whose channel ended before the master stopped this
// process.
func (m *machine) onLinkGone(ch *handoff.Channel) {
	l := m.link
	if l == nil || l.ch != ch {
		return
	}
	if m.st == serving {
		m.link = nil
		m.log.Info("the new child of the master went away before taking over", "event", "link_lost", "reason", "gone", "child", l.pid)
		return
	}
	// It took over, then went away: connections it had not yet said it has are
	// this process's again (see connCarrier).
	for _, c := range m.carriers {
		if w, ok := c.(peerWatcher); ok {
			w.peerGone(l.out)
		}
	}
}

// linkSuccessor is the successor a stop hands over to, under a master; nil if none.
func (m *machine) linkSuccessor() carry.Peer {
	if m.link == nil {
		return nil
	}
	return m.link.out
}
