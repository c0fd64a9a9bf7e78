package graceful

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// TLS session-ticket keys that outlive the process.
//
// A TLS server encrypts the session tickets it gives clients with a key of its own;
// crypto/tls makes random keys in each process, so every upgrade used to cost every
// client a full handshake. The Upgrader keeps one ring of keys for the whole line of
// generations: the first generation makes it (or reads the operator's file,
// Config.TicketKeyFile), each new generation receives it from the one before (a
// sealed memfd in the handover channel's initial batch, and again, merged, once the
// old one has stopped accepting), and, under systemd with Config.FDStore or under a
// `handover run` master, it also waits in the fd store (FDNAME=handover-tls-keys) for
// a restart or a crash. The newest key makes new tickets; every key of the ring
// decrypts. A key is replaced after Config.TicketKeyRotation and kept, to accept the
// tickets it made, until Config.TicketKeyLifetime after its creation (crypto/tls's
// own defaults: 24 hours and 7 days).
//
// The ring reaches a tls.Config through its WrapSession and UnwrapSession hooks,
// which survive Clone (quic-go and gRPC clone the Config they are given), and which
// rotate the keys as they are used, like crypto/tls's own. The key bytes are never
// logged; those the Upgrader holds are zeroed when a key is dropped, and every
// buffer and memfd they passed through is wiped by whoever drops it last.

// Defaults and bounds of the ring.
const (
	defaultTicketKeyRotation = 24 * time.Hour
	defaultTicketKeyLifetime = 7 * 24 * time.Hour
	// maxTicketKeys bounds a ring (and a key file): with the defaults a ring holds 7.
	maxTicketKeys = 64
	// maxKeyFile bounds the size of Config.TicketKeyFile.
	maxKeyFile = 64 << 10
	// ticketKeysName names the keys' memfd and their fd store entry.
	ticketKeysName = "handover-tls-keys"
)

// keysMagic starts an encoded key set (see encodeKeys).
const keysMagic = "handover-tls-keys/1\n"

// ticketKey is one session-ticket key.
type ticketKey struct {
	key     [32]byte
	created time.Time
}

// ticketRing is the process's session-ticket keys. It is safe for concurrent use:
// handshakes call wrap and unwrap from their own goroutines.
type ticketRing struct {
	rotation, lifetime time.Duration
	now                func() time.Time
	// changed is called, outside the lock, when the keys changed by themselves (a
	// rotation) or were first put to use: the fd store must learn of it.
	changed func()
	log     func(msg string, args ...any)

	mu    sync.Mutex
	keys  []ticketKey // newest first; never empty once set
	ver   int         // counts the changes of keys
	fixed bool        // the operator's keys (TicketKeyFile): not rotated, not expired
	used  bool        // installed on some tls.Config
	inner *tls.Config // holds the keys; encrypts and decrypts tickets
	cfgs  []*tls.Config
}

func newTicketRing(rotation, lifetime time.Duration) *ticketRing {
	return &ticketRing{rotation: rotation, lifetime: lifetime, now: time.Now, inner: &tls.Config{}}
}

// set replaces the keys with a copy of keys (newest first is restored by their
// creation times; a fixed set keeps its order: the first key encrypts). Expired
// keys are dropped; an empty result gets a fresh key. The keys replaced are zeroed;
// keys is the caller's to wipe.
func (r *ticketRing) set(keys []ticketKey, fixed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.keys)
	r.keys, r.fixed = slices.Clone(keys), fixed
	if !fixed {
		sortKeys(r.keys)
	}
	r.refreshLocked(r.now(), true)
}

// merge adds the keys another generation holds to the ring, and reports whether
// any was new. The newest key of the union encrypts.
func (r *ticketRing) merge(keys []ticketKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fixed {
		return false
	}
	union := slices.Clone(r.keys)
	for _, k := range keys {
		if !slices.ContainsFunc(union, func(h ticketKey) bool { return h.key == k.key }) {
			union = append(union, k)
		}
	}
	if len(union) == len(r.keys) {
		wipeKeys(union)
		return false
	}
	clear(r.keys) // the old array's copies
	r.keys = union
	sortKeys(r.keys)
	r.refreshLocked(r.now(), true)
	return true
}

func sortKeys(keys []ticketKey) {
	slices.SortStableFunc(keys, func(a, b ticketKey) int { return b.created.Compare(a.created) })
}

// refresh rotates the keys if the newest is due for replacement and drops those
// past their lifetime, as crypto/tls does for its own keys, at the moment they are
// used.
func (r *ticketRing) refresh() {
	r.mu.Lock()
	changed := r.refreshLocked(r.now(), false)
	r.mu.Unlock()
	if changed && r.changed != nil {
		r.changed()
	}
}

// refreshLocked: see refresh. apply installs the keys even if nothing changed.
func (r *ticketRing) refreshLocked(now time.Time, apply bool) bool {
	changed := false
	if !r.fixed {
		if len(r.keys) == 0 || now.Sub(r.keys[0].created) >= r.rotation {
			var k ticketKey
			if _, err := io.ReadFull(rand.Reader, k.key[:]); err != nil {
				panic(fmt.Sprintf("graceful: no randomness for a session-ticket key: %v", err))
			}
			k.created = now
			keys := append(make([]ticketKey, 0, len(r.keys)+1), k)
			keys = append(keys, r.keys...)
			clear(r.keys) // the old array's copies
			r.keys = keys
			clear(k.key[:])
			changed = true
		}
		kept := r.keys[:1]
		for i := 1; i < len(r.keys); i++ {
			if now.Sub(r.keys[i].created) < r.lifetime && len(kept) < maxTicketKeys {
				kept = append(kept, r.keys[i]) // into a slot at or before i
			} else {
				changed = true
			}
		}
		// The slots beyond kept hold dropped keys (or stale copies): zeroed.
		for i := len(kept); i < len(r.keys); i++ {
			r.keys[i] = ticketKey{}
		}
		r.keys = kept
	}
	if changed || apply {
		r.ver++
		list := make([][32]byte, len(r.keys))
		for i, k := range r.keys {
			list[i] = k.key
		}
		r.inner.SetSessionTicketKeys(list)
		for _, c := range r.cfgs {
			c.SetSessionTicketKeys(list)
		}
		clear(list)
	}
	if changed && !apply && r.log != nil {
		r.log("session-ticket keys rotated", "event", "tls_keys_rotated", "keys", len(r.keys))
	}
	return changed
}

// snapshot returns a copy of the keys, newest first, and their version (which
// changes with them).
func (r *ticketRing) snapshot() ([]ticketKey, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.keys), r.ver
}

// isUsed reports whether some tls.Config uses the keys.
func (r *ticketRing) isUsed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.used
}

// wrap is tls.Config.WrapSession: the newest key encrypts.
func (r *ticketRing) wrap(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	r.refresh()
	return r.inner.EncryptTicket(cs, ss)
}

// unwrap is tls.Config.UnwrapSession: any key of the ring decrypts; a ticket none
// decrypts (made by another line of processes, or with a key past its lifetime)
// means a full handshake.
func (r *ticketRing) unwrap(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	r.refresh()
	return r.inner.DecryptTicket(identity, cs)
}

// install makes cfg use the ring. explicit is false for a Server's own TLS: a
// Config with session tickets disabled, or with hooks of its own, is then left
// alone instead of refused.
func (r *ticketRing) install(cfg *tls.Config, explicit bool) error {
	if cfg == nil {
		return errors.New("graceful: KeepTLSSessions: nil tls.Config")
	}
	r.mu.Lock()
	if slices.Contains(r.cfgs, cfg) {
		r.mu.Unlock()
		return nil
	}
	switch {
	case cfg.SessionTicketsDisabled:
		r.mu.Unlock()
		if !explicit {
			return nil
		}
		return errors.New("graceful: KeepTLSSessions: the tls.Config has session tickets disabled (SessionTicketsDisabled)")
	case cfg.WrapSession != nil || cfg.UnwrapSession != nil:
		r.mu.Unlock()
		if !explicit {
			return nil
		}
		return errors.New("graceful: KeepTLSSessions: the tls.Config has WrapSession or UnwrapSession hooks of its own")
	}
	cfg.WrapSession, cfg.UnwrapSession = r.wrap, r.unwrap
	r.cfgs = append(r.cfgs, cfg)
	first := !r.used
	r.used = true
	r.refreshLocked(r.now(), true)
	r.mu.Unlock()
	if first && r.changed != nil {
		r.changed()
	}
	return nil
}

// wipeKeys zeroes a copy of keys.
func wipeKeys(keys []ticketKey) {
	for i := range keys {
		clear(keys[i].key[:])
	}
}

// encodeKeys encodes keys for a memfd: keysMagic, then each key as its creation
// time (Unix nanoseconds, big-endian int64) and its 32 bytes, then the SHA-256 of
// all that. The caller zeroes the result once it is sent.
func encodeKeys(keys []ticketKey) []byte {
	b := make([]byte, 0, len(keysMagic)+40*len(keys)+sha256.Size)
	b = append(b, keysMagic...)
	for _, k := range keys {
		b = binary.BigEndian.AppendUint64(b, uint64(k.created.UnixNano()))
		b = append(b, k.key[:]...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// decodeKeys decodes what encodeKeys made; any damage is an error.
func decodeKeys(b []byte) ([]ticketKey, error) {
	body := len(b) - len(keysMagic) - sha256.Size
	switch {
	case body < 0 || !bytes.HasPrefix(b, []byte(keysMagic)):
		return nil, errors.New("not a key set (bad header)")
	case body%40 != 0:
		return nil, fmt.Errorf("truncated key set (%d bytes)", len(b))
	case body == 0:
		return nil, errors.New("empty key set")
	case body/40 > maxTicketKeys:
		return nil, fmt.Errorf("%d keys, more than %d", body/40, maxTicketKeys)
	}
	if sum := sha256.Sum256(b[:len(b)-sha256.Size]); !bytes.Equal(sum[:], b[len(b)-sha256.Size:]) {
		return nil, errors.New("checksum mismatch (the key set is corrupt)")
	}
	var keys []ticketKey
	for p := b[len(keysMagic) : len(b)-sha256.Size]; len(p) > 0; p = p[40:] {
		var k ticketKey
		ns := int64(binary.BigEndian.Uint64(p))
		if ns <= 0 {
			return nil, errors.New("a key without a creation time")
		}
		k.created = time.Unix(0, ns)
		copy(k.key[:], p[8:40])
		keys = append(keys, k)
	}
	return keys, nil
}

// loadKeyFile reads the operator's key file (see Config.TicketKeyFile). The keys
// are stamped with the time they are read, in file order (the first encrypts).
func loadKeyFile(path string) ([]ticketKey, error) {
	f, err := openKeyFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	defer clear(b)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var keys []ticketKey
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var k ticketKey
		if len(line) != 64 {
			return nil, fmt.Errorf("%s, line %d: a key is 64 hex digits (32 bytes; openssl rand -hex 32), this line has %d characters", path, i+1, len(line))
		}
		if _, err := hex.Decode(k.key[:], []byte(line)); err != nil {
			return nil, fmt.Errorf("%s, line %d: not hex digits", path, i+1)
		}
		// Every key has a distinct time, in file order: the first is the newest.
		k.created = now.Add(-time.Duration(len(keys)) * time.Nanosecond)
		keys = append(keys, k)
	}
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("%s holds no key (one per line, 64 hex digits)", path)
	case len(keys) > maxTicketKeys:
		return nil, fmt.Errorf("%s holds %d keys; at most %d", path, len(keys), maxTicketKeys)
	}
	return keys, nil
}

// openKeyFile opens the key file for reading and checks the file it opened (fstat
// of the descriptor: what is checked is what is read, with no race between a check
// of the path and the open): a regular file, which others cannot read and its group
// cannot write, owned by this process's user or root. It never blocks: the open does
// not wait for a writer (O_NONBLOCK, where the system has it), so a FIFO at the path
// is refused at once instead of holding up the start for ever. A symlink is
// followed, as for any file the process opens (Kubernetes mounts secrets through
// symlinks): the checks apply to the file it leads to.
func openKeyFile(path string) (*os.File, error) {
	f, err := openNonBlocking(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil {
		err = checkKeyFile(path, st)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkKeyFile checks what openKeyFile opened; st is its status.
func checkKeyFile(path string, st os.FileInfo) error {
	switch mode := st.Mode(); {
	case !mode.IsRegular():
		return fmt.Errorf("%s is %s, not a regular file; the keys must be in one: install -m 600 /dev/null FILE, write the keys into it, and name FILE instead", path, fileKind(mode))
	case mode.Perm()&0o027 != 0:
		return fmt.Errorf("%s has mode %04o: others may read it or its group may write it; it holds secrets: chmod 600 %s", path, mode.Perm(), path)
	case st.Size() > maxKeyFile:
		return fmt.Errorf("%s is %d bytes long; a key file has at most %d keys", path, st.Size(), maxTicketKeys)
	}
	return checkKeyFileOwner(path, st)
}

// fileKind names the type of a file that is not a regular file, for errors.
func fileKind(mode os.FileMode) string {
	switch {
	case mode&os.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case mode.IsDir():
		return "a directory"
	case mode&os.ModeSocket != 0:
		return "a socket"
	case mode&os.ModeDevice != 0:
		return "a device"
	}
	return fmt.Sprintf("a file of type %v", mode.Type())
}

// KeepTLSSessions makes the TLS sessions of cfg resumable across upgrades: it
// installs the line's session-ticket keys on cfg (its WrapSession and UnwrapSession
// hooks) and keeps them rotated (see Config.TicketKeyRotation), so that a client
// holding a ticket from any generation of the line resumes its session with the
// current one instead of a full handshake. Call it before serving with cfg; any
// Clone of cfg made afterwards shares the keys (quic-go and gRPC's credentials clone
// the Config they are given). A Server's ServeTLS and ListenAndServeTLS do this
// themselves; call it for a Config of your own (gRPC, a raw TLS protocol, QUIC).
//
// It fails if cfg is nil, has session tickets disabled, or has WrapSession or
// UnwrapSession hooks of its own. A Config that GetConfigForClient returns must be
// a Clone of cfg, or be passed to KeepTLSSessions too.
func (u *Upgrader) KeepTLSSessions(cfg *tls.Config) error {
	return u.ext.keys.install(cfg, true)
}
