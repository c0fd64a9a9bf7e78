package graceful

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Idle connections as a carrier (the drain's side is in connpass.go):
//
//   - Once this process has handed over, each drain of a Server (or of a Drainer
//     with HandOverIdle) sends its successor the connections that wait at a safe
//     point: "conns" messages, of one listener each, at most connBatch descriptors
//     each, from the handover until the drain ends (the successor's channel stays
//     open for as long).
//   - In the successor (Take, Final), each connection goes to the Server or Drainer
//     that serves the same socket (by name, else by address): its Accept returns it,
//     and net/http reads its next request. One for a socket no Server serves yet
//     waits (parked) until one does, at most parkWait once the process is ready;
//     one for a socket the process does not hold, or whose server takes none in
//     (TLS, a Drainer without HandOverIdle, handing over turned off), is closed.
//     One that comes while that server drains goes on to this process's own
//     successor, or is closed.
//   - As the main process of a systemd service with Config.FDStore stops
//     (`systemctl restart`, `systemctl stop`), its drain hands its idle connections
//     to the fd store (FDNAME=handover-conn/<id>/<socket>, BARRIER=1 before they
//     are let go). The next start takes them out (Start), removes them from the
//     store, and serves them as a successor does.
//   - With Config.FDStoreConns, the connections are kept in the fd store all along,
//     so that a crash leaves the idle ones to the restarted process (connkeep.go).
//   - Under a `handover run` master, a child the master stops hands them to the new
//     child that reached it on its link (masterlink.go), as to a successor.
//
// A connection is handed over at once, not after a probation of the successor:
// held back, it would be served by this generation meanwhile. But this process lets
// its own copy go only once the successor says it has the socket ("conns-taken",
// sent as it receives a "conns" message, before it serves any): until then the
// socket may be in the channel's queue, where a successor's death would close it
// with the request its client sent meanwhile. So a connection sent stays here,
// unread (stopped at its safe point, see conn.take), until then; if the successor
// dies or its channel ends first, this process serves it again, the client's next
// request included (held, peerTook, peerGone). Once the successor has taken a
// connection, it dies with it: the kernel closes it, as for any crashed server (an
// idle one sees the connection close, as when a keep-alive connection times out;
// one with a request in flight, or sent before the client saw the close, gets a
// reset or no answer).

// connPrefix starts the fd store names of connections.
const connPrefix = "handover-conn/"

// parkWait bounds how long, once the process is ready, a connection handed over for
// a socket no Server serves yet waits for one.
const parkWait = 5 * time.Second

// errNoDest: a drain hands a connection over, but nothing takes it now.
var errNoDest = errors.New("graceful: no successor or fd store to hand connections to")

// connCarrier hands idle connections on.
type connCarrier struct {
	log *slog.Logger
	set *fds.Set
	h   carry.Host

	mu       sync.Mutex
	role     carry.Role
	main     bool
	peer     carry.Peer    // the successor, once handed over; nil once a send failed
	settled  chan struct{} // closed when the role is not Upgrading
	serving  []*listener   // the listeners that take connections in
	parked   []arrival
	ready    bool       // serving (or stopping) at least once: parked ones are timed
	unparked bool       // parkWait has passed since: none is parked any more
	store    notifier   // systemd's fd store (Config.FDStore, not under a master)
	keep     *keptConns // the connections kept in the fd store (Config.FDStoreConns)
	tableIn  *os.File   // their table, from the initial batch, until Start
	held     []heldBatch
	batches  uint64 // the batches held so far: each one's id

	// sendMu orders the "conns" messages as held does: the successor's answers
	// come in that order.
	sendMu sync.Mutex
}

// heldBatch is a "conns" message sent to a successor that has not said yet that it
// has the sockets: this process keeps its own copies meanwhile.
type heldBatch struct {
	id       uint64
	peer     carry.Peer
	conns    []*conn   // a drain's, stopped at their safe point (conn.take)
	arrivals []arrival // received from the previous generation, passed on
}

// arrival is a connection handed over, on its way to an Accept.
type arrival struct {
	origin connOrigin
	nc     net.Conn
	key    string // its fd store name, if it is kept there
}

func newConnCarrier(log *slog.Logger, set *fds.Set) *connCarrier {
	settled := make(chan struct{})
	close(settled)
	return &connCarrier{log: log, set: set, settled: settled}
}

// useStore makes the carrier hand connections to systemd's fd store n as the
// process stops (and keep them there all along, with keep).
func (c *connCarrier) useStore(n notifier, keep bool) {
	c.store = n
	if keep && n != nil {
		c.keep = newKeptConns(c, n)
	}
}

// serve makes d's listener tl (around raw, the listener d serves) take in the
// connections a previous generation hands over, and makes d hand its own over, of
// kind: if raw is a socket of the process's set, and it can be interrupted without
// being closed.
func (c *connCarrier) serve(d *Drainer, tl *listener, raw net.Listener, kind passKind) {
	origin, ok := c.originOf(raw)
	if _, dl := raw.(deadliner); ok && dl {
		c.attach(d, tl, origin, kind)
	}
}

// attach makes tl, a listener of d on the socket origin, take connections in, and d
// hand its own over, of kind.
func (c *connCarrier) attach(d *Drainer, tl *listener, origin connOrigin, kind passKind) {
	d.mu.Lock()
	d.pass.Store(c)
	tl.in.kind, tl.in.origin = kind, origin
	d.mu.Unlock()
	c.mu.Lock()
	c.serving = append(c.serving, tl)
	var now []arrival
	c.parked = slices.DeleteFunc(c.parked, func(a arrival) bool {
		if c.matches(tl, a.origin) {
			now = append(now, a)
			return true
		}
		return false
	})
	c.mu.Unlock()
	for _, a := range now {
		c.deliver(a)
	}
}

// originOf names raw among the sockets of the process, false if it is none of them.
func (c *connCarrier) originOf(raw net.Listener) (connOrigin, bool) {
	a := raw.Addr()
	for _, h := range c.set.Held() {
		if !h.Packet && h.Addr != nil && h.Addr.Network() == a.Network() && h.Addr.String() == a.String() {
			return connOrigin{Name: h.Name, Network: a.Network(), Addr: a.String()}, true
		}
	}
	return connOrigin{}, false
}

// matches reports whether the listener tl serves the socket o names: by name when
// both have one, else by address.
func (c *connCarrier) matches(tl *listener, o connOrigin) bool {
	s := tl.in.origin
	if o.Name != "" && s.Name != "" {
		return o.Name == s.Name
	}
	return o.Network == s.Network && o.Addr == s.Addr
}

// holds reports whether the process holds the socket o names.
func (c *connCarrier) holds(o connOrigin) bool {
	if c.set == nil {
		return false
	}
	for _, h := range c.set.Held() {
		if h.Packet || h.Addr == nil {
			continue
		}
		if o.Name != "" && h.Name != "" {
			if o.Name == h.Name {
				return true
			}
		} else if o.Network == h.Addr.Network() && o.Addr == h.Addr.String() {
			return true
		}
	}
	return false
}

func (c *connCarrier) Take(m handoff.Message, at carry.Phase) bool {
	switch m.Verb {
	case handoff.Conns:
		c.receive(m)
	case handoff.ConnTable:
		c.takeTable(m.Files)
	default:
		return false
	}
	return true
}

// receive takes the connections of a "conns" message.
func (c *connCarrier) receive(m handoff.Message) {
	var o connOrigin
	if err := json.Unmarshal([]byte(m.Text), &o); err != nil {
		closeFiles(m.Files)
		c.log.Warn("connections handed over cannot be read; closed", "event", "conns_lost", "reason", "corrupt", "count", len(m.Files), "err", err)
		return
	}
	keys := o.Keys
	o.Keys = nil
	for i, f := range m.Files {
		key := ""
		if i < len(keys) {
			key = keys[i]
		}
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			c.log.Warn("a connection handed over cannot be used; closed", "event", "conns_lost", "reason", "descriptor", "err", err)
			continue
		}
		c.deliver(arrival{origin: o, nc: nc, key: key})
	}
}

// deliver gives a to the listener that serves its socket, parks it until one does,
// or closes it.
func (c *connCarrier) deliver(a arrival) {
	c.mu.Lock()
	var to *listener
	for _, tl := range c.serving {
		if c.matches(tl, a.origin) {
			to = tl
			break
		}
	}
	if to == nil && (!c.ready || c.holds(a.origin) && !c.unparked) {
		// Not ready yet (the fd store's, at the start), or no Server serves the
		// socket yet: it waits for one.
		c.parked = append(c.parked, a)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	switch {
	case to == nil:
		c.drop(a, "no_server")
	case to.receive(a):
	default:
		c.forward(to, []arrival{a})
	}
}

// drop closes a connection that nothing here serves.
func (c *connCarrier) drop(a arrival, reason string) {
	c.closeArrival(a)
	c.log.Warn("a connection handed over was closed: nothing serves its socket here", "event", "conn_dropped", "reason", reason, "listener", a.origin.Name, "addr", a.origin.Addr)
}

// closeArrival closes a connection received but not served (leaving the fd store,
// if it is kept there).
func (c *connCarrier) closeArrival(a arrival) {
	if a.key != "" && c.keep != nil {
		c.keep.dropKey(a.nc, a.key)
	}
	a.nc.Close()
}

// forward hands on, to this process's successor, connections ln received but can
// no longer serve (it stopped accepting), or closes them.
func (c *connCarrier) forward(ln *listener, as []arrival) {
	o := ln.in.origin
	c.h.Go(func() {
		peer := c.settle()
		for len(as) > 0 {
			batch := as[:min(len(as), connBatch)]
			as = as[len(batch):]
			if peer == nil {
				for _, a := range batch {
					c.drop(a, "stopping")
				}
				continue
			}
			c.forwardBatch(peer, o, batch)
		}
	})
}

// settle waits until the process's role is not Upgrading (a drain starts just before
// the carriers hear of the handover), at most sendTimeout, and returns the successor
// if this process handed over: while it drains, and after its own drain ended
// (Finishing, Drained), when an older generation still draining may hand it
// connections that go on to the successor.
func (c *connCarrier) settle() carry.Peer {
	c.mu.Lock()
	settled := c.settled
	c.mu.Unlock()
	t := time.NewTimer(sendTimeout)
	defer t.Stop()
	select {
	case <-settled:
	case <-t.C:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.role {
	case carry.HandedOver, carry.Finishing, carry.Drained:
		return c.peer // nil after a stop: Turn clears it on Stopping
	}
	return nil
}

func (c *connCarrier) forwardBatch(peer carry.Peer, o connOrigin, as []arrival) {
	var files []*os.File
	var sent []arrival
	for _, a := range as {
		f, err := dupConn(a.nc)
		if err != nil {
			c.drop(a, "descriptor")
			continue
		}
		o.Keys = append(o.Keys, a.key)
		files, sent = append(files, f), append(sent, a)
	}
	text, _ := json.Marshal(o)
	err := c.sendHeld(peer, heldBatch{peer: peer, arrivals: sent}, handoff.Message{Verb: handoff.Conns, Text: string(text), Files: files})
	closeFiles(files)
	if err != nil && !errors.Is(err, errReleased) {
		for _, a := range sent {
			c.drop(a, "successor")
		}
	}
}

// sendHeld sends m, the "conns" message of b, to peer, and holds b until peer says
// it has the sockets (peerTook) or is gone (peerGone); not if the send fails: then
// the caller has b back, unless peerGone released it while the send failed (the
// peer went away meanwhile), which the error says (errReleased).
func (c *connCarrier) sendHeld(peer carry.Peer, b heldBatch, m handoff.Message) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	c.batches++
	b.id = c.batches
	c.held = append(c.held, b)
	c.mu.Unlock()
	err := peer.Send(m)
	if err == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.held, func(h heldBatch) bool { return h.id == b.id })
	if i < 0 {
		return fmt.Errorf("%w: %w", errReleased, err)
	}
	c.held = slices.Delete(c.held, i, i+1)
	return err
}

// errReleased is why a "conns" message was not sent whose batch peerGone has
// released already (served here again, or dropped with a word): the caller must
// not release it again.
var errReleased = errors.New("the new generation went away as its connections were sent")

// peerTook: peer has the sockets of the oldest "conns" message it was sent and did
// not answer yet; this process lets its copies go.
func (c *connCarrier) peerTook(peer carry.Peer, n int) {
	c.mu.Lock()
	i := slices.IndexFunc(c.held, func(b heldBatch) bool { return b.peer == peer })
	if i < 0 {
		c.mu.Unlock()
		return
	}
	b := c.held[i]
	c.held = slices.Delete(c.held, i, i+1)
	c.mu.Unlock()
	c.release(b, true)
}

// peerGone: peer exited, or its channel ended; what it did not say it has is this
// process's again.
func (c *connCarrier) peerGone(peer carry.Peer) {
	c.mu.Lock()
	var gone []heldBatch
	c.held = slices.DeleteFunc(c.held, func(b heldBatch) bool {
		if b.peer == peer {
			gone = append(gone, b)
			return true
		}
		return false
	})
	c.mu.Unlock()
	for _, b := range gone {
		c.release(b, false)
	}
	if len(gone) > 0 {
		c.log.Warn("the new generation is gone before it took connections handed to it; served here again", "event", "conns_kept", "batches", len(gone))
	}
}

// release ends the hold of b: taken by the successor (its copies here are closed),
// or not (the drain's connections are served here again; those passed on are
// closed).
func (c *connCarrier) release(b heldBatch, taken bool) {
	for _, tc := range b.conns {
		tc.finish(taken)
		if taken {
			tc.d.handedOver.Add(1)
		}
	}
	for _, a := range b.arrivals {
		if taken {
			a.nc.Close()
		} else {
			c.drop(a, "successor")
		}
	}
}

// expects reports whether a drain starting now hands connections over: this
// process has handed over (or is about to say so), or it stops as the main process
// of a service with Config.FDStore.
func (c *connCarrier) expects() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.role {
	case carry.Upgrading:
		return true
	case carry.HandedOver:
		return c.peer != nil
	case carry.Stopping:
		return c.store != nil && c.main
	}
	return false
}

// send hands conns of ln (taken, with the copies files of their descriptors) to the
// successor or to the fd store, and returns how many of them (the first ones) the
// other side has; an error if not all. held: sent to the successor, they are held
// until it says it has them (sendHeld), and the carrier ends their hand-off then.
func (c *connCarrier) send(ln *listener, conns []*conn, files []*os.File) (n int, held bool, err error) {
	peer := c.settle()
	c.mu.Lock()
	role, main := c.role, c.main
	c.mu.Unlock()
	o := ln.in.origin
	if c.keep != nil {
		for _, tc := range conns {
			o.Keys = append(o.Keys, tc.kept.key())
		}
	}
	switch {
	case peer != nil:
		text, _ := json.Marshal(o)
		err := c.sendHeld(peer, heldBatch{peer: peer, conns: conns}, handoff.Message{Verb: handoff.Conns, Text: string(text), Files: files})
		if err != nil {
			c.mu.Lock()
			if c.peer == peer {
				c.peer = nil
			}
			c.mu.Unlock()
			c.log.Warn("could not hand connections to the new generation; they are drained here", "event", "conns_failed", "to", "successor", "err", err)
			// Released by peerGone already: held, as far as the caller goes.
			return 0, errors.Is(err, errReleased), err
		}
		return 0, true, nil
	case role == carry.Stopping && main && c.store != nil:
		n, err := c.toStore(o, conns, files)
		if err != nil {
			c.log.Warn("could not hand connections to the fd store; they are drained here", "event", "conns_failed", "to", "fdstore", "err", err)
		}
		return n, false, err
	}
	return 0, false, errNoDest
}

// toStore puts connections in systemd's fd store as the process stops, each under a
// name of its own (those kept there already stay), and returns once systemd has
// processed them (BARRIER=1): how many it has, and why not all. A batch is at most
// connBatch connections, so that its notifications and the barrier fit in the queue
// of the notification socket (net.unix.max_dgram_qlen, 10 without systemd-sysctl).
func (c *connCarrier) toStore(o connOrigin, conns []*conn, files []*os.File) (int, error) {
	o.Keys = nil
	for i, tc := range conns {
		if tc.kept.key() != "" {
			continue // in the store all along
		}
		name, err := storeName(randomKey(), o)
		if err == nil {
			err = notifyRetry(c.store, "FDSTORE=1\nFDNAME="+name, int(files[i].Fd()))
		}
		if err != nil {
			if i > 0 {
				barrierRetry(c.store)
			}
			return i, err
		}
	}
	return len(conns), barrierRetry(c.store)
}

// notifyRetry sends a notification, again while the service manager's queue is full
// (EAGAIN), for at most sendTimeout.
func notifyRetry(n notifier, state string, fds ...int) error {
	return retryFull(func() error { return n.Send(state, fds...) })
}

// barrierRetry is BARRIER=1 (n.Barrier), again while the queue is full.
func barrierRetry(n notifier) error {
	return retryFull(func() error { return n.Barrier(barrierTimeout) })
}

// retryFull runs f again while it fails because the service manager's queue is full
// (EAGAIN), for at most sendTimeout.
func retryFull(f func() error) error {
	deadline := time.Now().Add(sendTimeout)
	wait := 100 * time.Microsecond
	for {
		err := f()
		if !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// storeName is the fd store name of a connection of the socket o: connPrefix, its
// key, and o in JSON (with ':', which LISTEN_FDNAMES separates names with, and '%'
// escaped).
func storeName(key string, o connOrigin) (string, error) {
	o.Keys = nil
	b, _ := json.Marshal(o)
	name := connPrefix + key + "/" + fdnameEscaper.Replace(string(b))
	if len(name) > 255 {
		return "", fmt.Errorf("the fd store name of a connection of %s would be %d bytes long (at most 255)", o.Addr, len(name))
	}
	return name, nil
}

var (
	fdnameEscaper   = strings.NewReplacer("%", "%25", ":", "%3A")
	fdnameUnescaper = strings.NewReplacer("%25", "%", "%3A", ":")
)

// parseStoreName parses what storeName made.
func parseStoreName(name string) (key string, o connOrigin, err error) {
	rest, ok := strings.CutPrefix(name, connPrefix)
	key, js, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		return "", o, fmt.Errorf("not a connection's name: %q", name)
	}
	err = json.Unmarshal([]byte(fdnameUnescaper.Replace(js)), &o)
	return key, o, err
}

func randomKey() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (c *connCarrier) Start(h carry.Host) error {
	c.h = h
	c.mu.Lock()
	in := c.tableIn
	c.tableIn = nil
	c.mu.Unlock()
	if c.keep != nil {
		c.keep.start(h, in)
	} else if in != nil {
		in.Close()
	}
	served, closed := 0, 0
	for _, ic := range c.set.ClaimConns(connPrefix) {
		if c.fromStore(ic) {
			served++
		} else {
			closed++
		}
	}
	if served+closed > 0 {
		c.log.Info("connections from the fd store", "event", "conns_restored", "served", served, "closed", closed)
	}
	return nil
}

// fromStore takes a connection out of systemd's fd store after a restart; false if
// it cannot be served.
func (c *connCarrier) fromStore(ic fds.Conn) bool {
	key, o, err := parseStoreName(ic.Name)
	var nc net.Conn
	if err == nil {
		nc, err = net.FileConn(ic.File)
	}
	ic.File.Close()
	if err != nil {
		c.removeStored(ic.Name)
		c.log.Warn("a connection in the fd store cannot be used; closed", "event", "conns_lost", "reason", "descriptor", "name", ic.Name, "err", err)
		return false
	}
	a := arrival{origin: o, nc: nc}
	if c.keep != nil && c.keep.adoptStored(key, ic.Name) {
		a.key = ic.Name
	} else if c.keep != nil && c.keep.isSlotKey(key) {
		// Kept all along, but not idle when its process died: a request was
		// being read or answered; it cannot be served.
		c.removeStored(ic.Name)
		shutdownConn(nc)
		nc.Close()
		return false
	} else {
		c.removeStored(ic.Name)
	}
	c.deliver(a)
	return true
}

func (c *connCarrier) removeStored(name string) {
	if c.store != nil {
		c.store.Send("FDSTOREREMOVE=1\nFDNAME=" + name)
	}
}

func (c *connCarrier) Batch() []handoff.Message {
	if c.keep == nil {
		return nil
	}
	return c.keep.batch()
}

func (c *connCarrier) Turn(t carry.Turn) {
	c.mu.Lock()
	if c.role == carry.Upgrading && t.Role != carry.Upgrading {
		close(c.settled)
	}
	if t.Role == carry.Upgrading && c.role != carry.Upgrading {
		c.settled = make(chan struct{})
	}
	c.role, c.main = t.Role, t.Main
	switch t.Role {
	case carry.HandedOver:
		c.peer = t.Successor
	case carry.Serving, carry.Stopping:
		c.peer = nil
	}
	first := !c.ready && t.Role != carry.Upgrading
	c.ready = c.ready || first
	c.mu.Unlock()
	if first {
		time.AfterFunc(parkWait, c.unpark)
	}
	if c.keep != nil {
		c.keep.turn(t)
	}
}

// unpark closes the connections still parked parkWait after the process became
// ready: no Server serves their socket.
func (c *connCarrier) unpark() {
	c.mu.Lock()
	parked := c.parked
	c.parked, c.unparked = nil, true
	c.mu.Unlock()
	for _, a := range parked {
		c.drop(a, "no_server")
	}
}

// track notes a connection accepted or received (kept in the fd store, with
// Config.FDStoreConns).
func (c *connCarrier) track(tc *conn, key string) {
	if c.keep != nil {
		c.keep.track(tc, key)
	}
}
