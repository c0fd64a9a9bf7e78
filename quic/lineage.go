package handoverquic

import (
	"os"
	"time"

	"github.com/quic-go/quic-go"
)

// lineage is this process's place in the line of generations: everything a Socket
// needs that depends on the generations before and after it. graceful's carrier
// implements it between processes; the tests implement it in one process
// (testLine), with the same descriptors two processes would hold.
type lineage interface {
	// generation is this process's generation number (1 for the first); its
	// low byte is the tag of the connection IDs this generation issues.
	generation() uint64
	// keys returns the line's keys, the same in every generation: the
	// stateless-reset key (so that whichever generation answers a connection ID
	// with a reset, the token is the one its peer expects; and routing guarantees
	// only the generation that issued the connection ID ever answers it) and the
	// token key (address-validation tokens of one generation are valid in the
	// next).
	keys() (quic.StatelessResetKey, quic.TokenGeneratorKey)
	// older returns the inboxes of the older generations alive when this one
	// started (none for the first). The Socket keeps descriptors of its own; the
	// files stay the lineage's.
	older() []inbox
	// pass says what the next generation's older() must return: the inboxes of
	// every live generation, this one's included. It is called once the Socket
	// is made, and again whenever an older generation is found to have ended. The
	// files stay the caller's: the lineage duplicates what it keeps.
	pass(inboxes []inbox)
	// events delivers what happens to this generation, in order. (When this
	// generation starts to read the shared socket is not the lineage's to say:
	// the generations settle it between themselves, through their inboxes; see
	// takeover_linux.go.)
	events() <-chan event
	// drained is called once, when this generation's Socket is done: its
	// connections ended (or its deadline passed) and its descriptors are closed.
	drained()
}

// inbox is a generation's inbox, as passed from generation to generation: the
// send end of its socketpair.
type inbox struct {
	gen  uint64
	send *os.File
}

// closeInboxes closes the send ends of ins.
func closeInboxes(ins []inbox) {
	for _, in := range ins {
		in.send.Close()
	}
}

// eventKind says what happened to a generation.
type eventKind int

const (
	// evServe: read the shared socket again: the successor died and this
	// draining generation takes the socket back (a resume).
	evServe eventKind = iota
	// evHandedOver: a successor took over, or the process stops: hand the socket
	// to the generation that asked for it, if one did, and drain until the
	// deadline.
	evHandedOver
	// evFinish: end now, whatever the deadline said (more generations drain than
	// allowed, or the process stops).
	evFinish
)

// event is one thing that happened to a generation.
type event struct {
	kind eventKind
	// routes is a routes table to merge (evServe).
	routes []byte
	// deadline is when the drain ends at the latest (evHandedOver).
	deadline time.Time
}
