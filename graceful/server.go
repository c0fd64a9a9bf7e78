package graceful

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Server is an http.Server that survives upgrades. It serves on a listener of the
// process's Upgrader (inherited from systemd, a `handover run` master or the previous
// generation, or bound), calls the Upgrader's Ready once it serves, and drains when
// a new generation has taken over or the process is asked to stop:
//
//   - it stops accepting; connections still in the socket's queue are the new
//     generation's;
//   - a plain HTTP/1 keep-alive connection (TCP or unix socket, no TLS) moves to
//     the new generation, and the client notices nothing (no close, no new
//     connection): one that is idle (between two requests, no byte of the next
//     one read here) is handed over at once, one in the middle of a request
//     finishes it here (its response keeps the connection alive) and is handed
//     over as it becomes idle, one that sent pipelined requests is handed over
//     once all are answered. A request already read is always answered here
//     (unlike http.Server.Shutdown, which may drop one read just as it starts:
//     golang/go#75591); bytes the client sent but that were not read yet (the next
//     request) move with the socket, and the new generation answers them. This
//     holds after SIGUSR2, `handover reload` and `systemctl reload`, and, with
//     Config.FDStore, as the main process stops under systemd (`systemctl
//     restart`): the connections wait in systemd's fd store, and the next start
//     serves them (after a crash too, with Config.FDStoreConns). In the new
//     generation they go to the Server on the same socket (by its name, else its
//     address): one it cannot serve (no such Server, or one that is stopping, or
//     one with DisableConnHandover, or serving TLS) is closed. Linux only;
//     DisableConnHandover turns it off, and the connections are drained as below.
//     A Server that also accepts unencrypted HTTP/2 (Protocols with
//     UnencryptedHTTP2) drains as below its HTTP/1 connections that have carried a
//     request: net/http then reads the first bytes of every connection on its own
//     to tell the two apart, and its wait between two requests is not recognized;
//   - otherwise (a drain with nowhere to hand connections to: SIGTERM without the
//     fd store, Shutdown; TLS connections, whose live session keys crypto/tls
//     cannot hand to another process; HTTP/2, whose streams and compression state
//     live in the process): an HTTP/1 request that starts from then on is answered
//     with "Connection: close", and an idle keep-alive connection may send one more
//     request for KeepAliveGrace, then it is closed;
//   - every HTTP/2 connection, over TLS or unencrypted (h2c), is told to go away in
//     the two steps of RFC 9113 §6.8: a GOAWAY with stream 2^31-1 and a PING, then,
//     once the client has answered the PING, net/http's GOAWAY with the last stream
//     it processed. Every stream the client opened before it read the first GOAWAY
//     is answered; the streams in flight finish; new ones go to a new connection
//     (the new generation). A client that does not answer the PING within one second
//     gets the second GOAWAY anyway. A connection on which the client has not sent a
//     request yet gets the first GOAWAY once it sends one (or after one second): a
//     client may not send, after a GOAWAY, requests it had already written;
//   - hijacked connections (websockets) and long responses run on; their handlers
//     learn of the drain through Draining(r.Context()) and should end politely;
//   - at the drain deadline (DrainTimeout) every connection still open is
//     force-closed.
//
// If the new generation dies while this one drains, or stands by once drained for
// the new generation's probation (Config.Probation; without a service manager), the
// drain is taken back: the Server accepts again and keep-alive is on again.
//
// A connection handed over is the new generation's once that one says it has the
// socket (it says so as it receives it, before it serves it). Until then this
// Server keeps its own copy, without reading from it: if the new generation dies
// first (the socket was still in the handover channel), the connection is served
// here again, the request its client sent meanwhile included, and the client
// notices nothing. Once the new generation has it, the connection ends with it if
// it dies, as a connection of any crashed server does: an idle one is closed (the
// client sees the close, as when a keep-alive connection times out); the one
// request in flight on it, or sent before the client saw the close, fails with a
// reset or an EOF. The client loses at most that one request; it was not answered,
// so a client may retry it on a new connection, which the old generation, serving
// again, accepts.
//
// Configure the embedded http.Server as usual, but do not call its Shutdown: the
// Server's own Shutdown replaces it. Its Close closes at once, as net/http's does.
type Server struct {
	http.Server

	// Name is the listener's name: the systemd FileDescriptorName= of the socket to
	// serve on, and the name under which it is passed to the next generation. Used by
	// ListenAndServe.
	Name string
	// DrainTimeout is the drain deadline after which remaining connections are
	// force-closed; zero means the Upgrader's (Config.DrainTimeout).
	DrainTimeout time.Duration
	// KeepAliveGrace is how long an idle keep-alive connection that is not handed
	// over may live once draining has started; zero means one second.
	KeepAliveGrace time.Duration
	// DisableConnHandover keeps idle keep-alive connections from moving to the new
	// generation: a drain closes them, after KeepAliveGrace, as Shutdown does. It
	// also keeps this Server from taking in those the previous generation hands
	// over: they are closed.
	DisableConnHandover bool

	once    sync.Once
	drainer Drainer
	h2      *h2Conns // the HTTP/2 connections, told to go away in two steps
	// goAwayAckTimeout, if set, replaces goAwayAckTimeout (tests).
	goAwayAckTimeout time.Duration
	mu               sync.Mutex
	hooks            []func()
}

func (s *Server) init() {
	s.once.Do(func() {
		s.drainer.KeepAliveGrace = s.KeepAliveGrace
		s.drainer.server = true
		s.drainer.attach(&s.Server)
		s.setupHTTP2()
	})
}

// setupHTTP2 serves HTTP/2 (over TLS, and unencrypted when s.Protocols asks for it)
// through net/http's own implementation, each connection through an h2Conn on an
// HTTP/2 server of its own (see h2goaway.go), so that a drain can tell it to go away
// in two steps. Requests still go to s's handler with s's settings.
//
// The "h2" entry is always installed, also when only unencrypted HTTP/2 is on:
// without it net/http configures HTTP/2 on s itself when s starts serving,
// replacing the unencrypted one, and those connections could not be told to go away.
// TLS then offers "h2" only if s.Protocols has HTTP/2 (see ServeTLS). A
// TLSNextProto the application set itself is left alone.
func (s *Server) setupHTTP2() {
	if s.TLSNextProto != nil {
		return
	}
	p := s.protocols()
	if !p.HTTP2() && !p.UnencryptedHTTP2() {
		return
	}
	h := newH2Conns(s)
	if h == nil {
		return // HTTP/2 disabled (GODEBUG=http2server=0)
	}
	s.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){"h2": h.serveTLS}
	if p.UnencryptedHTTP2() {
		s.TLSNextProto["unencrypted_http2"] = h.serveUnencrypted
	}
	s.h2 = h
}

// protocols returns the protocols s serves: s.Protocols, or HTTP/1 and HTTP/2 over
// TLS (net/http's default).
func (s *Server) protocols() http.Protocols {
	if s.Protocols != nil {
		return *s.Protocols
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	return p
}

// failListener is a listener whose Accept fails at once.
type failListener struct{}

func (failListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (failListener) Close() error              { return nil }
func (failListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// ListenAndServe takes the listener named s.Name for s.Addr (":http" if empty)
// from the Upgrader (see Upgrader.Listen) and serves on it, as Serve does.
func (s *Server) ListenAndServe() error {
	addr := s.Addr
	if addr == "" {
		addr = ":http"
	}
	ln, err := s.listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// ListenAndServeTLS is ListenAndServe with TLS (":https" if s.Addr is empty), as in
// http.Server.ListenAndServeTLS.
func (s *Server) ListenAndServeTLS(certFile, keyFile string) error {
	addr := s.Addr
	if addr == "" {
		addr = ":https"
	}
	ln, err := s.listen(addr)
	if err != nil {
		return err
	}
	return s.ServeTLS(ln, certFile, keyFile)
}

func (s *Server) listen(addr string) (net.Listener, error) {
	u, err := defaultUpgrader()
	if err != nil {
		return nil, err
	}
	return u.Listen(s.Name, "tcp", addr)
}

// ServeTLS is Serve with TLS: l is tracked, then wrapped in TLS with s.TLSConfig and
// the given certificate (either may be empty when TLSConfig has certificates, or
// GetCertificate: the way to serve TLS with a tls.Config of one's own).
// "h2" is offered when s.Protocols has HTTP/2 (the default). TLS sessions resume
// across upgrades: the Upgrader's session-ticket keys are installed (see
// Upgrader.KeepTLSSessions) unless TLSConfig disables session tickets or has
// WrapSession or UnwrapSession hooks of its own.
func (s *Server) ServeTLS(l net.Listener, certFile, keyFile string) error {
	s.init()
	cfg := &tls.Config{}
	if s.TLSConfig != nil {
		cfg = s.TLSConfig.Clone()
	}
	_, h2 := s.TLSNextProto["h2"]
	h2 = h2 && s.protocols().HTTP2()
	if len(cfg.NextProtos) == 0 {
		if h2 {
			cfg.NextProtos = []string{"h2", "http/1.1"}
		} else {
			cfg.NextProtos = []string{"http/1.1"}
		}
	} else if !h2 {
		cfg.NextProtos = slices.DeleteFunc(cfg.NextProtos, func(p string) bool { return p == "h2" })
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			l.Close()
			return err
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	// Sessions resume across upgrades (see Upgrader.KeepTLSSessions), unless the
	// TLSConfig disables tickets or handles them with hooks of its own.
	if u, err := defaultUpgrader(); err == nil {
		u.ext.keys.install(cfg, false)
	}
	return s.serve(l, func(tl net.Listener) net.Listener { return tls.NewListener(tl, cfg) })
}

// Serve serves HTTP on l, calls the Upgrader's Ready once it serves (take every
// listener of the process before serving any: see Upgrader.Listen), and returns
// http.ErrServerClosed once the Server has drained (see Server) or Shutdown has
// finished. Other errors are returned as they happen. The process's Upgrader is
// the one New made, or one with the zero Config.
//
// l is a listener of the Upgrader, or a listener of the application's around one
// (tls.NewListener, a struct that embeds it, any net.Listener whose Accept calls
// its Accept): Serve returns http.ErrServerClosed either way, but not at the same
// moment. A drain after a handover stops the Upgrader's own listener without
// closing it, so that it can be taken back if the new generation dies: on it, Serve
// returns when the Upgrader is done (Upgrader.Wait would return: the drain is over,
// and so is the new generation's probation), and goes on serving if the drain is
// taken back. A listener around it cannot be stopped that way, so the drain closes
// it, and that drain cannot be taken back: Serve returns once the Server's
// connections have drained, and the process should then call Upgrader.Wait, which
// returns after the probation (during which a new generation that dies is replaced
// by this process's own build, on the sockets it kept; see Upgrader).
//
// To serve TLS with a tls.Config of one's own, set TLSConfig and call ServeTLS
// with the Upgrader's listener and empty file names: the Server then offers HTTP/2,
// keeps TLS sessions across upgrades, and handlers see r.TLS. Serve on
// tls.NewListener(l, cfg) serves HTTP/1 only, with r.TLS set (net/http switches
// to HTTP/2 only a connection that is a *tls.Conn, and the Server wraps the
// connections it accepts to track them): leave "h2" out of cfg.NextProtos.
func (s *Server) Serve(l net.Listener) error {
	return s.serve(l, nil)
}

func (s *Server) serve(l net.Listener, wrap func(net.Listener) net.Listener) error {
	u, err := defaultUpgrader()
	if err != nil {
		l.Close()
		return err
	}
	s.init()
	dl := s.drainer.Listener(l)
	tl := dl
	if wrap != nil {
		tl = wrap(dl)
	} else if !s.DisableConnHandover {
		u.ext.conns.serve(&s.drainer, dl.(*listener), l, passHTTP)
	}
	u.adopt(&target{d: &s.drainer, s: s, timeout: s.DrainTimeout})
	errc := make(chan error, 1)
	go func() { errc <- s.Server.Serve(tl) }()
	if err := u.Ready(); err != nil {
		s.Server.Close()
		<-errc
		return err
	}
	err = <-errc
	if s.drainer.closedByDrain(dl) {
		// The listener was closed by a drain (for good, or because it cannot
		// stop accepting otherwise): return once it is over (whoever drains
		// force-closes what is left at its deadline).
		s.drainer.wait(context.Background())
		return http.ErrServerClosed
	}
	return err
}

// startDrain tells HTTP/2 connections to go away and runs the RegisterOnShutdown
// functions. The Drainer is draining already: an HTTP/2 connection that net/http
// hands over from now on is told to go away by itself (see h2Conns.add).
func (s *Server) startDrain() {
	if s.h2 != nil {
		s.h2.goAway()
	}
	s.mu.Lock()
	hooks := slices.Clone(s.hooks)
	s.mu.Unlock()
	for _, f := range hooks {
		go f()
	}
}

// Shutdown drains the server as described on Server, now: it stops accepting (its
// listeners are closed), turns keep-alive off, tells HTTP/2 connections to go away,
// closes idle connections after the grace period and waits for the rest. When ctx
// is done it force-closes every connection still open and returns
// ErrDrainDeadline; otherwise it returns nil once all connections are closed. A
// Server drains by itself when its Upgrader says so: call Shutdown only to stop one
// Server of several.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.drainer.stopAccepting(true)
	s.startDrain()
	return s.drainer.wait(ctx)
}

// RegisterOnShutdown registers a function to call when the Server starts draining
// (Shutdown, a new generation taking over, a stop), each in its own goroutine, as
// http.Server.RegisterOnShutdown does for its Shutdown: to tell connections the
// Server cannot see (hijacked, or of another protocol) to end.
func (s *Server) RegisterOnShutdown(f func()) {
	s.mu.Lock()
	s.hooks = append(s.hooks, f)
	s.mu.Unlock()
}

// ListenAndServe is http.ListenAndServe for a process that upgrades without dropping
// a connection: it serves handler on addr (or on the socket systemd, a master or the
// previous generation passed), upgrades on SIGUSR2 and drains on SIGTERM, with the
// process's Upgrader (the one New made, for a PID file or a control socket, or one
// with the zero Config). Unlike http.ListenAndServe it returns nil once the process
// has drained after handing over or being stopped, so write
//
//	if err := graceful.ListenAndServe(":8080", mux); err != nil {
//		log.Fatal(err)
//	}
func ListenAndServe(addr string, handler http.Handler) error {
	s := &Server{Server: http.Server{Addr: addr, Handler: handler}}
	return waitIfClosed(s.ListenAndServe())
}

// ListenAndServeTLS is ListenAndServe with TLS.
func ListenAndServeTLS(addr, certFile, keyFile string, handler http.Handler) error {
	s := &Server{Server: http.Server{Addr: addr, Handler: handler}}
	return waitIfClosed(s.ListenAndServeTLS(certFile, keyFile))
}

// waitIfClosed turns the end of a drain into nil, once the whole process has drained.
func waitIfClosed(err error) error {
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if u := processUpgrader(); u != nil {
		if err := u.Wait(); err != nil && !errors.Is(err, ErrDrainDeadline) {
			return err
		}
	}
	return nil
}
