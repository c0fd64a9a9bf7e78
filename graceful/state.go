package graceful

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode"
)

// Application state handed from generation to generation (Config.SaveState,
// LoadState, StateVersion); the order is documented on Config.LoadState.

// MaxStateSize is the largest state blob SaveState may return: 64 MiB. A larger one
// is not handed on (event=state_failed reason=too_large on the old generation) and
// the upgrade goes on without it.
const MaxStateSize = 64 << 20

// stateName names the state's memfd and its fd store entry.
const stateName = "handover-state"

// stateMagic starts an encoded state blob (see encodeState).
const stateMagic = "handover-state/1\n"

// stateOverhead bounds what encodeState adds to the blob.
const stateOverhead = len(stateMagic) + 2 + 255 + 8 + sha256.Size

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

// encodeState encodes a blob and its version for a memfd: stateMagic, the version's
// length (big-endian uint16) and bytes, the data's length (big-endian uint64) and
// bytes, then the SHA-256 of all that.
func encodeState(version string, data []byte) []byte {
	b := make([]byte, 0, len(stateMagic)+2+len(version)+8+len(data)+sha256.Size)
	b = append(b, stateMagic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(version)))
	b = append(b, version...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(data)))
	b = append(b, data...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// decodeState decodes what encodeState made; any damage is an error. data shares
// b's memory.
func decodeState(b []byte) (version string, data []byte, err error) {
	if len(b) < len(stateMagic)+2+8+sha256.Size || !bytes.HasPrefix(b, []byte(stateMagic)) {
		return "", nil, errors.New("not a state blob (bad header)")
	}
	if sum := sha256.Sum256(b[:len(b)-sha256.Size]); !bytes.Equal(sum[:], b[len(b)-sha256.Size:]) {
		return "", nil, errors.New("checksum mismatch (the state is corrupt)")
	}
	p := b[len(stateMagic) : len(b)-sha256.Size]
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

// errStateTimeout: SaveState did not return in time.
var errStateTimeout = errors.New("SaveState did not return in time")

// saveState runs the application's SaveState(final) beside the loop, bounded by
// timeout (a SaveState that never returns is left running), and returns the encoded
// blob, or why there is none: reason is "save" (an error or a panic), "timeout" or
// "too_large".
func (u *Upgrader) saveState(final bool, timeout time.Duration) (blob []byte, size int, reason string, err error) {
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
		data, err := u.cfg.SaveState(final)
		res <- result{data, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-time.After(timeout):
		return nil, 0, "timeout", fmt.Errorf("%w (%s)", errStateTimeout, timeout)
	}
	switch {
	case r.err != nil:
		return nil, 0, "save", r.err
	case len(r.data) > MaxStateSize:
		return nil, len(r.data), "too_large", fmt.Errorf("the state is %d bytes, more than MaxStateSize (%d): not handed on", len(r.data), MaxStateSize)
	}
	return encodeState(u.cfg.StateVersion, r.data), len(r.data), "", nil
}

// loadState hands a state blob to the application's LoadState and logs the outcome.
func (u *Upgrader) loadState(version string, data []byte, final bool, from string) {
	start := time.Now()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("LoadState panicked: %v", p)
			}
		}()
		return u.cfg.LoadState(version, data, final)
	}()
	if err != nil {
		u.log.Warn("the application refused the previous generation's state; starting without it", "event", "state_refused", "version", version, "bytes", len(data), "final", final, "from", from, "err", err)
		return
	}
	u.log.Info("loaded the previous generation's state", "event", "state_loaded", "version", version, "bytes", len(data), "final", final, "from", from, "took", time.Since(start).Round(time.Microsecond).String())
}
