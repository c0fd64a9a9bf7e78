package graceful

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server is an http.Server that survives upgrades: it takes its listener from the
// process's Upgrader (inherited from systemd or the previous generation, or bound),
// and when the Upgrader's Exit closes (a new generation took over, or SIGTERM) it
// drains through a Drainer instead of calling http.Server.Shutdown, which drops a
// request read just as it starts (golang/go#75591).
//
// Configure the embedded http.Server as usual. Do not call its Shutdown,
// SetKeepAlivesEnabled or RegisterOnShutdown: Server's own Shutdown replaces them.
type Server struct {
	http.Server

	// Name is the listener's name: the systemd FileDescriptorName= of the socket to
	// serve on, and the name under which it is passed to the next generation.
	Name string
	// DrainTimeout is the drain deadline after which remaining connections are
	// force-closed; zero means the Upgrader's.
	DrainTimeout time.Duration
	// KeepAliveGrace is how long an idle keep-alive connection may live once draining
	// has started; zero means DefaultKeepAliveGrace.
	KeepAliveGrace time.Duration
	// Upgrader is the process's Upgrader. nil means Default(), and then Serve also
	// calls Ready once it is serving; with an Upgrader of its own, the application
	// calls Ready itself once all its servers are serving.
	Upgrader *Upgrader

	once    sync.Once
	drainer Drainer
	h2      *http.Server  // owns net/http's HTTP/2 connections, so that they get GOAWAY
	done    chan struct{} // closed when a drain has finished
	drainMu sync.Mutex
	drainEr error
}

func (s *Server) init() {
	s.once.Do(func() {
		s.drainer.KeepAliveGrace = s.KeepAliveGrace
		s.drainer.Attach(&s.Server)
		s.done = make(chan struct{})
		s.setupHTTP2()
	})
}

// setupHTTP2 serves HTTP/2 (over TLS, and h2c with prior knowledge when
// s.Protocols enables unencrypted HTTP/2) through net/http's own implementation, but
// configured on a second, listener-less http.Server. net/http tells HTTP/2
// connections to go away (GOAWAY) only from Shutdown, and Shutdown on s itself would
// drop HTTP/1 requests it has just read (golang/go#75591); on the second server it
// touches nothing but the HTTP/2 connections. Requests still go to s's handler with
// s's settings. A TLSNextProto the application set itself is left alone.
func (s *Server) setupHTTP2() {
	if s.TLSNextProto != nil {
		return
	}
	if p := s.Protocols; p != nil && !p.HTTP2() && !p.UnencryptedHTTP2() {
		return
	}
	h2 := &http.Server{}
	h2.Serve(failListener{}) // configures HTTP/2 on h2, then returns at once
	h2proto, h2c := h2.TLSNextProto["h2"], h2.TLSNextProto["unencrypted_http2"]
	if h2proto == nil {
		return // HTTP/2 disabled (GODEBUG=http2server=0)
	}
	s.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){"h2": h2proto}
	if s.Protocols != nil && s.Protocols.UnencryptedHTTP2() && h2c != nil {
		s.TLSNextProto["unencrypted_http2"] = h2c
	}
	if s.Protocols != nil && !s.Protocols.HTTP2() {
		delete(s.TLSNextProto, "h2")
	}
	s.h2 = h2
}

// failListener is a listener whose Accept fails at once.
type failListener struct{}

func (failListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (failListener) Close() error              { return nil }
func (failListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func (s *Server) upgrader() (u *Upgrader, auto bool, err error) {
	if s.Upgrader != nil {
		return s.Upgrader, false, nil
	}
	u, err = Default()
	return u, true, err
}

// ListenAndServe gets its listener for s.Addr (":http" if empty) from the Upgrader
// and serves on it, as Serve does.
func (s *Server) ListenAndServe() error {
	u, _, err := s.upgrader()
	if err != nil {
		return err
	}
	addr := s.Addr
	if addr == "" {
		addr = ":http"
	}
	ln, err := u.Listen(s.Name, "tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// ListenAndServeTLS is ListenAndServe with TLS, as in http.Server.ListenAndServeTLS.
func (s *Server) ListenAndServeTLS(certFile, keyFile string) error {
	u, _, err := s.upgrader()
	if err != nil {
		return err
	}
	addr := s.Addr
	if addr == "" {
		addr = ":https"
	}
	ln, err := u.Listen(s.Name, "tcp", addr)
	if err != nil {
		return err
	}
	return s.ServeTLS(ln, certFile, keyFile)
}

// ServeTLS is Serve with TLS: l is tracked, then wrapped in TLS with s.TLSConfig and
// the given certificate (either may be empty when TLSConfig has certificates).
func (s *Server) ServeTLS(l net.Listener, certFile, keyFile string) error {
	cfg := &tls.Config{}
	if s.TLSConfig != nil {
		cfg = s.TLSConfig.Clone()
	}
	if len(cfg.NextProtos) == 0 {
		s.init()
		if _, ok := s.TLSNextProto["h2"]; ok {
			cfg.NextProtos = []string{"h2", "http/1.1"}
		} else {
			cfg.NextProtos = []string{"http/1.1"}
		}
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			l.Close()
			return err
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	return s.serve(l, func(tl net.Listener) net.Listener { return tls.NewListener(tl, cfg) })
}

// Serve serves HTTP on l until the Upgrader's Exit closes or Shutdown is called, then
// drains (see Shutdown) and returns http.ErrServerClosed. With the default Upgrader it
// calls Ready once it is serving. Other errors are returned as they happen.
func (s *Server) Serve(l net.Listener) error {
	return s.serve(l, nil)
}

func (s *Server) serve(l net.Listener, wrap func(net.Listener) net.Listener) error {
	u, auto, err := s.upgrader()
	if err != nil {
		l.Close()
		return err
	}
	s.init()
	u.track(&s.drainer)
	var tl net.Listener = s.drainer.Listener(l)
	if wrap != nil {
		tl = wrap(tl)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Server.Serve(tl) }()
	if auto {
		if err := u.Ready(); err != nil {
			s.Server.Close()
			<-errc
			return err
		}
	}
	select {
	case err := <-errc:
		select {
		case <-s.drainer.Draining():
			// Shutdown closed the listener; wait until it has drained.
			<-s.done
			return http.ErrServerClosed
		default:
			return err
		}
	case <-u.Exit():
	}
	d := s.DrainTimeout
	if d <= 0 {
		d = u.DrainTimeout()
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	c := s.drainer.Counts()
	u.Logger().Info("draining", "event", "drain_start", "addr", l.Addr().String(), "connections", c.Total(), "deadline", d.String())
	err = s.Shutdown(ctx)
	<-errc
	if errors.Is(err, ErrDrainDeadline) {
		u.Logger().Warn("drain deadline reached; force-closed the remaining connections", "event", "drain_deadline", "addr", l.Addr().String(), "took", time.Since(start).Round(time.Millisecond).String())
	} else {
		u.Logger().Info("drained", "event", "drained", "addr", l.Addr().String(), "took", time.Since(start).Round(time.Millisecond).String())
	}
	return http.ErrServerClosed
}

// Shutdown drains the server: it stops accepting, turns keep-alive off (HTTP/1
// responses carry "Connection: close"; HTTP/2 connections get GOAWAY and finish the
// streams in flight), lets idle keep-alive connections send one more request
// for KeepAliveGrace and then closes them, and waits for active and hijacked
// connections to finish. Handlers that hold hijacked or long-lived connections learn
// of the drain through Draining(r.Context()). When ctx is done, it force-closes every
// connection still open and returns ErrDrainDeadline; otherwise it returns nil once
// all connections are closed. Unlike http.Server.Shutdown, a request the server has
// read is always answered.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	if s.h2 != nil {
		// GOAWAY on every HTTP/2 connection: streams in flight finish, new ones go to
		// a new connection (the new generation), and net/http closes the connection
		// once it is quiet. Returns at once: s.h2 has no listener or HTTP/1 conns.
		s.h2.Shutdown(ctx)
	}
	err := s.drainer.Drain(ctx)
	s.drainMu.Lock()
	select {
	case <-s.done:
	default:
		s.drainEr = err
		close(s.done)
	}
	s.drainMu.Unlock()
	return err
}

// Counts returns the server's connection counts.
func (s *Server) Counts() ConnCounts {
	s.init()
	return s.drainer.Counts()
}

// ListenAndServe is http.ListenAndServe for a process that upgrades without dropping
// a connection: it serves handler on addr (or on the socket systemd or the previous
// generation passed), upgrades on SIGUSR2 and drains on SIGTERM, using the default
// Upgrader. Unlike http.ListenAndServe it returns nil once the process has drained
// after handing over or being stopped, so write
//
//	if err := graceful.ListenAndServe(":8080", mux); err != nil {
//		log.Fatal(err)
//	}
func ListenAndServe(addr string, handler http.Handler) error {
	s := &Server{Server: http.Server{Addr: addr, Handler: handler}}
	return closedIsNil(s.ListenAndServe())
}

// ListenAndServeTLS is ListenAndServe with TLS.
func ListenAndServeTLS(addr, certFile, keyFile string, handler http.Handler) error {
	s := &Server{Server: http.Server{Addr: addr, Handler: handler}}
	return closedIsNil(s.ListenAndServeTLS(certFile, keyFile))
}

func closedIsNil(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
