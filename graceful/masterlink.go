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
//   - A new child gets a handover channel to the serving child: as it starts the
//     child, the master sends on the link ("next") one end of a socket pair of its
//     making, and passes the child the other (handoff.NextName, in place of the
//     link), so that the serving child writes the initial batch (the carriers'
//     Batch: SaveState(false)...) while the new child starts, as a parent
//     generation does; the new child reads it in New without asking first. A
//     child that inherits the link instead (a master of an older version) sends
//     on it a channel of its own ("next"; openLink). Either way the new child uses
//     that channel as a child of the old generation uses its parent's: it reads
//     the initial batch in New, says "ready" once it is ready and, before it tells
//     the master READY=1, waits for "main" (the serving child has noted it as its
//     successor; at most linkTimeout).
//   - The master stops the old child once the new one is ready. A child stopped
//     while a new child that said "ready" listens hands over to it as after an
//     upgrade of its own: its carriers hear HandedOver (then Drained) with that
//     child as successor, its idle connections go to it as they become idle, and
//     its final state once its drain ended. Without one (the new child is not a
//     library build, went away, or never said "ready"), it stops as before.
//   - A two-phase upgrade's new child says "ready" before it waits for its commit
//     (the master stops the old child as soon as it commits it).
//
// A new child that finds no link (the first child), or whose link nobody answers
// (a restart after a crash: the link's reader died with its process; the master
// then passes the link as it is), starts with what the fd store kept.

// linkTimeout bounds how long a new child waits for the serving child's "main",
// and how long sending on a link may take.
const linkTimeout = 5 * time.Second

// openLink, in a child of a `handover run` master, makes its parent's channel the
// one the master opened for it on the serving child's link (handoff.NextName: the
// master sent "next" as it started this process), or else sends a channel of its
// own on the link it inherited, if any: the initial batch comes on it, and "ready"
// goes on it.
func (u *Upgrader) openLink() {
	links := u.set.ClaimFiles(handoff.LinkName)
	offered := u.set.ClaimFiles(handoff.NextName())
	usable := u.set.Master() != 0 && u.parent.get() == nil
	if len(offered) > 0 {
		closeFiles(links)
		if ch := lastChannel(offered); ch != nil && usable {
			u.parent.ch, u.viaLink = ch, true
		} else if ch != nil {
			ch.Close()
		}
		return
	}
	link := lastChannel(links)
	if link == nil {
		return
	}
	defer link.Close()
	if !usable {
		return
	}
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

// lastChannel makes a channel of the last of files, and closes the others; nil if
// there are none, or the last is not a channel.
func lastChannel(files []*os.File) *handoff.Channel {
	if len(files) == 0 {
		return nil
	}
	closeFiles(files[:len(files)-1])
	ch, _ := handoff.NewChannel(files[len(files)-1])
	return ch
}

// serveLinks, in a library child of a `handover run` master, puts its link in the
// master's fd store and serves the new children whose channels come on it (sent by
// the master as it starts them, or by the children), for as long as the process
// lives. It returns once the link is stored, or given up: the master needs the
// link only once this process is ready and serves, so Ready calls it before
// anything tells the master READY=1 (the master reads a process's notifications in
// order), while Serve's goroutine accepts already: not on the way to the first
// accept, where it cost the new child about a millisecond (a socket pair, a
// datagram, a goroutine that held up the machine's). The master's processing of it
// is not waited for (putToMaster).
func (u *Upgrader) serveLinks(store managerStore) {
	if mine := u.storeLink(store); mine != nil {
		go u.readLink(mine)
	}
}

// storeLink puts one end of a new socket pair, the link, in the master's fd store,
// and returns the other; nil if it cannot.
func (u *Upgrader) storeLink(store managerStore) *handoff.Channel {
	mine, theirs, err := handoff.SocketPair()
	if err == nil {
		err = store.putToMaster(handoff.LinkName, theirs)
		theirs.Close()
		if err != nil {
			mine.Close()
		}
	}
	if err != nil {
		u.log.Warn("no link for the next child: it will start without what this one hands on", "event", "link_lost", "reason", "store", "err", err)
		return nil
	}
	return mine
}

// readLink serves the channels that come on the link, for as long as the process
// lives.
func (u *Upgrader) readLink(link *handoff.Channel) {
	defer link.Close()
	for {
		m, err := link.Receive()
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
