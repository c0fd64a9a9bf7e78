package handoff

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// The handover channel is a SOCK_SEQPACKET socket pair between a process and the
// child it starts: each message is one packet holding one line of text, and may
// carry descriptors (SCM_RIGHTS). Messages, in the order they usually come:
//
//	parent → child   the initial batch, written before the child starts and read by
//	                 it while it starts (New), ended by "end":
//	                   "history <json>"   the upgrades of the line so far
//	                   "above <n>"        older generations still draining
//	                   "keys" + memfd     TLS session ticket keys (sealed memfd)
//	                   "state <version>" + memfd   the application's state
//	                                      (SaveState(false), sealed memfd)
//	                   "quic-line" + memfd, inboxes   the QUIC line's keys, and the
//	                                      inboxes of its live generations (module quic)
//	                   "prepare"          a two-phase upgrade's: do not accept
//	                                      before "main" (the parent's commit)
//	                 "end"
//	child → parent   "ready <pid>"    serving on the inherited sockets
//	child → parent   "error <text>"   cannot start; about to exit
//	parent → child   "history <json>" the history with this upgrade in it, then
//	parent → child   "main"           handed over: you are the current generation
//	parent → child   "abort <text>"   upgrade abandoned; you will be killed
//	parent → child   "keys" + memfds  the keys again, once this one stopped
//	                                  accepting (they may have rotated meanwhile),
//	                                  then the copies of the fd store's key memfds
//	                                  the parent held: the child owns them now
//	parent → child   "state final <version>" + memfd   the state once this one's
//	                                  drain has ended (SaveState(true)), or an older
//	                                  generation's, passed on
//	parent → child   "above <n>"      the count of older draining generations changed
//	                                  (the parent counts itself until its drain ended)
//	parent → child   "drained <json>" how the parent's drain went, or an older
//	                                  generation's, passed on down the line
//	parent → child   "upstream <n>" + channel   the parent is done and exits (its
//	                                  drain ended, and the child's probation): here
//	                                  is its own channel to an older generation
//	                                  still draining; n older generations drain.
//	                                  The last message about that generation: the
//	                                  parent stopped reading its channel, and sent
//	                                  what it had read, first; the child stops
//	                                  reading the parent's channel
//	child → parent   "done"           no longer the current generation (it handed
//	                                  over in turn, or is stopping): its exit is no
//	                                  crash
//	child → parent   "current"        the current generation again (it resumed after
//	                                  its own successor died): watch it again
//	child → parent   "finish"         too many generations drain: the oldest (the
//	                                  one with no upstream) force-closes now; the
//	                                  others pass it on
//	parent → child   "conntable" + memfd   in the initial batch: the table of the
//	                                  connections kept in the fd store (see Conns)
//	parent → child   "conns <json>" + sockets   idle connections of one listener,
//	                                  handed over at the handover and as they become
//	                                  idle during the drain: the child serves their
//	                                  next request
//	child → parent   "conns-taken <n>"   the n sockets of a "conns" message are in
//	                                  the child's hands (sent as it receives them,
//	                                  before it serves any): the parent lets its own
//	                                  copies go. Until then it keeps them, unread, and
//	                                  serves them again if the child dies
//
// Under a `handover run` master no child starts another, so a library child gets
// a channel of its own to the next one: the serving child keeps one end of a socket
// pair in the master's fd store (LinkName), and as the master starts a new child
// (one whose build carries NextMark) it sends on it, passing the new child the
// other end of the channel (NextName); to a child without the mark it passes the
// link, and that child sends on it itself:
//
//	master → serving  "next" + channel   the new child's handover channel (or
//	new → serving                        sent by the new child); on it the
//	                                  serving child writes the initial batch, the
//	                                  new child says "ready", the serving child
//	                                  answers "main", and what follows the handover
//	                                  (the final state, "conns") goes as above
const maxMessage = 64 << 10

// Verbs of the handover channel.
const (
	Ready    = "ready"
	Error    = "error"
	Main     = "main"
	Abort    = "abort"
	Done     = "done"
	Current  = "current"
	End      = "end"
	History  = "history"
	Above    = "above"
	Keys     = "keys"
	State    = "state"
	Drained  = "drained"
	Upstream = "upstream"
	Finish   = "finish"
	// QUICLine is the QUIC line's part of the initial batch (package
	// handoverquic, in the quic module): a sealed memfd of the line's keys and
	// the generations of the inboxes that follow it.
	QUICLine = "quic-line"
	Prepare  = "prepare"
)

// Verbs of the connections handed over (graceful's connection carrier).
const (
	// Conns carries idle connections of one listener; its text is a JSON object:
	// the listener ("name", "network", "addr") and, for connections kept in the fd
	// store, their names there ("keys", one per descriptor, "" for one not kept).
	Conns = "conns"
	// ConnTable carries the table of the connections kept in the fd store.
	ConnTable = "conntable"
	// Next, on the link a serving child of a `handover run` master keeps in the
	// master's fd store (LinkName), carries a new child's handover channel.
	Next = "next"
	// ConnsTaken answers Conns: its N descriptors are in the receiver's hands.
	ConnsTaken = "conns-taken"
)

// Message is one message of the handover channel.
type Message struct {
	Verb string
	PID  int    // Ready
	N    int    // Above, Upstream, ConnsTaken
	Text string // Error, Abort, History, State, Drained, Conns
	// Files travel with the message (SCM_RIGHTS). The receiver owns them.
	Files []*os.File
}

// String formats m as it travels (without its descriptors).
func (m Message) String() string {
	switch m.Verb {
	case Ready:
		return Ready + " " + strconv.Itoa(m.PID)
	case Above, Upstream, ConnsTaken:
		return m.Verb + " " + strconv.Itoa(m.N)
	case Error, Abort, History, State, Drained, Conns:
		return m.Verb + " " + OneLine(m.Text)
	}
	return m.Verb
}

// ParseMessage parses one message's text.
func ParseMessage(line string) (Message, error) {
	verb, rest, _ := strings.Cut(line, " ")
	switch verb {
	case Ready, Above, Upstream, ConnsTaken:
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 || verb == Ready && n == 0 || strings.HasPrefix(rest, "+") {
			if verb == Ready {
				return Message{}, fmt.Errorf("handover channel: %q: ready needs a positive PID", clip(line))
			}
			return Message{}, fmt.Errorf("handover channel: %q: %s needs a count", clip(line), verb)
		}
		if verb == Ready {
			return Message{Verb: verb, PID: n}, nil
		}
		return Message{Verb: verb, N: n}, nil
	case Error, Abort, History, State, Drained, Conns:
		return Message{Verb: verb, Text: rest}, nil
	case Main, Done, Current, End, Keys, Finish, QUICLine, Prepare, ConnTable, Next:
		if rest != "" {
			return Message{}, fmt.Errorf("handover channel: %q: %s takes no argument", clip(line), verb)
		}
		return Message{Verb: verb}, nil
	}
	return Message{}, fmt.Errorf("handover channel: unknown message %q", clip(line))
}

// OneLine makes s fit on one line of the channel (and of a log): newlines become
// spaces, and it is cut short of the message limit.
func OneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > maxMessage-16 {
		s = s[:maxMessage-16]
	}
	return s
}
