package handoverquic

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/seed-a7250cfa/handover/graceful"
	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The line between processes: graceful runs it as a carrier (internal/carry),
// registered when this package is imported.
//
//   - The initial batch of a new generation (graceful's own upgrades): "quic-line"
//     with a sealed memfd of the line's keys and the generations of the inboxes
//     that follow it in the message: every live generation's, this one's included.
//   - The fd store (systemd's with graceful.Config.FDStore, a `handover run`
//     master's): the same, under FDNAME=handover-quic, replaced whenever the set
//     of live generations changes. Under a master, which starts every generation
//     itself, it is how a new generation learns the keys and the older
//     generations; after a restart, how the keys outlive the processes.
//   - The process's role: handed over or stopping, the Socket hands the shared
//     socket to the generation that asked for it and drains until the deadline
//     (the process does not finish before the Socket has); serving again after
//     handing over (a resume), it reads the socket again; finishing, it ends now.
//
// When a generation reads the shared socket is settled between the generations,
// through their inboxes (takeover_linux.go): the same under graceful's upgrades
// and under a master.

// lineName names the memfd and the fd store entry.
const lineName = "handover-quic"

// lineMagic starts an encoded line (see encodeLine).
const lineMagic = "handover-quic-line/1\n"

// maxInboxes bounds the inboxes that travel (the handover channel carries at most
// 8 descriptors in one message, the memfd among them).
const maxInboxes = 7

var theCarrier = &lineCarrier{ev: make(chan event, 8)}

func init() { carry.Register(theCarrier) }

// lineCarrier is the process's place in its line: the lineage of its Socket.
type lineCarrier struct {
	ev chan event

	mu       sync.Mutex
	h        carry.Host
	log      *slog.Logger
	reset    quic.StatelessResetKey
	token    quic.TokenGeneratorKey
	haveKeys bool
	olds     []inbox // from the initial batch or the fd store
	passed   []inbox // copies of what the Socket passes on
	sock     *Socket
	handed   bool          // handed over or stopping: the Socket drains
	resumed  chan struct{} // closed when it takes the socket back
	current  bool          // the process serves as the current generation
}

func (c *lineCarrier) Take(m handoff.Message, at carry.Phase) bool {
	if m.Verb != handoff.QUICLine {
		return false
	}
	if at != carry.Initial || len(m.Files) == 0 {
		closeAll(m.Files)
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.adopt(m.Files, "parent")
	return true
}

// adopt reads an encoded line and its inboxes (files: the memfd first); c.mu is
// held.
func (c *lineCarrier) adopt(files []*os.File, from string) {
	b, err := handoff.ReadSealed(files[0], 1<<10)
	files[0].Close()
	var gens []uint64
	if err == nil {
		gens, err = c.decodeLine(b)
	}
	clear(b)
	if err != nil || len(gens) != len(files)-1 {
		closeAll(files[1:])
		if c.log != nil {
			c.log.Warn("the QUIC line's keys cannot be read; ignored", "event", "quic_line_lost", "from", from, "err", err)
		}
		return
	}
	c.haveKeys = true
	closeInboxes(c.olds)
	c.olds = nil
	for i, g := range gens {
		c.olds = append(c.olds, inbox{gen: g, send: files[i+1]})
	}
}

// Start loads the line: the parent's, else the fd store's, else a new one.
func (c *lineCarrier) Start(h carry.Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.h, c.log = h, h.Logger()
	stored := h.Inherited(lineName)
	switch {
	case c.haveKeys:
		closeAll(stored)
	case len(stored) > 0:
		c.adopt(stored, "store")
	}
	if !c.haveKeys {
		if _, err := rand.Read(c.reset[:]); err != nil {
			return err
		}
		if _, err := rand.Read(c.token[:]); err != nil {
			return err
		}
		c.haveKeys = true
	}
	return nil
}

// Batch: the line, for a new generation.
func (c *lineCarrier) Batch() []handoff.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	ins := c.passed
	if c.sock == nil {
		ins = c.olds // this process serves no QUIC: the line goes on past it
	}
	files, err := c.encodeFiles(ins)
	if err != nil {
		c.log.Warn("could not pass the QUIC line on", "event", "quic_line_failed", "err", err)
		return nil
	}
	return []handoff.Message{{Verb: handoff.QUICLine, Files: files}}
}

// encodeFiles makes the memfd of the line and copies of ins's send ends; c.mu is
// held.
func (c *lineCarrier) encodeFiles(all []inbox) ([]*os.File, error) {
	var ins []inbox
	for _, in := range all {
		if inboxAlive(in.send) {
			ins = append(ins, in)
		}
	}
	if len(ins) > maxInboxes {
		ins = ins[len(ins)-maxInboxes:]
	}
	b := c.encodeLine(ins)
	defer clear(b)
	f, err := handoff.SealedFile(lineName, b)
	if err != nil {
		return nil, err
	}
	files := []*os.File{f}
	for _, in := range ins {
		d, err := handoff.DupFile(in.send, "quic-inbox-send")
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, d)
	}
	return files, nil
}

// encodeLine encodes the keys and the generations of ins: lineMagic, the
// stateless-reset key, the token key, the count of generations (1 byte) and each
// (8 bytes, big-endian).
func (c *lineCarrier) encodeLine(ins []inbox) []byte {
	b := append([]byte(lineMagic), c.reset[:]...)
	b = append(b, c.token[:]...)
	b = append(b, byte(len(ins)))
	for _, in := range ins {
		b = binary.BigEndian.AppendUint64(b, in.gen)
	}
	return b
}

// decodeLine decodes what encodeLine made into c's keys.
func (c *lineCarrier) decodeLine(b []byte) ([]uint64, error) {
	n := len(lineMagic) + 64 + 1
	if len(b) < n || !bytes.HasPrefix(b, []byte(lineMagic)) {
		return nil, errors.New("not a QUIC line (bad header)")
	}
	count := int(b[n-1])
	if len(b) != n+8*count {
		return nil, fmt.Errorf("a QUIC line of %d bytes for %d generations", len(b), count)
	}
	copy(c.reset[:], b[len(lineMagic):])
	copy(c.token[:], b[len(lineMagic)+32:])
	gens := make([]uint64, count)
	for i := range gens {
		gens[i] = binary.BigEndian.Uint64(b[n+8*i:])
	}
	return gens, nil
}

func (c *lineCarrier) Turn(t carry.Turn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current = t.Role == carry.Serving
	if c.sock == nil {
		return
	}
	switch t.Role {
	case carry.Serving:
		if c.handed {
			c.handed = false
			close(c.resumed)
			c.send(event{kind: evServe})
		}
		c.storeLocked()
	case carry.HandedOver, carry.Stopping:
		if c.handed {
			return // a stop while draining: the drain goes on
		}
		c.handed = true
		c.resumed = make(chan struct{})
		c.send(event{kind: evHandedOver, deadline: t.Deadline})
		done, resumed := c.sock.Done(), c.resumed
		c.h.Go(func() {
			select {
			case <-done:
			case <-resumed:
			}
		})
	case carry.Finishing:
		c.send(event{kind: evFinish})
	}
}

// send delivers ev to the Socket, unless it has finished; c.mu is held.
func (c *lineCarrier) send(ev event) {
	select {
	case c.ev <- ev:
	case <-c.sock.Done():
	}
}

// storeLocked replaces the line in the fd store, beside the caller; c.mu is held.
func (c *lineCarrier) storeLocked() {
	store := c.h.Store()
	if store == nil {
		return
	}
	files, err := c.encodeFiles(c.passed)
	if err != nil {
		c.log.Warn("fd store: could not make the QUIC line", "event", "fdstore_failed", "name", lineName, "err", err)
		return
	}
	c.h.Go(func() {
		defer closeAll(files)
		if err := store.Put(lineName, files...); err != nil {
			c.log.Warn("fd store: the QUIC line was refused", "event", "fdstore_failed", "name", lineName, "err", err)
		}
	})
}

// The lineage.

func (c *lineCarrier) generation() uint64 { return uint64(c.h.Generation()) }

func (c *lineCarrier) keys() (quic.StatelessResetKey, quic.TokenGeneratorKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reset, c.token
}

func (c *lineCarrier) older() []inbox {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.olds
}

func (c *lineCarrier) pass(ins []inbox) {
	cp := make([]inbox, 0, len(ins))
	for _, in := range ins {
		d, err := handoff.DupFile(in.send, "quic-inbox-send")
		if err != nil {
			continue
		}
		cp = append(cp, inbox{gen: in.gen, send: d})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	closeInboxes(c.passed)
	c.passed = cp
	if c.sock != nil || c.h.UnderMaster() {
		// Under a master, stored at once (held until this generation is ready):
		// the next generation learns of this one from there.
		c.storeLocked()
	}
}

func (c *lineCarrier) events() <-chan event { return c.ev }

func (c *lineCarrier) drained() {}

// Listen returns the process's share of the UDP socket name (bound to network and
// address, or inherited: see graceful.Upgrader.ListenPacket) for QUIC: a Socket
// that serves HTTP/3 (ServeHTTP3) or raw QUIC (Listen, ListenEarly, Transport),
// whose connections stay with this generation across upgrades and drain with u.
// Call it before u.Ready (before serving), once per process.
//
// While this process is the current generation it reads the socket. When a new
// generation takes over (SIGUSR2, Upgrade, `handover reload`, a `handover run`
// master's upgrade), or the process stops, the Socket drains: see the package
// documentation for what happens to each connection. The process does not finish
// (u.Wait does not return) before the Socket has. If the new generation dies
// while this one drains and u resumes, the Socket reads the socket again.
func Listen(u *graceful.Upgrader, name, network, address string) (*Socket, error) {
	c := theCarrier
	c.mu.Lock()
	switch {
	case c.h == nil:
		c.mu.Unlock()
		return nil, errors.New("handoverquic: Listen: the Upgrader did not start the QUIC line (was it made before this package was imported?)")
	case c.sock != nil:
		c.mu.Unlock()
		return nil, errors.New("handoverquic: Listen: this process has a Socket already (one per process)")
	}
	c.mu.Unlock()
	pc, err := u.ListenPacket(name, network, address)
	if err != nil {
		return nil, err
	}
	udp, ok := pc.(*net.UDPConn)
	if !ok {
		return nil, fmt.Errorf("handoverquic: Listen: %s %s is a %T, not a UDP socket", network, address, pc)
	}
	f, err := handoff.DupFile(udp, name)
	if err != nil {
		return nil, fmt.Errorf("handoverquic: Listen: %w", err)
	}
	own, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoverquic: Listen: %w", err)
	}
	c.h.TakesBack(pc)
	s, err := newSocket(c, own.(*net.UDPConn), c.h.Logger())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sock = s
	closeInboxes(c.olds) // the Socket holds its own
	c.olds = nil
	if c.current {
		c.storeLocked()
	}
	return s, nil
}
