package graceful

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"sync"
	"time"
	"unicode"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The application's state, handed from generation to generation (Config.SaveState,
// LoadState, StateVersion; the order is documented on Config.LoadState), as a
// carrier:
//
//   - The initial batch: "state <version>" with a sealed memfd of SaveState(false).
//     The new generation reads it in New; Start runs LoadState(version, data, false).
//   - Once this process has handed over and its drain has ended (its last request
//     is answered; carry.Drained): "state final <version>" with SaveState(true).
//     The successor reads it and runs LoadState(version, data, true) in a
//     goroutine of its own, concurrently with requests.
//   - A final state from an older generation (its drain outlasted this one's
//     handover) is loaded here if this process's own final state is still to be
//     saved (SaveState(true) waits for that LoadState to return, so that it holds
//     it), else passed on to the successor as it came.
//   - Under systemd with Config.FDStore, and under a `handover run` master, on a
//     stop without a successor, once drained: the state goes to the fd store
//     (FDNAME=handover-state); the next start takes it out (and removes it) when
//     no previous generation passed one (and removes it too when one did).
//   - Under a `handover run` master the old child's state reaches the new one over
//     a channel of their own (masterlink.go): SaveState(false) before the new
//     child is ready, SaveState(true) once the old child, stopped by the master,
//     has drained.
//
// The blob travels as stateParts lays it out: only a header and a checksum are
// added, the application's bytes are written to the memfd as they are (no copy);
// the reader reads it whole, checks it, and wipes the memfd.

// MaxStateSize is the largest state blob SaveState may return: 64 MiB. A larger one
// is not handed on (event=state_failed reason=too_large on the old generation) and
// the upgrade goes on without it.
const MaxStateSize = 64 << 20

// stateName names the state's memfd and its fd store entry.
const stateName = handoff.StateName

// The formats of an encoded state blob (see stateParts): each starts with its magic
// line. Version 2, written since, ends with a CRC-32C (Castagnoli), which the CPU
// computes much faster than version 1's SHA-256, most of what a hand-off cost
// (BENCHMARKS.md); a previous build may still send version 1, or have left it in
// the fd store. Both are checksums against damage, not authentication: whoever
// can write the sealed memfd can write a valid blob.
const (
	stateMagic   = "handover-state/2\n"
	stateMagicV1 = "handover-state/1\n"
)

// stateOverhead bounds what stateParts adds to the blob (or a version 1 encoder).
const stateOverhead = len(stateMagic) + 2 + 255 + 8 + sha256.Size

// castagnoli returns the CRC-32C table. hash/crc32 builds it on first use and
// keeps it: made at package initialisation, it would cost every process that
// links this package its start-up time, a new generation's included, whether it
// carries state or not.
func castagnoli() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

// checkStateVersion validates Config.StateVersion.
func checkStateVersion(v string) error {
	if len(v) > 255 {
		return fmt.Errorf("graceful: Config.StateVersion is %d bytes long; at most 255", len(v))
	}
	for _, r := range v {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("graceful: Config.StateVersion %q has a character that is not printable", v)
		}
	}
	return nil
}

// stateParts encodes a blob and its version for a memfd, in three parts: the header
// (stateMagic, the version's length (big-endian uint16) and bytes, the data's
// length (big-endian uint64)), data itself (not copied), then the CRC-32C of the two
// (big-endian uint32).
func stateParts(version string, data []byte) [][]byte {
	h := make([]byte, 0, len(stateMagic)+2+len(version)+8)
	h = append(h, stateMagic...)
	h = binary.BigEndian.AppendUint16(h, uint16(len(version)))
	h = append(h, version...)
	h = binary.BigEndian.AppendUint64(h, uint64(len(data)))
	sum := crc32.Update(crc32.Checksum(h, castagnoli()), castagnoli(), data)
	return [][]byte{h, data, binary.BigEndian.AppendUint32(nil, sum)}
}

// encodeState is stateParts in one piece.
func encodeState(version string, data []byte) []byte {
	return bytes.Join(stateParts(version, data), nil)
}

// decodeState decodes what stateParts made, or a version 1 blob; any damage is an
// error. data shares b's memory.
func decodeState(b []byte) (version string, data []byte, err error) {
	var p []byte
	switch {
	case bytes.HasPrefix(b, []byte(stateMagic)) && len(b) >= len(stateMagic)+2+8+4:
		p = b[len(stateMagic) : len(b)-4]
		if crc32.Checksum(b[:len(b)-4], castagnoli()) != binary.BigEndian.Uint32(b[len(b)-4:]) {
			return "", nil, errors.New("checksum mismatch (the state is corrupt)")
		}
	case bytes.HasPrefix(b, []byte(stateMagicV1)) && len(b) >= len(stateMagicV1)+2+8+sha256.Size:
		p = b[len(stateMagicV1) : len(b)-sha256.Size]
		if sum := sha256.Sum256(b[:len(b)-sha256.Size]); !bytes.Equal(sum[:], b[len(b)-sha256.Size:]) {
			return "", nil, errors.New("checksum mismatch (the state is corrupt)")
		}
	default:
		return "", nil, errors.New("not a state blob (bad header)")
	}
	n := int(binary.BigEndian.Uint16(p))
	if len(p) < 2+n+8 {
		return "", nil, errors.New("truncated state blob")
	}
	version = string(p[2 : 2+n])
	p = p[2+n:]
	if m := binary.BigEndian.Uint64(p); m != uint64(len(p)-8) {
		return "", nil, fmt.Errorf("state blob says %d bytes of data, holds %d", m, len(p)-8)
	}
	return version, p[8:], nil
}

// stateCarrier hands the application's state on.
type stateCarrier struct {
	save    func(final bool) ([]byte, error)
	load    func(version string, data []byte, final bool) error
	version string
	timeout time.Duration // bounds SaveState (Config.UpgradeTimeout)
	clock   clock
	log     *slog.Logger
	logs    *startLog // holds the start-up line back (nil: written at once)
	h       carry.Host
	// keep: on a stop without a successor the state goes to the fd store
	// (Config.FDStore under systemd; always under a `handover run` master).
	keep bool
	// stored is the fd store a kept state came from (systemd's, or a master's), to
	// be removed once taken out; nil when the descriptors came from elsewhere.
	stored carry.Store

	// From the initial batch (Take) until Start: the blob, mapped (mapMemfd).
	in        []byte
	inRelease func()
	inErr     error
	inRead    time.Duration // how long mapping it took

	// Owned by the machine's goroutine (Take, Turn).
	sealed carry.Peer     // this process's own final state is being saved: older ones go on to this successor
	loads  sync.WaitGroup // final states being loaded
}

func (c *stateCarrier) Take(m handoff.Message, at carry.Phase) bool {
	if m.Verb != handoff.State {
		return false
	}
	if at == carry.Initial {
		start := time.Now()
		if c.inRelease != nil {
			c.inRelease()
		}
		c.in, c.inRelease, c.inErr = mapMemfd(m.Files, MaxStateSize+int64(stateOverhead))
		c.inRead = time.Since(start)
		return true
	}
	c.takeFinal(m)
	return true
}

// Start hands the previous generation's state, or the fd store's, to LoadState.
func (c *stateCarrier) Start(h carry.Host) error {
	c.h = h
	files := h.Inherited(stateName)
	in, release, inErr := c.in, c.inRelease, c.inErr
	c.in, c.inRelease, c.inErr = nil, nil, nil
	if release != nil {
		defer h.Go(release) // the wipe, beside the start
	}
	if in == nil && inErr == nil {
		c.fromStore(files)
		return nil
	}
	if len(files) > 0 && c.stored != nil {
		// The previous generation's state is newer than what the store kept.
		c.stored.Remove(stateName)
	}
	closeFiles(files)
	start := time.Now()
	version, data, err := "", []byte(nil), inErr
	if err == nil {
		version, data, err = decodeState(in)
	}
	switch {
	case err != nil:
		c.log.Warn("the previous generation's state cannot be read; starting without it", "event", "state_lost", "from", "parent", "reason", lostReason(err), "err", err)
	case c.load != nil:
		c.loadState(version, data, false, "parent", c.inRead+time.Since(start))
	}
	return nil
}

// fromStore takes the state out of the fd store (systemd's, or a master's), if it kept one: consumed (out
// of the store), then wiped.
func (c *stateCarrier) fromStore(files []*os.File) {
	if len(files) == 0 {
		return
	}
	if c.stored == nil {
		closeFiles(files) // only systemd's or a master's fd store keeps the state
		return
	}
	if err := c.stored.Remove(stateName); err != nil {
		c.log.Warn("fd store: could not remove the state", "event", "fdstore_failed", "name", stateName, "err", err)
	}
	var version string
	var data, blob []byte
	defer func() { clear(blob) }()
	start := time.Now()
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
			c.log.Warn("the state in the fd store cannot be read; ignored", "event", "state_lost", "from", "store", "reason", lostReason(err), "err", err)
		}
		handoff.Wipe(f)
		f.Close()
	}
	if blob != nil && c.load != nil {
		c.loadState(version, data, true, "store", time.Since(start))
	}
}

// Batch: SaveState(false), for the new generation's initial batch.
func (c *stateCarrier) Batch() []handoff.Message {
	if c.save == nil {
		return nil
	}
	if m, ok := c.message(false); ok {
		return []handoff.Message{m}
	}
	return nil
}

func (c *stateCarrier) Turn(t carry.Turn) {
	switch {
	case t.Role == carry.Serving:
		c.sealed = nil // it serves again (it resumed): it loads what comes
	case c.save == nil || t.Role != carry.Drained:
	case t.Successor != nil:
		c.sealed = t.Successor
		c.h.Go(func() {
			c.loads.Wait()
			c.sendFinal(t.Successor)
		})
	case c.keep && t.Main:
		c.h.Go(func() {
			c.loads.Wait()
			c.storeFinal()
		})
	}
}

// sendFinal sends SaveState(true), the final state, to the successor.
func (c *stateCarrier) sendFinal(to carry.Peer) {
	m, ok := c.message(true)
	if !ok {
		return
	}
	if err := to.Send(m); err != nil {
		handoff.Wipe(m.Files[0])
	}
	closeFiles(m.Files)
}

// message runs SaveState(final) and makes a "state" message of its blob; false
// when there is none (logged).
func (c *stateCarrier) message(final bool) (handoff.Message, bool) {
	f, _, err := c.sealedState(final)
	if err != nil {
		return handoff.Message{}, false
	}
	text := c.version
	if final {
		text = "final " + text
	}
	return handoff.Message{Verb: handoff.State, Text: text, Files: []*os.File{f}}, true
}

// sealedState runs SaveState(final) and puts its blob in a sealed memfd; an error
// is logged (state_failed), a success too (state_saved: how long SaveState took,
// and the whole).
func (c *stateCarrier) sealedState(final bool) (f *os.File, size int, err error) {
	start := time.Now()
	parts, size, reason, err := c.saveState(final)
	saved := time.Since(start)
	if err == nil {
		if f, err = handoff.SealedFile(stateName, parts...); err != nil {
			reason = "memfd"
		}
	}
	if err != nil {
		c.log.Error("the application's state is not handed on", "event", "state_failed", "reason", reason, "final", final, "bytes", size, "max", MaxStateSize, "err", err)
		return nil, size, err
	}
	c.log.Info("saved the application's state", "event", "state_saved", "final", final, "bytes", size,
		"save", saved.Round(time.Microsecond).String(), "took", time.Since(start).Round(time.Microsecond).String())
	return f, size, nil
}

// storeFinal puts SaveState(true) in systemd's fd store, so that `systemctl
// restart` starts warm.
func (c *stateCarrier) storeFinal() {
	f, size, err := c.sealedState(true)
	if err != nil {
		return
	}
	defer f.Close() // not wiped: the store keeps it
	if err := c.h.Store().Put(stateName, f); err != nil {
		c.log.Warn("fd store: the state was refused", "event", "fdstore_failed", "name", stateName, "err", err)
		handoff.Wipe(f)
		return
	}
	c.log.Info("stored the application's state in the fd store", "event", "fdstore", "name", stateName, "bytes", size)
}

// takeFinal takes a final state an older generation sent after the handover: it is
// loaded beside the machine (read, checked, then LoadState, concurrently with
// requests), or passed on to the successor once this process's own final state is
// being saved.
func (c *stateCarrier) takeFinal(m handoff.Message) {
	if to := c.sealed; to != nil {
		c.h.Go(func() {
			if err := to.Send(m); err != nil && len(m.Files) > 0 {
				handoff.Wipe(m.Files[0])
			}
			closeFiles(m.Files)
		})
		return
	}
	c.loads.Add(1)
	c.h.Go(func() {
		defer c.loads.Done()
		c.loadFinal(m)
	})
}

// loadFinal reads a final state and hands it to LoadState.
func (c *stateCarrier) loadFinal(m handoff.Message) {
	start := time.Now()
	b, release, err := mapMemfd(m.Files, MaxStateSize+int64(stateOverhead))
	if err == nil {
		defer release()
	}
	var version string
	var data []byte
	if err == nil {
		version, data, err = decodeState(b)
	}
	if err != nil {
		c.log.Warn("the previous generation's last state cannot be read; ignored", "event", "state_lost", "from", "parent", "final", true, "reason", lostReason(err), "err", err)
		return
	}
	if c.load != nil {
		c.loadState(version, data, true, "parent", time.Since(start))
	}
}

// errStateTimeout: SaveState did not return in time.
var errStateTimeout = errors.New("SaveState did not return in time")

// saveState runs the application's SaveState(final), bounded by c.timeout (a
// SaveState that never returns is left running), and returns the encoded blob (in
// parts: stateParts), or why there is none: reason is "save" (an error or a
// panic), "timeout" or "too_large".
func (c *stateCarrier) saveState(final bool) (blob [][]byte, size int, reason string, err error) {
	type result struct {
		data []byte
		err  error
	}
	res := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				res <- result{err: fmt.Errorf("SaveState panicked: %v", p)}
			}
		}()
		data, err := c.save(final)
		res <- result{data, err}
	}()
	t := c.clock.NewTimer(c.timeout)
	defer t.Stop()
	var r result
	select {
	case r = <-res:
	case <-t.C():
		return nil, 0, "timeout", fmt.Errorf("%w (%s)", errStateTimeout, c.timeout)
	}
	switch {
	case r.err != nil:
		return nil, 0, "save", r.err
	case len(r.data) > MaxStateSize:
		return nil, len(r.data), "too_large", fmt.Errorf("the state is %d bytes, more than MaxStateSize (%d): not handed on", len(r.data), MaxStateSize)
	}
	return stateParts(c.version, r.data), len(r.data), "", nil
}

// loadState hands a state blob to the application's LoadState and logs the outcome;
// read is how long reading and checking the blob took.
func (c *stateCarrier) loadState(version string, data []byte, final bool, from string, read time.Duration) {
	start := time.Now()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("LoadState panicked: %v", p)
			}
		}()
		return c.load(version, data, final)
	}()
	if err != nil {
		c.log.Warn("the application refused the previous generation's state; starting without it", "event", "state_refused", "version", version, "bytes", len(data), "final", final, "from", from, "err", err)
		return
	}
	n, took := len(data), time.Since(start)
	line := func() {
		c.log.Info("loaded the previous generation's state", "event", "state_loaded", "version", version, "bytes", n, "final", final, "from", from,
			"read", read.Round(time.Microsecond).String(), "took", took.Round(time.Microsecond).String())
	}
	c.logs.line(line) // written at once but while a new generation starts
}
