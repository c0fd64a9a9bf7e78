package graceful

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The TLS session-ticket keys as a carrier (the ring itself is in tickets.go):
//
//   - The initial batch: "keys" with a sealed memfd of the ring. The new generation
//     reads it in New, then Start decodes it and merges it with the keys the fd
//     store kept (or reads the operator's file, Config.TicketKeyFile).
//   - Once this process has handed over and stopped accepting: "keys" again (the
//     ring may have rotated meanwhile: the successor merges it), with the copies of
//     the fd store's key memfds this process held (the successor owns them now: it
//     wipes them once its own are stored).
//   - The fd store, under systemd with Config.FDStore or under a `handover run`
//     master: FDNAME=handover-tls-keys, replaced whenever the current generation is
//     ready or its keys change (a rotation, a first use, a merge). A process that
//     is upgrading leaves that to its successor, which gets the rotated keys in the
//     final hand-off.

// corruptKeysForTest, set at link time (-ldflags -X
// github.com/seed-a7250cfa/handover/graceful.corruptKeysForTest=1), damages the keys
// a generation hands to its successor: the end-to-end tests' corrupt handoff.
var corruptKeysForTest string

// maxKeysBlob bounds an encoded key set.
const maxKeysBlob = len(keysMagic) + 40*maxTicketKeys + 32

// keyCarrier hands the session-ticket keys on.
type keyCarrier struct {
	ring    *ticketRing
	file    string // Config.TicketKeyFile
	log     *slog.Logger
	logs    *startLog // holds the start-up line back (nil: written at once)
	h       carry.Host
	store   carry.Store // where the keys are kept, or nil
	current atomic.Bool // this process is the current generation: it stores the keys

	// From the initial batch (Take) until Start.
	in    []byte
	inErr error

	storeMu    sync.Mutex
	stored     []*os.File // our copies of key memfds in the store: wiped once replaced
	storedOnce bool       // this process stored its keys at least once
	storedVer  int        // the version of the keys it stored last
}

func newKeyCarrier(cfg Config, log *slog.Logger) *keyCarrier {
	k := &keyCarrier{ring: newTicketRing(cfg.TicketKeyRotation, cfg.TicketKeyLifetime), file: cfg.TicketKeyFile, log: log}
	k.ring.log = log.Info
	k.ring.changed = func() { go k.changed() }
	return k
}

func (k *keyCarrier) Take(m handoff.Message, at carry.Phase) bool {
	if m.Verb != handoff.Keys {
		return false
	}
	if at == carry.Initial {
		clear(k.in)
		k.in, k.inErr = readMemfd(m.Files, int64(maxKeysBlob))
		return true
	}
	k.takeFinal(m)
	return true
}

// Start fills the ring: the operator's file, else the previous generation's keys
// and those the fd store kept, else new ones.
func (k *keyCarrier) Start(h carry.Host) error {
	k.h = h
	if k.file == "" {
		k.store = h.Store()
	}
	stored := h.Inherited(ticketKeysName)
	in, inErr := k.in, k.inErr
	k.in, k.inErr = nil, nil
	defer clear(in)
	if k.file != "" {
		closeFiles(stored) // still in the store: not wiped
		keys, err := loadKeyFile(k.file)
		if err != nil {
			return fmt.Errorf("graceful: Config.TicketKeyFile: %w", err)
		}
		k.ring.set(keys, true)
		wipeKeys(keys)
		n := len(keys)
		k.logs.line(func() { k.log.Info("session-ticket keys", "event", "tls_keys", "source", "file", "keys", n) })
		return nil
	}
	keys, source := k.parentKeys(in, inErr)
	keys, source = k.storedKeys(stored, keys, source)
	unique := dedupKeys(keys)
	k.ring.set(unique, false)
	wipeKeys(unique)
	wipeKeys(keys)
	keys, _ = k.ring.snapshot()
	n := len(keys)
	wipeKeys(keys)
	k.logs.line(func() { k.log.Info("session-ticket keys", "event", "tls_keys", "source", source, "keys", n) })
	return nil
}

// parentKeys decodes the keys of the initial batch, if any came.
func (k *keyCarrier) parentKeys(in []byte, err error) ([]ticketKey, string) {
	if in == nil && err == nil {
		return nil, "new"
	}
	var keys []ticketKey
	if err == nil {
		keys, err = decodeKeys(in)
	}
	if err != nil {
		k.log.Warn("the previous generation's session-ticket keys cannot be read; making new ones (clients do full handshakes once)", "event", "tls_keys_lost", "from", "parent", "reason", lostReason(err), "err", err)
		return nil, "new"
	}
	return keys, "parent"
}

// storedKeys adds the keys of the fd store's memfds to keys.
func (k *keyCarrier) storedKeys(stored []*os.File, keys []ticketKey, source string) ([]ticketKey, string) {
	for _, f := range stored {
		b, err := handoff.ReadSealed(f, int64(maxKeysBlob))
		var ks []ticketKey
		if err != nil {
			err = fmt.Errorf("%w: %v", errUnreadable, err)
		} else {
			ks, err = decodeKeys(b)
		}
		clear(b)
		if err != nil {
			k.log.Warn("session-ticket keys in the fd store cannot be read; ignored", "event", "tls_keys_lost", "from", "store", "reason", lostReason(err), "err", err)
		} else {
			keys = append(keys, ks...)
			if source == "new" {
				source = "store"
			}
		}
		if k.store != nil {
			k.stored = append(k.stored, f) // replaced, then wiped, once ready
		} else {
			f.Close()
		}
	}
	return keys, source
}

func dedupKeys(keys []ticketKey) []ticketKey {
	var out []ticketKey
	for _, k := range keys {
		dup := false
		for _, o := range out {
			dup = dup || o.key == k.key
		}
		if !dup {
			out = append(out, k)
		}
	}
	return out
}

// Batch: the keys, for the new generation's initial batch.
func (k *keyCarrier) Batch() []handoff.Message {
	m, err := k.message(nil)
	if err != nil {
		k.log.Warn("could not pass the session-ticket keys on", "event", "tls_keys_failed", "err", err)
		return nil
	}
	return []handoff.Message{m}
}

// message is a "keys" message with a sealed memfd of the ring, and more files
// after it (see handedOver).
func (k *keyCarrier) message(more []*os.File) (handoff.Message, error) {
	keys, _ := k.ring.snapshot()
	b := encodeKeys(keys)
	wipeKeys(keys)
	defer clear(b)
	if corruptKeysForTest != "" {
		b[len(b)-1] ^= 0xff
	}
	f, err := handoff.SealedFile(ticketKeysName, b)
	if err != nil {
		return handoff.Message{}, err
	}
	return handoff.Message{Verb: handoff.Keys, Files: append([]*os.File{f}, more...)}, nil
}

func (k *keyCarrier) Turn(t carry.Turn) {
	k.current.Store(t.Role == carry.Serving)
	switch {
	case t.Role == carry.Serving && k.store != nil && k.ring.isUsed():
		go k.storeKeys()
	case t.Role == carry.HandedOver && k.ring.isUsed():
		k.h.Go(func() { k.handedOver(t.Successor) })
	}
}

// handedOver sends the keys to the successor once more (rotated meanwhile,
// perhaps), with this process's copies of the fd store's memfds.
func (k *keyCarrier) handedOver(to carry.Peer) {
	k.storeMu.Lock()
	more := k.stored
	k.stored = nil
	k.storeMu.Unlock()
	m, err := k.message(more)
	if err != nil {
		closeFiles(more)
		k.log.Warn("could not pass the session-ticket keys on", "event", "tls_keys_failed", "final", true, "err", err)
		return
	}
	if err := to.Send(m); err != nil {
		handoff.Wipe(m.Files[0])
	}
	closeFiles(m.Files)
}

// takeFinal merges the keys the previous generation sent after the handover.
func (k *keyCarrier) takeFinal(m handoff.Message) {
	var more []*os.File
	if len(m.Files) > 1 {
		more = m.Files[1:]
	}
	b, err := readMemfd(m.Files[:min(len(m.Files), 1)], int64(maxKeysBlob))
	var keys []ticketKey
	if err == nil {
		keys, err = decodeKeys(b)
		clear(b)
	}
	if err != nil {
		k.log.Warn("the previous generation's last session-ticket keys cannot be read; ignored", "event", "tls_keys_lost", "from", "parent", "final", true, "reason", lostReason(err), "err", err)
	}
	added := err == nil && k.ring.merge(keys)
	wipeKeys(keys)
	store := added && k.store != nil && k.current.Load()
	go func() {
		if store {
			k.storeKeys()
		}
		k.adoptStored(more)
	}()
}

// changed runs (beside the machine) when the keys rotated or were first put to use:
// the current generation stores them.
func (k *keyCarrier) changed() {
	if k.store != nil && k.current.Load() {
		k.storeKeys()
	}
}

// storeKeys replaces the keys in the fd store with the ring as it is now, one store
// at a time; the copies of the memfds it replaces are wiped once the service
// manager has processed the replacement.
func (k *keyCarrier) storeKeys() {
	k.storeMu.Lock()
	defer k.storeMu.Unlock()
	keys, ver := k.ring.snapshot()
	defer wipeKeys(keys)
	if k.storedOnce && ver == k.storedVer {
		return // stored already
	}
	b := encodeKeys(keys)
	f, err := handoff.SealedFile(ticketKeysName, b)
	clear(b)
	if err != nil {
		k.log.Warn("fd store: could not make the memfd of the session-ticket keys", "event", "fdstore_failed", "name", ticketKeysName, "err", err)
		return
	}
	if err := k.store.Put(ticketKeysName, f); err != nil {
		k.log.Warn("fd store: the session-ticket keys were refused", "event", "fdstore_failed", "name", ticketKeysName, "err", err)
		handoff.Wipe(f)
		f.Close()
		return
	}
	for _, old := range k.stored {
		handoff.Wipe(old)
		old.Close()
	}
	k.stored = []*os.File{f}
	k.storedOnce, k.storedVer = true, ver
	k.log.Info("stored the session-ticket keys in the fd store", "event", "fdstore", "name", ticketKeysName, "keys", len(keys))
}

// adoptStored takes the previous generation's copies of the fd store's key memfds:
// wiped at once when this process has stored its own (which removed them from the
// store), else at its first store.
func (k *keyCarrier) adoptStored(files []*os.File) {
	if len(files) == 0 {
		return
	}
	k.storeMu.Lock()
	defer k.storeMu.Unlock()
	if k.storedOnce {
		for _, f := range files {
			handoff.Wipe(f)
			f.Close()
		}
		return
	}
	k.stored = append(k.stored, files...)
}
