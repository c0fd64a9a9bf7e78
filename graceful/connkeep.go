package graceful

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Connections kept in systemd's fd store all along (Config.FDStoreConns), so that a
// crash (kill -9, a panic, the OOM killer) leaves the idle ones to the restarted
// process. What a crash can keep: a connection between two requests, nothing of the
// next one read (its bytes wait in the socket); not one whose process died while it
// read or answered a request (that request is lost with the process: the restarted
// process closes the connection, and the client sees it close unanswered).
//
//   - Each connection that may be handed over is stored when it is accepted (or
//     received), FDSTORE=1 under a name of its own (connPrefix + "<slot>.<tag>/" +
//     its socket), and removed when it is closed (FDSTOREREMOVE=1), after a
//     shutdown(2): the store's copy would keep it open, and the client would never
//     see it close. systemd also drops a stored socket that hangs up.
//   - Whether it is idle is a word in a table that every generation shares: a memfd
//     mapped by each (shared memory), itself in the fd store (FDNAME=handover-conns)
//     and in each new generation's initial batch. A slot holds the connection's tag
//     and its state. It says idle from the start of a Read at a safe point until the
//     socket has a byte to read, which is only then read (idleRead): a process that
//     dies at any instant leaves idle only connections none of whose bytes it read.
//   - After a restart, the new process (Start) serves the stored connections whose
//     slot says idle, and closes the others.
//
// Cost: two notifications to systemd per connection (one when it is accepted, one
// when it closes), none per request; per request, two writes to shared memory and a
// recv(MSG_PEEK) while idle. FileDescriptorStoreMax= must leave room for every open
// connection: systemd refuses (and logs) what does not fit, and a connection it
// refused is not kept.

// keptName names the table in the fd store and the initial batch.
const keptName = "handover-conns"

// Connection states in the table.
const (
	keptBusy uint64 = 1
	keptIdle uint64 = 2
)

// keptConns is this process's part in keeping connections in the fd store.
type keptConns struct {
	c *connCarrier
	n notifier
	q notifyQueue // FDSTORE and FDSTOREREMOVE of connections, in order

	mu      sync.Mutex
	table   *connTable
	stored  bool // the table is in the fd store
	main    bool // systemd takes this process's notifications
	pending []*keptConn
	tags    atomic.Uint64
	full    bool // the table was found full (logged once)
}

// keptConn is a connection's entry in the store.
type keptConn struct {
	k      *keptConns
	slot   int
	tag    uint64
	name   string
	stored atomic.Bool
	nc     net.Conn
	once   sync.Once
}

func newKeptConns(c *connCarrier, n notifier) *keptConns {
	k := &keptConns{c: c, n: n, q: notifyQueue{n: n}}
	k.tags.Store(randomTag())
	return k
}

// key is the connection's fd store name, "" if it is not kept (k nil).
func (k *keptConn) key() string {
	if k == nil {
		return ""
	}
	return k.name
}

// takeTable takes the table from the initial batch.
func (c *connCarrier) takeTable(files []*os.File) {
	if len(files) == 0 {
		return
	}
	closeFiles(files[1:])
	c.mu.Lock()
	if c.tableIn != nil {
		c.tableIn.Close()
	}
	c.tableIn = files[0]
	c.mu.Unlock()
}

// randomTag starts a process's tags at a random point: tags stay unique across the
// generations that share the table.
func randomTag() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) >> 3
}

// start maps the table: the previous generation's, the fd store's, or a new one.
func (k *keptConns) start(h carry.Host, in *os.File) {
	stored := h.Inherited(keptName)
	var err error
	for _, f := range append([]*os.File{in}, stored...) {
		if f == nil {
			continue
		}
		if k.table == nil {
			if k.table, err = mapTable(f); err == nil {
				k.stored = true
			} else {
				k.c.log.Warn("the table of the connections in the fd store cannot be used", "event", "conns_lost", "reason", "table", "err", err)
			}
		}
		f.Close()
	}
	if k.table == nil {
		if k.table, err = newTable(); err != nil {
			k.c.log.Warn("cannot keep connections in the fd store", "event", "fdstore_failed", "name", keptName, "err", err)
		}
	}
}

// turn follows the process's role: its notifications count while it is main.
func (k *keptConns) turn(t carry.Turn) {
	k.mu.Lock()
	k.main = t.Main && t.Role != carry.HandedOver
	var store []*keptConn
	if k.main {
		store, k.pending = k.pending, nil
	}
	storeTable := k.main && !k.stored && k.table != nil
	k.stored = k.stored || storeTable
	k.mu.Unlock()
	if storeTable {
		if err := k.n.Send("FDSTORE=1\nFDPOLL=0\nFDNAME="+keptName, k.table.fd()); err != nil {
			k.c.log.Warn("fd store: the table of connections was refused", "event", "fdstore_failed", "name", keptName, "err", err)
		}
	}
	for _, kc := range store {
		kc.store()
	}
}

func (k *keptConns) isMain() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.main
}

// batch is the table, for the new generation's initial batch.
func (k *keptConns) batch() []handoff.Message {
	if k.table == nil {
		return nil
	}
	f, err := k.table.dup()
	if err != nil {
		return nil
	}
	return []handoff.Message{{Verb: handoff.ConnTable, Files: []*os.File{f}}}
}

// track keeps tc in the store: a connection accepted (key ""), or one received
// under its name key.
func (k *keptConns) track(tc *conn, key string) {
	if k.table == nil {
		return
	}
	kc := &keptConn{k: k, nc: tc.Conn}
	if key != "" {
		if slot, tag, ok := slotOf(key); ok && k.table.get(slot)>>2 == tag {
			kc.slot, kc.tag, kc.name = slot, tag, key
			kc.stored.Store(true)
			tc.kept = kc
		}
		return
	}
	kc.tag = k.tags.Add(1) & (1<<62 - 1)
	slot, ok := k.table.alloc(kc.tag<<2 | keptBusy)
	if !ok {
		k.mu.Lock()
		full := k.full
		k.full = true
		k.mu.Unlock()
		if !full {
			k.c.log.Warn("the table of connections in the fd store is full: new connections are not kept", "event", "fdstore_failed", "name", keptName, "slots", k.table.slots())
		}
		return
	}
	kc.slot = slot
	name, err := storeName(strconv.Itoa(slot)+"."+strconv.FormatUint(kc.tag, 16), tc.ln.in.origin)
	if err != nil {
		k.table.free(slot, kc.tag)
		return
	}
	kc.name = name
	tc.kept = kc
	k.mu.Lock()
	main := k.main
	if !main {
		k.pending = append(k.pending, kc)
	}
	k.mu.Unlock()
	if main {
		kc.store()
	}
}

// store sends the connection to the fd store (beside the caller: the queue).
func (kc *keptConn) store() {
	f, err := dupConn(kc.nc)
	if err != nil {
		return
	}
	kc.stored.Store(true)
	kc.k.q.push("FDSTORE=1\nFDNAME="+kc.name, f)
}

// idleRead reads b at a safe point (see conn.readAt): the table says idle until the
// socket has a byte, then busy, and only then is it read. A hand-off that stops the
// wait leaves it idle: nothing was read.
func (kc *keptConn) idleRead(c *conn, b []byte) (int, error) {
	t := kc.k.table
	t.set(kc.slot, kc.tag, keptIdle)
	if err := waitReadable(c.Conn); err != nil {
		return 0, err
	}
	c.p.mu.Lock()
	taking := c.p.taking
	if !taking {
		c.waiting.Store(false) // no hand-off starts now: the socket is about to be read
	}
	c.p.mu.Unlock()
	if taking {
		return 0, os.ErrDeadlineExceeded
	}
	t.set(kc.slot, kc.tag, keptBusy)
	return c.read(b)
}

// release ends the connection's stay in the store as it is closed here.
func (kc *keptConn) release(*conn) {
	kc.once.Do(func() {
		kc.k.table.free(kc.slot, kc.tag)
		shutdownConn(kc.nc)
		if kc.stored.Load() && kc.k.isMain() {
			kc.k.q.push("FDSTOREREMOVE=1\nFDNAME="+kc.name, nil)
		}
	})
}

// dropKey ends the stay in the store of a connection received under its name key,
// which is closed before it was served.
func (k *keptConns) dropKey(nc net.Conn, key string) {
	if slot, tag, ok := slotOf(key); ok && k.table != nil {
		k.table.free(slot, tag)
	}
	shutdownConn(nc)
	if k.isMain() {
		k.q.push("FDSTOREREMOVE=1\nFDNAME="+key, nil)
	}
}

// adoptStored reports whether the connection stored under name (its key part key)
// was idle when its process ended: it is served, and stays in the store.
func (k *keptConns) adoptStored(key, name string) bool {
	slot, tag, ok := slotOf(connPrefix + key + "/")
	return ok && k.table != nil && k.table.get(slot) == tag<<2|keptIdle
}

// isSlotKey reports whether key is the key of a connection kept all along (not one
// stored as its process stopped).
func (k *keptConns) isSlotKey(key string) bool {
	_, _, ok := slotOf(connPrefix + key + "/")
	return ok
}

// slotOf parses the slot and tag of a kept connection's name.
func slotOf(name string) (slot int, tag uint64, ok bool) {
	rest, _ := strings.CutPrefix(name, connPrefix)
	key, _, _ := strings.Cut(rest, "/")
	s, t, found := strings.Cut(key, ".")
	if !found {
		return 0, 0, false
	}
	slot, err1 := strconv.Atoi(s)
	tag, err2 := strconv.ParseUint(t, 16, 64)
	return slot, tag, err1 == nil && err2 == nil && slot >= 0 && tag != 0
}

// connTableMagic starts the table.
const connTableMagic = "handover-conns/1"

// connTableSlots is how many connections the table keeps at once.
const connTableSlots = 16384

// connTableSize is the table's size: a 64-byte header, then a word per slot.
const connTableSize = 64 + 8*connTableSlots

// errTable: a memfd that is not a table of connections.
var errTable = fmt.Errorf("not a table of connections (%s)", connTableMagic)

// notifyQueue sends notifications to the service manager in order, beside the
// caller (an Accept, a Close), each again while the manager's queue is full.
type notifyQueue struct {
	n       notifier
	mu      sync.Mutex
	items   []queued
	running bool
}

type queued struct {
	state string
	f     *os.File // sent with it, then closed; may be nil
}

// push queues state (with f, which the queue owns).
func (q *notifyQueue) push(state string, f *os.File) {
	q.mu.Lock()
	q.items = append(q.items, queued{state, f})
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if start {
		go q.run()
	}
}

func (q *notifyQueue) run() {
	for {
		q.mu.Lock()
		if len(q.items) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		it := q.items[0]
		q.items = q.items[1:]
		q.mu.Unlock()
		if it.f != nil {
			notifyRetry(q.n, it.state, int(it.f.Fd()))
			it.f.Close()
		} else {
			notifyRetry(q.n, it.state)
		}
	}
}
