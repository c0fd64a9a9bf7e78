package handoverquic

import (
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Socket is one generation's share of a line's UDP socket: a quic.Transport whose
// connections stay with this generation, and are served by it, until they end or
// its drain deadline passes, while newer generations take the socket over. See the
// package documentation.
type Socket struct {
	line lineage
	conn *packetConn
	tr   *quic.Transport
	log  *slog.Logger
	// wake tells run that a connection ended (a drain may be done).
	wake    chan struct{}
	closing chan struct{} // closed by Close
	done    chan struct{} // closed once finished

	mu        sync.Mutex
	state     sockState
	drainC    chan struct{} // closed when the generation drains; see Draining
	listeners []*Listener   // Listen's, ListenEarly's and ServeHTTP3's
	app       *h3app
	why       string // why the Socket finished
	// closeOnce guards closing.
	closeOnce sync.Once
}

// sockState is where a Socket is in its life.
type sockState int

const (
	sockWaiting  sockState = iota // made, not reading the shared socket yet
	sockServing                   // the newest generation: reads the shared socket
	sockDraining                  // handed over: reads its inbox, drains
	sockDone                      // finished: everything closed
)

// finishWait bounds how long, when it finishes, a Socket waits for HTTP/3
// handlers to return once it closed their connections, before it closes the
// transport anyway.
const finishWait = 2 * time.Second

// Stats counts what a generation's Socket did with the packets it handled.
type Stats struct {
	// Received counts packets read from the shared socket for this generation.
	Received uint64
	// Forwarded counts packets read from the shared socket and forwarded to the
	// older generation whose connection ID they carry.
	Forwarded uint64
	// Injected counts packets newer generations forwarded to this one.
	Injected uint64
	// Malformed counts datagrams dropped because their QUIC header could not be
	// parsed (empty, truncated, a version negotiation packet, a connection ID over
	// 20 bytes), and malformed forwarded records.
	Malformed uint64
	// NotOurs counts short-header packets dropped because their connection ID is
	// not one of the line's (forged, or from another server).
	NotOurs uint64
	// UnknownGeneration counts packets dropped because their connection ID names a
	// generation that is not alive (it ended, or never was).
	UnknownGeneration uint64
	// ForwardFailed counts packets dropped because an older generation's inbox was
	// full (it did not keep up), as a full socket buffer drops them.
	ForwardFailed uint64
	// Stale counts packets dropped because the older generation they were for had
	// just ended.
	Stale uint64
}

// newSocket makes this generation's Socket on sock, its descriptor of the shared
// socket (the Socket owns it). It reads nothing until the lineage says evServe.
func newSocket(line lineage, sock *net.UDPConn, log *slog.Logger) (*Socket, error) {
	if log == nil {
		log = slog.Default()
	}
	resetKey, tokenKey := line.keys()
	codec := newCIDCodec(&resetKey)
	gen := line.generation()
	conn, err := newPacketConn(sock, gen, codec)
	if err != nil {
		sock.Close()
		return nil, err
	}
	s := &Socket{
		line: line, conn: conn,
		log:     log,
		wake:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		drainC:  make(chan struct{}),
	}
	for _, in := range line.older() {
		if err := conn.addPeer(in.gen, in.send); err != nil {
			// The generation's packets will be dropped (counted as
			// UnknownGeneration): its connections time out, nothing else does.
			s.log.Warn("cannot forward to an older generation", "event", "quic_peer_refused", "peer", in.gen, "err", err)
		}
	}
	conn.gone = func(gen uint64) {
		s.log.Info("older generation ended", "event", "quic_peer_gone", "peer", gen)
		s.pass()
	}
	s.pass()
	if !conn.askTakeover() {
		s.serve(nil) // no older generation alive: the first of its line
	}
	s.tr = &quic.Transport{
		Conn:                  conn,
		ConnectionIDGenerator: &cidGenerator{codec: codec, tag: tagOf(gen)},
		StatelessResetKey:     &resetKey,
		TokenGeneratorKey:     &tokenKey,
	}
	go s.run()
	return s, nil
}

// pass tells the lineage which inboxes the next generation gets.
func (s *Socket) pass() {
	peers := s.conn.livePeers()
	ins := make([]inbox, 0, len(peers)+1)
	for _, p := range peers {
		if !peerAlive(p) {
			continue // ended, and no packet for it came since: not passed on
		}
		f, err := p.conn.File()
		if err != nil {
			continue // closed meanwhile: gone
		}
		defer f.Close()
		ins = append(ins, inbox{gen: p.gen, send: f})
	}
	ins = append(ins, inbox{gen: s.conn.gen, send: s.conn.inboxSend})
	s.line.pass(ins)
}

// Transport returns the generation's quic.Transport, for what Listen,
// ListenEarly and ServeHTTP3 do not cover (dialing out, say). The connections of
// a listener made directly on it are not tracked: the generation cannot know when
// they end, and drains until its deadline, when the transport closes them without
// a word. Close connections with CloseWithError, not the transport: the Socket
// closes the transport when it finishes.
func (s *Socket) Transport() *quic.Transport { return s.tr }

// Draining returns a channel that is closed when the generation starts to drain
// (it handed the socket over to a newer generation) or finishes. If it takes the
// socket back (the newer generation died), later calls return a new channel.
func (s *Socket) Draining() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drainC
}

// Stats returns the counters of the generation's packet handling.
func (s *Socket) Stats() Stats {
	c := &s.conn.stats
	return Stats{
		Received: c.received.Load(), Forwarded: c.forwarded.Load(), Injected: c.injected.Load(),
		Malformed: c.malformed.Load(), NotOurs: c.notOurs.Load(), UnknownGeneration: c.unknownGen.Load(),
		ForwardFailed: c.forwardFailed.Load(), Stale: c.stale.Load(),
	}
}

// Done is closed once the Socket has finished: its connections ended or were
// closed at the deadline, and its transport and descriptors are closed.
func (s *Socket) Done() <-chan struct{} { return s.done }

// Close ends this generation's share of the socket at once, as the drain
// deadline does: the connections of its listeners (and ServeHTTP3's) are closed
// (see Listener and ServeHTTP3), then the transport and the descriptors. Packets
// for its connections are dropped from then on.
func (s *Socket) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	<-s.done
	return nil
}

// wakeUp tells run that a connection ended.
func (s *Socket) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run follows the lineage's events until the Socket finishes.
func (s *Socket) run() {
	var deadline <-chan time.Time
	var timer *time.Timer
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			timer, deadline = nil, nil
		}
	}
	defer stopTimer()
	for {
		select {
		case routes := <-s.conn.offers:
			// The predecessor handed the socket over (or hung up): unless this
			// generation was given up meanwhile.
			if s.waiting() {
				s.serve(routes)
			}
		case <-s.conn.knock:
			// A takeover came to a generation that drains while it reads.
			if s.readingWhileDraining() {
				s.handOver()
			}
		case ev := <-s.line.events():
			switch ev.kind {
			case evServe:
				stopTimer()
				s.serve(ev.routes)
			case evHandedOver:
				s.handOver()
				stopTimer()
				timer = time.NewTimer(time.Until(ev.deadline))
				deadline = timer.C
				if s.drained() {
					s.finish("drained")
					return
				}
			case evFinish:
				s.finish("finish")
				return
			}
		case <-s.wake:
			if s.drained() {
				s.finish("drained")
				return
			}
		case <-deadline:
			s.finish("deadline")
			return
		case <-s.closing:
			s.finish("closed")
			return
		}
	}
}

// serve makes this generation the one that reads the shared socket.
func (s *Socket) serve(routes []byte) {
	if err := s.conn.routes.merge(routes); err != nil {
		s.log.Warn("predecessor's routes unreadable", "event", "quic_routes_refused", "err", err)
	}
	s.conn.setReading(true)
	s.mu.Lock()
	resumed := s.state == sockDraining
	s.state = sockServing
	if isClosed(s.drainC) {
		s.drainC = make(chan struct{})
	}
	app := s.app
	s.mu.Unlock()
	if app != nil {
		app.serve()
	}
	s.log.Info("reading the shared socket", "event", "quic_serve", "resumed", resumed)
}

// handOver hands the shared socket to the generation that asked for it (see
// takeover_linux.go) and starts the drain. With no takeover waiting, the
// generation drains while it keeps reading the socket, until one comes.
func (s *Socket) handOver() {
	handed := false
	if succ := s.conn.pendingTakeover(); succ != nil {
		s.conn.setReading(false)
		err := handRoutes(succ, s.conn.gen, s.conn.routes.encode(maxRoutesRecord-ctlHeaderLen))
		succ.Close()
		if err != nil {
			// The generation that asked is gone.
			s.log.Warn("the generation that asked for the shared socket is gone; reading on", "event", "quic_takeover_lost", "err", err)
			s.conn.setReading(true)
		} else {
			handed = true
		}
	}
	if !handed {
		s.conn.watchInbox()
	}
	s.mu.Lock()
	first := s.state != sockDraining
	s.state = sockDraining
	closeOnce(s.drainC)
	app := s.app
	s.mu.Unlock()
	if app != nil && first {
		app.drain()
	}
	if handed {
		s.log.Info("handed the shared socket over", "event", "quic_handed_over")
	} else if first {
		s.log.Info("draining; reading the shared socket until a newer generation asks for it", "event", "quic_draining_reading")
	}
}

// waiting reports whether the generation has not read the shared socket yet.
func (s *Socket) waiting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == sockWaiting
}

// readingWhileDraining reports whether the generation drains while it still reads
// the shared socket (nobody asked for it).
func (s *Socket) readingWhileDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == sockDraining && s.conn.isReading()
}

// drained reports whether a draining Socket has nothing left to wait for: every
// connection its listeners accepted has ended, and ServeHTTP3's handlers have
// returned. A Socket without listeners cannot know its connections: it drains
// until the deadline.
func (s *Socket) drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != sockDraining || len(s.listeners) == 0 {
		return false
	}
	for _, l := range s.listeners {
		if !l.idle() {
			return false
		}
	}
	return s.app == nil || s.app.idle()
}

// finish closes everything, once.
func (s *Socket) finish(why string) {
	s.mu.Lock()
	s.state = sockDone
	s.why = why
	closeOnce(s.drainC)
	listeners, app := s.listeners, s.app
	s.mu.Unlock()
	for _, l := range listeners {
		l.expire()
	}
	if app != nil && !app.waitIdle(finishWait) {
		s.log.Warn("HTTP/3 handlers still running after their connections closed", "event", "quic_handlers_left")
	}
	s.tr.Close()
	s.conn.Close()
	s.log.Info("finished", "event", "quic_finished", "reason", why)
	close(s.done)
	s.line.drained()
}

// isClosed reports whether c is closed.
func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// closeOnce closes c unless it is closed.
func closeOnce(c chan struct{}) {
	if !isClosed(c) {
		close(c)
	}
}
