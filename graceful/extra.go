package graceful

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Extension points of the handover channel for what travels beside the sockets:
// TLS session-ticket keys (tickets.go) and the application's state (state.go).
//
// What travels, and where:
//
//   - The initial batch (spawn, beside the loop): "keys" with a sealed memfd of the
//     key ring, and, with Config.SaveState, "state <version>" with a sealed memfd of
//     SaveState(false). The new generation reads both in New (onInitMessage), then
//     newExtra decodes the keys and runs LoadState(version, data, false).
//   - Once this process has handed over and stopped accepting (onHandedOverExtra),
//     over the channel that stays open: "keys" again (the ring may have rotated
//     meanwhile: the successor merges it), with the copies of the fd store's key
//     memfd this process held (the successor now owns them: it wipes them once its
//     own are stored), and "state final <version>" with SaveState(true). The
//     successor handles them in onUpstreamExtra: LoadState(version, data, true)
//     runs in a goroutine of its own, concurrently with requests.
//   - The fd store, under systemd with Config.FDStore or under a `handover run`
//     master (which keeps one as systemd does): the keys (FDNAME=handover-tls-keys,
//     replaced with FDSTOREREMOVE=1 whenever the current generation is ready or its
//     keys change) and, with systemd only, on a clean stop, the state
//     (FDNAME=handover-state), consumed and removed at the next start (newExtra).
//
// Every memfd is sealed (handoff.SealedFile) and mode 0600; whoever drops one last
// wipes it: the reader of one that came through the channel, the process that
// removes one from the store.

// extra is what an Upgrader keeps for the extensions.
type extra struct {
	keys      *ticketRing
	storeKeys bool // hand the keys to the fd store: systemd's (FDStore) or a master's

	// From the initial batch (onInitMessage) until newExtra.
	inKeys     []byte
	inKeysErr  error
	inState    []byte
	inStateErr error

	storeMu    sync.Mutex
	stored     []*os.File // our copies of key memfds in the store: wiped once replaced
	storedOnce bool       // this process stored its keys at least once
	storedVer  int        // the version of the keys it stored last
}

// corruptKeysForTest, set at link time (-ldflags -X
// github.com/seed-a7250cfa/handover/graceful.corruptKeysForTest=1), damages the keys
// a generation hands to its successor: the end-to-end tests' corrupt handoff.
var corruptKeysForTest string

// maxKeysBlob bounds an encoded key set.
const maxKeysBlob = len(keysMagic) + 40*maxTicketKeys + 32

// newExtra runs in New, once the initial batch is read and the notifier is known:
// the keys (the operator's file, the previous generation's, the fd store's, or new
// ones) and the state (the previous generation's, or the fd store's).
func (u *Upgrader) newExtra() error {
	rot, life := u.cfg.TicketKeyRotation, u.cfg.TicketKeyLifetime
	if rot <= 0 {
		rot = defaultTicketKeyRotation
	}
	if life <= 0 {
		life = defaultTicketKeyLifetime
	}
	stored := u.set.ClaimFiles(ticketKeysName)
	if life <= rot {
		closeFiles(stored)
		return fmt.Errorf("graceful: Config.TicketKeyLifetime (%s) must exceed TicketKeyRotation (%s)", life, rot)
	}
	if err := checkStateVersion(u.cfg.StateVersion); err != nil {
		closeFiles(stored)
		return err
	}
	r := newTicketRing(rot, life)
	r.log = u.log.Info
	r.changed = func() { go u.keysChanged() }
	u.ext.keys = r
	u.ext.storeKeys = u.notifier != nil && (u.set.Master() != 0 || u.cfg.FDStore) && u.cfg.TicketKeyFile == ""
	if err := u.initKeys(stored); err != nil {
		return err
	}
	u.initState()
	return nil
}

// initKeys fills the ring; stored are the key memfds found in the fd store.
func (u *Upgrader) initKeys(stored []*os.File) error {
	r := u.ext.keys
	in, inErr := u.ext.inKeys, u.ext.inKeysErr
	u.ext.inKeys, u.ext.inKeysErr = nil, nil
	defer clear(in)
	if path := u.cfg.TicketKeyFile; path != "" {
		closeFiles(stored) // still in the store: not wiped
		keys, err := loadKeyFile(path)
		if err != nil {
			return fmt.Errorf("graceful: Config.TicketKeyFile: %w", err)
		}
		r.set(keys, true)
		wipeKeys(keys)
		u.log.Info("session-ticket keys", "event", "tls_keys", "source", "file", "keys", len(keys))
		return nil
	}
	var keys []ticketKey
	source := ""
	if in != nil || inErr != nil {
		var ks []ticketKey
		err := inErr
		if err == nil {
			ks, err = decodeKeys(in)
		}
		if err != nil {
			u.log.Warn("the previous generation's session-ticket keys cannot be read; making new ones (clients do full handshakes once)", "event", "tls_keys_lost", "from", "parent", "reason", lostReason(err), "err", err)
		} else {
			keys = append(keys, ks...)
			source = "parent"
		}
	}
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
			u.log.Warn("session-ticket keys in the fd store cannot be read; ignored", "event", "tls_keys_lost", "from", "store", "reason", lostReason(err), "err", err)
		} else {
			keys = append(keys, ks...)
			if source == "" {
				source = "store"
			}
		}
		if u.ext.storeKeys {
			u.ext.stored = append(u.ext.stored, f) // replaced, then wiped, once ready
		} else {
			f.Close()
		}
	}
	if source == "" {
		source = "new"
	}
	unique := dedupKeys(keys)
	r.set(unique, false)
	wipeKeys(unique)
	wipeKeys(keys)
	keys, _ = r.snapshot()
	defer wipeKeys(keys)
	u.log.Info("session-ticket keys", "event", "tls_keys", "source", source, "keys", len(keys))
	return nil
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

// initState hands the previous generation's state, or the fd store's, to LoadState.
func (u *Upgrader) initState() {
	files := u.set.ClaimFiles(stateName)
	in, inErr := u.ext.inState, u.ext.inStateErr
	u.ext.inState, u.ext.inStateErr = nil, nil
	defer clear(in)
	if in != nil || inErr != nil {
		closeFiles(files)
		version, data, err := "", []byte(nil), inErr
		if err == nil {
			version, data, err = decodeState(in)
		}
		switch {
		case err != nil:
			u.log.Warn("the previous generation's state cannot be read; starting without it", "event", "state_lost", "from", "parent", "reason", lostReason(err), "err", err)
		case u.cfg.LoadState != nil:
			u.loadState(version, data, false, "parent")
		}
		return
	}
	if len(files) == 0 {
		return
	}
	if u.set.Source() != fds.Systemd {
		closeFiles(files) // only systemd's fd store keeps the state
		return
	}
	// Consumed: out of the store, then wiped.
	if err := u.notifier.Send("FDSTOREREMOVE=1\nFDNAME=" + stateName); err != nil {
		u.log.Warn("fd store: could not remove the state", "event", "fdstore_failed", "name", stateName, "err", err)
	}
	var version string
	var data, blob []byte
	defer func() { clear(blob) }()
	for _, f := range files {
		b, err := handoff.ReadSealed(f, MaxStateSize+int64(stateOverhead))
		if err != nil {
			err = fmt.Errorf("%w: %v", errUnreadable, err)
		} else {
			var v string
			var d []byte
			if v, d, err = decodeState(b); err == nil {
				clear(blob)
				version, data, blob = v, d, b
			}
		}
		if err != nil {
			clear(b)
			u.log.Warn("the state in the fd store cannot be read; ignored", "event", "state_lost", "from", "store", "reason", lostReason(err), "err", err)
		}
		handoff.Wipe(f)
		f.Close()
	}
	if blob != nil && u.cfg.LoadState != nil {
		u.loadState(version, data, true, "store")
	}
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

// initExtra returns more messages for a new generation's initial batch. It runs
// beside the loop (spawn): SaveState may take its time.
func (u *Upgrader) initExtra() []handoff.Message {
	var out []handoff.Message
	if m, err := u.keysMessage(nil); err != nil {
		u.log.Warn("could not pass the session-ticket keys on", "event", "tls_keys_failed", "err", err)
	} else {
		out = append(out, m)
	}
	if u.cfg.SaveState != nil {
		if m, ok := u.stateMessage(false); ok {
			out = append(out, m)
		}
	}
	return out
}

// keysMessage is a "keys" message with a sealed memfd of the ring, and more files
// after it (see onHandedOverExtra).
func (u *Upgrader) keysMessage(more []*os.File) (handoff.Message, error) {
	keys, _ := u.ext.keys.snapshot()
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

// stateMessage runs SaveState(final) and makes a "state" message of its blob; false
// when there is none (logged).
func (u *Upgrader) stateMessage(final bool) (handoff.Message, bool) {
	blob, size, reason, err := u.saveState(final, u.cfg.UpgradeTimeout)
	if err == nil {
		var f *os.File
		f, err = handoff.SealedFile(stateName, blob)
		clear(blob)
		if err == nil {
			text := u.cfg.StateVersion
			if final {
				text = "final " + text
			}
			return handoff.Message{Verb: handoff.State, Text: text, Files: []*os.File{f}}, true
		}
		reason = "memfd"
	}
	u.log.Error("the application's state is not handed on; the upgrade goes on without it", "event", "state_failed", "reason", reason, "final", final, "bytes", size, "max", MaxStateSize, "err", err)
	return handoff.Message{}, false
}

// onInitMessage handles a message of the initial batch that readInit does not
// know; false leaves it (and its files) to the caller.
func (u *Upgrader) onInitMessage(m handoff.Message) bool {
	switch m.Verb {
	case handoff.Keys:
		clear(u.ext.inKeys)
		u.ext.inKeys, u.ext.inKeysErr = readMemfd(m.Files, int64(maxKeysBlob))
		return true
	case handoff.State:
		clear(u.ext.inState)
		u.ext.inState, u.ext.inStateErr = readMemfd(m.Files, MaxStateSize+int64(stateOverhead))
		return true
	}
	return false
}

// onUpstreamExtra handles a message from the previous generation, after the
// handover, that onUpstreamMessage does not know; false leaves it to the caller.
func (u *Upgrader) onUpstreamExtra(m handoff.Message) bool {
	switch m.Verb {
	case handoff.Keys:
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
			u.log.Warn("the previous generation's last session-ticket keys cannot be read; ignored", "event", "tls_keys_lost", "from", "parent", "final", true, "reason", lostReason(err), "err", err)
		}
		added := err == nil && u.ext.keys.merge(keys)
		wipeKeys(keys)
		store := added && u.ext.storeKeys && u.main && u.st == serving
		go func() {
			if store {
				u.storeKeys()
			}
			u.adoptStored(more)
		}()
		return true
	case handoff.State:
		b, err := readMemfd(m.Files, MaxStateSize+int64(stateOverhead))
		var version string
		var data []byte
		if err == nil {
			version, data, err = decodeState(b)
		}
		if err != nil {
			clear(b)
			u.log.Warn("the previous generation's last state cannot be read; ignored", "event", "state_lost", "from", "parent", "final", true, "reason", lostReason(err), "err", err)
			return true
		}
		if u.cfg.LoadState == nil {
			clear(b)
			return true
		}
		go func() {
			defer clear(b)
			u.loadState(version, data, true, "parent")
		}()
		return true
	}
	return false
}

// onReadyExtra runs on the loop once the process is ready (becomeReady).
func (u *Upgrader) onReadyExtra() {
	if u.ext.storeKeys && u.ext.keys.isUsed() {
		go u.storeKeys()
	}
}

// keysChanged runs (beside the loop) when the keys rotated or were first put to use:
// the current generation stores them. A process that is upgrading leaves that to
// its successor, which gets the rotated keys in the final hand-off.
func (u *Upgrader) keysChanged() {
	if !u.ext.storeKeys {
		return
	}
	u.call(func() {
		if u.main && u.st == serving {
			go u.storeKeys()
		}
	})
}

// storeKeys replaces the keys in the fd store with the ring as it is now. It runs
// beside the loop, one at a time; the copies of the memfds it replaces are wiped
// once the service manager has processed the replacement (BARRIER=1).
func (u *Upgrader) storeKeys() {
	u.ext.storeMu.Lock()
	defer u.ext.storeMu.Unlock()
	keys, ver := u.ext.keys.snapshot()
	defer wipeKeys(keys)
	if u.ext.storedOnce && ver == u.ext.storedVer {
		return // stored already
	}
	b := encodeKeys(keys)
	f, err := handoff.SealedFile(ticketKeysName, b)
	clear(b)
	if err != nil {
		u.log.Warn("fd store: could not make the memfd of the session-ticket keys", "event", "fdstore_failed", "name", ticketKeysName, "err", err)
		return
	}
	u.notifier.Send("FDSTOREREMOVE=1\nFDNAME=" + ticketKeysName)
	if err := u.notifier.Send("FDSTORE=1\nFDPOLL=0\nFDNAME="+ticketKeysName, int(f.Fd())); err != nil {
		u.log.Warn("fd store: the session-ticket keys were refused", "event", "fdstore_failed", "name", ticketKeysName, "err", err)
		handoff.Wipe(f)
		f.Close()
		return
	}
	u.notifier.Barrier(barrierTimeout)
	for _, old := range u.ext.stored {
		handoff.Wipe(old)
		old.Close()
	}
	u.ext.stored = []*os.File{f}
	u.ext.storedOnce, u.ext.storedVer = true, ver
	u.log.Info("stored the session-ticket keys in the fd store", "event", "fdstore", "name", ticketKeysName, "keys", len(keys))
}

// adoptStored takes the previous generation's copies of the fd store's key memfds:
// wiped at once when this process has stored its own (which removed them from the
// store), else at its first store.
func (u *Upgrader) adoptStored(files []*os.File) {
	if len(files) == 0 {
		return
	}
	u.ext.storeMu.Lock()
	defer u.ext.storeMu.Unlock()
	if u.ext.storedOnce {
		for _, f := range files {
			handoff.Wipe(f)
			f.Close()
		}
		return
	}
	u.ext.stored = append(u.ext.stored, files...)
}

// onHandedOverExtra runs on the loop once this process has handed over and its
// drain has started (onHandover); the successor's channel is open (tellSuccessor):
// the keys again (rotated meanwhile, perhaps), with this process's copies of the
// fd store's memfds, and SaveState(true), the final state.
func (u *Upgrader) onHandedOverExtra() {
	n := u.next
	if n == nil || !n.handed || n.ch == nil {
		return
	}
	sendKeys := u.ext.keys.isUsed()
	if !sendKeys && u.cfg.SaveState == nil {
		return
	}
	u.sending++
	go func() {
		defer u.post(sentEvent{})
		var msgs []handoff.Message
		if sendKeys {
			u.ext.storeMu.Lock()
			more := u.ext.stored
			u.ext.stored = nil
			u.ext.storeMu.Unlock()
			m, err := u.keysMessage(more)
			if err != nil {
				closeFiles(more)
				u.log.Warn("could not pass the session-ticket keys on", "event", "tls_keys_failed", "final", true, "err", err)
			} else {
				msgs = append(msgs, m)
			}
		}
		if u.cfg.SaveState != nil {
			if m, ok := u.stateMessage(true); ok {
				msgs = append(msgs, m)
			}
		}
		for _, m := range msgs {
			if err := n.ch.Send(m, sendTimeout); err != nil {
				handoff.Wipe(m.Files[0])
			}
			closeFiles(m.Files)
		}
	}()
}

// onStopExtra runs on the loop when the process starts to stop (stop), before its
// drain: with FDStore under systemd, the final state goes to the fd store, so that
// `systemctl restart` starts warm. The process does not finish before it is stored.
func (u *Upgrader) onStopExtra() {
	if u.cfg.SaveState == nil || !u.cfg.FDStore || u.notifier == nil || u.set.Master() != 0 || !u.main {
		return
	}
	u.sending++
	go func() {
		defer u.post(sentEvent{})
		blob, size, reason, err := u.saveState(true, u.cfg.UpgradeTimeout)
		var f *os.File
		if err == nil {
			f, err = handoff.SealedFile(stateName, blob)
			reason = "memfd"
		}
		clear(blob)
		if err != nil {
			u.log.Error("the application's state is not stored", "event", "state_failed", "reason", reason, "final", true, "bytes", size, "max", MaxStateSize, "err", err)
			return
		}
		defer f.Close() // not wiped: the store keeps it
		u.notifier.Send("FDSTOREREMOVE=1\nFDNAME=" + stateName)
		if err := u.notifier.Send("FDSTORE=1\nFDPOLL=0\nFDNAME="+stateName, int(f.Fd())); err != nil {
			u.log.Warn("fd store: the state was refused", "event", "fdstore_failed", "name", stateName, "err", err)
			handoff.Wipe(f)
			return
		}
		u.notifier.Barrier(barrierTimeout)
		u.log.Info("stored the application's state in the fd store", "event", "fdstore", "name", stateName, "bytes", size)
	}()
}
