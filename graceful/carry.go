package graceful

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// What travels beside the sockets goes through the carriers (internal/carry): the
// TLS session-ticket keys (keycarrier.go), the application's state (appstate.go),
// idle connections (conncarrier.go), then those registered with carry.Register. The machine calls them at four moments
// and knows nothing of what they carry:
//
//   - a new generation's initial batch: Batch, beside the machine, after the
//     machine's own messages (the history, the count of draining generations);
//   - in the new generation, in New: Take(Initial) for each message of the batch
//     that is not the machine's, then Start;
//   - Turn, on every change of the process's role: serving, upgrading, handed over
//     (with the successor to send to), stopping;
//   - Take(Final) for what the previous generation sends after the handover.
//
// A carrier's work beside the machine (Host.Go) and its messages (Peer.Send) are
// counted like the machine's own: the process does not finish before they are done.
//
// Every memfd that carries a secret or the state is sealed (handoff.SealedFile) and
// mode 0600; whoever drops one last wipes it: the reader of one that came through the
// channel, the process that removes one from the store.

// carried is what an Upgrader hands on beside its sockets.
type carried struct {
	keys     *ticketRing     // the TLS session-ticket keys (KeepTLSSessions, Server.ServeTLS)
	state    *stateCarrier   // the application's state
	conns    *connCarrier    // idle connections (conncarrier.go)
	carriers []carry.Carrier // in the order their messages travel
}

// carryHost is the process as its carriers see it (carry.Host).
type carryHost struct {
	log   *slog.Logger
	set   *fds.Set
	store carry.Store
	hold  func() (release func())
	taken *takenBack
}

func (h *carryHost) Logger() *slog.Logger             { return h.log }
func (h *carryHost) Inherited(name string) []*os.File { return h.set.ClaimFiles(name) }
func (h *carryHost) Store() carry.Store               { return h.store }
func (h *carryHost) Generation() int                  { return h.set.Generation() }
func (h *carryHost) UnderMaster() bool                { return h.set.Master() != 0 }
func (h *carryHost) TakesBack(pc net.PacketConn)      { h.taken.add(pc) }

// takenBack are the datagram sockets a carrier takes back itself when the process
// resumes (carry.Host.TakesBack).
type takenBack struct {
	mu  sync.Mutex
	pcs []net.PacketConn
}

func (t *takenBack) add(pc net.PacketConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pcs = append(t.pcs, pc)
}

func (t *takenBack) has(pc net.PacketConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Contains(t.pcs, pc)
}

func (h *carryHost) Go(f func()) {
	release := h.hold()
	go func() {
		defer release()
		f()
	}()
}

// managerStore is the service manager's fd store, through its notification socket
// (none: nothing is stored).
type managerStore struct{ n notifier }

// Put replaces what is stored under name with files, and waits until the manager
// has processed it (BARRIER=1).
func (s managerStore) Put(name string, files ...*os.File) error {
	if s.n == nil {
		return nil
	}
	fds, err := rawFDs(files)
	if err != nil {
		return err
	}
	notifyRetry(s.n, "FDSTOREREMOVE=1\nFDNAME="+name)
	if err := notifyRetry(s.n, "FDSTORE=1\nFDPOLL=0\nFDNAME="+name, fds...); err != nil {
		return err
	}
	barrierRetry(s.n)
	return nil
}

// putToMaster is Put for a `handover run` master's fd store, in one datagram (the
// master removes, then stores), without the wait: the master reads notifications
// in order, so what it stores is there before whatever this process notifies next
// (READY=1).
func (s managerStore) putToMaster(name string, files ...*os.File) error {
	fds, err := rawFDs(files)
	if err != nil {
		return err
	}
	return notifyRetry(s.n, "FDSTOREREMOVE=1\nFDSTORE=1\nFDPOLL=0\nFDNAME="+name, fds...)
}

// rawFDs returns the descriptors of files (handoff.RawFD), for a message sent while
// they are open.
func rawFDs(files []*os.File) ([]int, error) {
	fds := make([]int, len(files))
	for i, f := range files {
		fd, err := handoff.RawFD(f)
		if err != nil {
			return nil, err
		}
		fds[i] = fd
	}
	return fds, nil
}

// Remove removes what is stored under name.
func (s managerStore) Remove(name string) error {
	if s.n == nil {
		return nil
	}
	return notifyRetry(s.n, "FDSTOREREMOVE=1\nFDNAME="+name)
}

// takeCarried offers m to the carriers; false if none took it.
func takeCarried(carriers []carry.Carrier, m handoff.Message, at carry.Phase) bool {
	for _, c := range carriers {
		if c.Take(m, at) {
			return true
		}
	}
	return false
}

// carrierBatch collects the carriers' parts of a new generation's initial batch.
func carrierBatch(carriers []carry.Carrier) []handoff.Message {
	var out []handoff.Message
	for _, c := range carriers {
		out = append(out, c.Batch()...)
	}
	return out
}

// errUnreadable marks a memfd that could not be read (as opposed to a corrupt one).
var errUnreadable = errors.New("unreadable")

// lostReason is the reason attribute of tls_keys_lost and state_lost: "unreadable"
// when the memfd itself was refused (not sealed, not a memfd, too large), "corrupt"
// when its content was.
func lostReason(err error) string {
	if errors.Is(err, errUnreadable) {
		return "unreadable"
	}
	return "corrupt"
}

// mapMemfd maps the sealed memfd a message carries (its first file; see
// handoff.MapSealed): release wipes it, drops the mapping and closes every file of
// the message. On an error they are wiped and closed already.
func mapMemfd(files []*os.File, max int64) (b []byte, release func(), err error) {
	if len(files) == 0 {
		return nil, nil, fmt.Errorf("%w: no descriptor came with the message", errUnreadable)
	}
	b, rel, err := handoff.MapSealed(files[0], max)
	if err != nil {
		handoff.Wipe(files[0])
		closeFiles(files)
		return nil, nil, fmt.Errorf("%w: %v", errUnreadable, err)
	}
	return b, func() {
		rel()
		closeFiles(files)
	}, nil
}

// readMemfd reads the sealed memfd a message carries (its first file), wipes it and
// closes every file of the message.
func readMemfd(files []*os.File, max int64) ([]byte, error) {
	defer closeFiles(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no descriptor came with the message", errUnreadable)
	}
	b, err := handoff.ReadSealed(files[0], max)
	handoff.Wipe(files[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnreadable, err)
	}
	return b, nil
}
