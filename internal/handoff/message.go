package handoff

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// The handover channel is a SOCK_SEQPACKET socket pair between a process and the
// child it starts: each message is one packet holding one line of text, and may
// carry descriptors (SCM_RIGHTS). Messages:
//
//	child → parent   "ready <pid>"    serving on the inherited sockets
//	child → parent   "error <text>"   cannot start; about to exit
//	parent → child   "main"           handed over: you are the current generation
//	parent → child   "abort <text>"   upgrade abandoned; you will be killed
//	child → parent   "done"           no longer the current generation (it handed
//	                                  over in turn, or is stopping): its exit is no
//	                                  crash
//	child → parent   "current"        the current generation again (it resumed after
//	                                  its own successor died): watch it again
const maxMessage = 64 << 10

// Verbs of the handover channel.
const (
	Ready   = "ready"
	Error   = "error"
	Main    = "main"
	Abort   = "abort"
	Done    = "done"
	Current = "current"
)

// Message is one message of the handover channel.
type Message struct {
	Verb string
	PID  int    // Ready
	Text string // Error, Abort
	// Files travel with the message (SCM_RIGHTS). The receiver owns them.
	Files []*os.File
}

// String formats m as it travels (without its descriptors).
func (m Message) String() string {
	switch m.Verb {
	case Ready:
		return Ready + " " + strconv.Itoa(m.PID)
	case Error, Abort:
		return m.Verb + " " + OneLine(m.Text)
	}
	return m.Verb
}

// ParseMessage parses one message's text.
func ParseMessage(line string) (Message, error) {
	verb, rest, _ := strings.Cut(line, " ")
	switch verb {
	case Ready:
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 || strings.HasPrefix(rest, "+") {
			return Message{}, fmt.Errorf("handover channel: %q: ready needs a positive PID", clip(line))
		}
		return Message{Verb: verb, PID: pid}, nil
	case Error, Abort:
		return Message{Verb: verb, Text: rest}, nil
	case Main, Done, Current:
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
