package graceful

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Idle connections follow the generations (issue 20). A drain after a handover
// hands every connection that waits at a safe point (conn.safePoint) to the new
// generation instead of closing it: at once for those idle when it starts, and each
// one as it becomes idle after its last response. The hand-off of one connection
// (conn.take): its Read is stopped with a read deadline in the past (held against
// net/http's own), without a byte read; its descriptor is duplicated and sent (the
// successor's channel, or systemd's fd store as the process stops); only then does
// net/http read an error (errHandedOver, a timeout), and close its copy: closing one
// copy of a socket sends nothing to the client. A byte that comes first is read:
// that connection stays, finishes its request here, and is handed over once idle
// again (the response does not say "Connection: close": see Drainer.keepsAlive).
//
// The new generation's connection carrier (conncarrier.go) gives each connection to
// the Server or Drainer that serves the same socket: Accept returns it (listener.in),
// as a new connection whose next request net/http reads.

var errNotPassable = errors.New("graceful: connection cannot be handed over")

// connBatch bounds the connections handed over in one message (handoff's limit of
// descriptors per message).
const connBatch = 8

// inbox holds the connections the previous generation handed over, until Accept
// returns them. Guarded by d.mu.
type inbox struct {
	kind   passKind   // of the connections accepted; passNever: it takes none in
	origin connOrigin // the socket, as the generations name it
	conns  []arrival
	kicked bool // Accept was interrupted (a deadline in the past) to return one
}

// handsOver makes d's drain, which the Upgrader starts, hand connections over if its
// carrier expects a destination (see connDest.expects).
func (d *Drainer) handsOver() {
	p := d.pass.Load()
	d.passing.Store(p != nil && p.expects())
}

// keepsAlive reports whether the HTTP/1 request r, whose handler starts while d
// drains, is answered without "Connection: close": its connection is handed over
// once idle again.
func (d *Drainer) keepsAlive(r *http.Request) bool {
	c, ok := r.Context().Value(connKey{}).(*conn)
	return ok && c.kind == passHTTP && d.passing.Load() && !c.noPass()
}

func (c *conn) noPass() bool {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.p.never
}

// wake wakes a drain in progress: a connection waits at a safe point.
func (d *Drainer) wake() {
	if d.draining.Load() {
		d.mu.Lock()
		d.changedLocked()
		d.mu.Unlock()
	}
}

// handOver hands conns over, those of each listener in batches. If the destination
// fails, the drain hands nothing over any more: the connections stay, and are
// drained as without a destination. Waits that run at once (a Server's Serve waits
// on its drain beside the Upgrader's) hand over in turn: the one that comes second
// finds taken what the first took, and does not spin on a hand-off in progress.
func (d *Drainer) handOver(conns []*conn) {
	d.handing.Lock()
	defer d.handing.Unlock()
	byListener := map[*listener][]*conn{}
	for _, c := range conns {
		byListener[c.ln] = append(byListener[c.ln], c)
	}
	for ln, cs := range byListener {
		for len(cs) > 0 && d.passing.Load() {
			batch := cs[:min(len(cs), connBatch)]
			cs = cs[len(batch):]
			var taken []*conn
			var files []*os.File
			for _, c := range batch {
				if f, ok := c.take(); ok {
					taken, files = append(taken, c), append(files, f)
				}
			}
			if len(taken) == 0 {
				continue
			}
			n, held, err := d.pass.Load().send(ln, taken, files)
			closeFiles(files)
			if !held {
				for i, c := range taken {
					c.finish(i < n)
				}
				d.handedOver.Add(uint64(n))
			}
			if err != nil {
				d.passing.Store(false)
			}
		}
	}
}

// receive queues a, handed over by the previous generation, for Accept; false if
// the listener takes no connection in now (it does not, or it is closed or paused).
func (l *listener) receive(a arrival) bool {
	l.d.mu.Lock()
	defer l.d.mu.Unlock()
	if l.in.kind == passNever || l.paused || l.closed.Load() {
		return false
	}
	l.in.conns = append(l.in.conns, a)
	if !l.in.kicked {
		// Accept waits in the kernel: interrupted, it returns nc.
		l.in.kicked = l.Listener.(deadliner).SetDeadline(aLongTimeAgo) == nil
	}
	return true
}

// received returns a connection received for Accept, if any, unless the listener is
// paused; d.mu is held.
func (l *listener) received() (arrival, bool) {
	if l.paused {
		return arrival{}, false
	}
	if l.in.kicked {
		l.in.kicked = false
		l.Listener.(deadliner).SetDeadline(time.Time{})
	}
	if len(l.in.conns) == 0 {
		return arrival{}, false
	}
	a := l.in.conns[0]
	l.in.conns = l.in.conns[1:]
	return a, true
}

// takeInbox empties the inbox, as the listener stops accepting; d.mu is held.
func (l *listener) takeInbox() []arrival {
	ncs := l.in.conns
	l.in.conns = nil
	return ncs
}

// flushInboxes hands on, or closes, what listeners received but did not accept
// before they stopped accepting.
func (d *Drainer) flushInboxes(lns []*listener, inboxes [][]arrival) {
	p := d.pass.Load()
	for i, as := range inboxes {
		if len(as) > 0 && p != nil {
			p.forward(lns[i], as)
		}
	}
}

// track makes nc, accepted by l (or received: recv, with its fd store name key),
// a tracked connection.
func (l *listener) track(nc net.Conn, recv bool, key string) net.Conn {
	tc := newConn(nc, l.d, l, l.in.kind)
	l.d.add(tc, recv)
	if p := l.d.pass.Load(); p != nil && tc.kind != passNever {
		p.track(tc, key)
	}
	if _, ok := nc.(*tls.Conn); ok {
		return tlsConn{tc}
	}
	return tc
}

// connOrigin names the socket a connection came through, as the generations share
// it: its name among the process's sockets, and its address.
type connOrigin struct {
	Name    string   `json:"name"`
	Network string   `json:"network"`
	Addr    string   `json:"addr"`
	Keys    []string `json:"keys,omitempty"` // fd store names (conns message only)
}

// writeConnMetrics writes the counters of the connections handed over (Metrics).
func writeConnMetrics(b *strings.Builder, c ConnCounts) {
	fmt.Fprintf(b, "# HELP handover_connections_received_total Idle connections this process took over from the previous generation or the fd store.\n# TYPE handover_connections_received_total counter\nhandover_connections_received_total %d\n", c.Received)
	fmt.Fprintf(b, "# HELP handover_connections_handed_over_total Idle connections this process handed to the next generation or the fd store.\n# TYPE handover_connections_handed_over_total counter\nhandover_connections_handed_over_total %d\n", c.HandedOver)
}
