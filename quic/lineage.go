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
	// events delivers what happens to this generation, in order.
	events() <-chan event
	// handOff is called once this generation, told evHandedOver, has stopped
	// reading the shared socket; routes (an encoded routes table) go to the
	// generation that takes the socket, as its evServe.
	handOff(routes []byte)
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

// eventKind says what happened to a generation.
type eventKind int

const (
	// evServe: read the shared socket. The first generation gets it at once; a
	// later one when its predecessor has stopped reading (with the predecessor's
	// routes); a draining one when its successor died and it takes the socket
	// back (a resume).
	evServe eventKind = iota
	// evHandedOver: a successor took over. Stop reading, call handOff, drain
	// until the deadline.
	evHandedOver
	// evFinish: end now, whatever the deadline said (more generations drain than
	// allowed, or the process stops).
	evFinish
)

// event is one thing that happened to a generation.
type event struct {
	kind eventKind
	// routes is the predecessor's routes table (evServe, from handOff).
	routes []byte
	// deadline is when the drain ends at the latest (evHandedOver).
	deadline time.Time
}
