// Package carry is the one interface for what travels from one generation of a
// server to the next beside its sockets: the TLS session-ticket keys, the
// application's state, and whatever a package of its own hands on (a QUIC
// listener's keys and forwarding sockets, idle connections).
//
// A Carrier takes part in four moments of a generation's life, and nowhere else:
//
//   - A new generation's initial batch (Batch, in the old generation; Take with
//     Initial, then Start, in the new one, before New returns). The batch is written
//     into the handover channel before the new process starts.
//   - The changes of the process's role (Turn): it serves as the current
//     generation, an upgrade starts, it has handed over (its successor listens:
//     Turn.Successor), it stops for good, or its drain has ended (its last request
//     is answered).
//   - What the previous generation sends after the handover (Take with Final).
//   - The service manager's file descriptor store (Host.Store), which keeps what a
//     restart or a crash would lose.
//
// The machine of package graceful runs the Carriers; it knows nothing of what they
// carry. Work a Carrier does beside the machine (Host.Go), and each message it
// sends (Peer.Send), is counted: the process does not finish before it is done.
//
// A package outside graceful (even in a module of its own inside this repository)
// registers its Carrier with Register before graceful.New runs, typically from an
// init function. The verbs of its messages are declared in internal/handoff, like
// every message of the handover channel: a message the other generation cannot
// parse is an error that ends its reading of the channel.
package carry

import (
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Phase says when a message from the previous generation came.
type Phase int

const (
	// Initial: in the initial batch, read in New before the process is ready.
	Initial Phase = iota
	// Final: after the handover, once the previous generation stopped accepting.
	Final
)

// Role is what a process is to its line of generations.
type Role int

const (
	// Serving: the process is ready and is the current generation (it became
	// ready, an upgrade it started failed, or it resumed after its successor died).
	Serving Role = iota
	// Upgrading: a new generation is starting; it will take over what this
	// process would otherwise store.
	Upgrading
	// HandedOver: a new generation took over and this process drains; the
	// successor listens on Turn.Successor.
	HandedOver
	// Stopping: the process stops for good (SIGTERM, Stop); only a restart follows.
	// Under a `handover run` master a process the master stops hears HandedOver
	// instead when a newer child built with the library said on its link that it
	// is ready (it is the Successor); Stopping when none did.
	Stopping
	// Finishing: the drain must end now, as at its deadline: more generations
	// drain than Config.MaxDraining, and this is the oldest.
	Finishing
	// Drained: every drain of the process has ended, after a handover (the
	// successor listens on Turn.Successor) or a stop (Successor is nil): no request
	// is answered any more. A process that handed over may still stand by for its
	// successor's probation, and serve again if that dies (Serving follows).
	Drained
)

// Turn is a change of the process's role, as a Carrier hears of it.
type Turn struct {
	Role Role
	// Main is true while the service manager supervises this process: it takes
	// the process's changes to the fd store.
	Main bool
	// Successor is the new generation, for HandedOver and Drained after a
	// handover.
	Successor Peer
	// Deadline, for HandedOver and Stopping, is when the process's drain ends at
	// the latest (Config.DrainTimeout from now). A Carrier that drains something
	// of its own (connections the Servers do not see) runs that drain in Host.Go:
	// the process does not finish before it ends, and finishes once it has.
	Deadline time.Time
}

// Peer is another generation at the other end of the handover channel.
type Peer interface {
	// Send sends m and returns once it is sent or failed. m.Files stay the
	// caller's. The messages to one peer leave in the order they were sent, after
	// those the machine sent before.
	Send(m handoff.Message) error
}

// Store is the service manager's file descriptor store (systemd's, or a `handover
// run` master's), which keeps descriptors across a restart or a crash.
type Store interface {
	// Put replaces what is stored under name with copies of files, in order (they
	// stay the caller's, and keep their blocking mode), and returns once the
	// manager has processed it.
	Put(name string, files ...*os.File) error
	// Remove removes what is stored under name.
	Remove(name string) error
}

// Host is what the process offers its Carriers.
type Host interface {
	// Logger is the process's logger (every line carries gen= and pid=).
	Logger() *slog.Logger
	// Go runs f beside the machine; the process does not finish before f returns.
	Go(f func())
	// Inherited claims the descriptors the process inherited under name (from the
	// fd store, through LISTEN_FDS): they are the caller's.
	Inherited(name string) []*os.File
	// Store is the fd store the process keeps things in, or nil: systemd's with
	// graceful.Config.FDStore, a `handover run` master's under a master.
	Store() Store
	// Generation is the process's number in its line: 1 for the first, one more
	// than its parent's (or, under a master, the master's count).
	Generation() int
	// UnderMaster reports whether a `handover run` master runs the process: the
	// master starts the generations and stops the old one once a newer one is
	// ready; a channel joins them only when the newer one reached the old one's
	// link in the master's fd store (then the old one hears HandedOver).
	UnderMaster() bool
	// TakesBack says that the Carrier serves pc, a datagram socket of the
	// process's (Upgrader.ListenPacket), and takes it back itself when the process
	// resumes (Serving after HandedOver): pc does not keep the process from
	// resuming, as a datagram socket served by the application does.
	TakesBack(pc net.PacketConn)
}

// A Carrier hands something from one generation to the next beside the sockets.
// Its methods are called one at a time: Take with Initial and Start in New, then
// Take with Final and Turn on the machine's goroutine; Batch beside it.
type Carrier interface {
	// Take is offered every message from the previous generation that the machine
	// does not handle itself, in the initial batch (Initial, before Start) and after
	// the handover (Final). It returns false for a message that is not its own,
	// without touching it; a message it takes (and its files) is its own.
	Take(m handoff.Message, at Phase) bool
	// Start runs in New once the initial batch was offered: the Carrier loads what
	// came, and what the fd store kept. An error fails New.
	Start(h Host) error
	// Batch returns the Carrier's part of a new generation's initial batch. It
	// runs beside the machine (it may take its time) before the new process starts.
	// The machine sends, then closes, the messages' files.
	Batch() []handoff.Message
	// Turn tells the Carrier that the process's role changed. It must not block:
	// what takes time goes to Host.Go.
	Turn(t Turn)
}

var registry struct {
	mu       sync.Mutex
	carriers []Carrier
}

// Register adds c to the Carriers of the process, after graceful's own (the TLS
// session-ticket keys and the application's state). Call it before graceful.New,
// so that c hears of the initial batch.
func Register(c Carrier) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	registry.carriers = append(registry.carriers, c)
}

// Registered returns the Carriers registered so far, in order.
func Registered() []Carrier {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	return append([]Carrier(nil), registry.carriers...)
}
