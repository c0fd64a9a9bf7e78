//go:build linux

package handoverquic

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// ServeHTTP3 serves HTTP/3 with srv on the Socket until the Socket finishes, then
// returns http.ErrServerClosed. srv is used as http3.Server.ServeListener would
// use it (Handler, TLSConfig (required), QUICConfig, EnableDatagrams, IdleTimeout,
// MaxHeaderBytes, ConnContext, Logger), with an accept loop of the Socket's for
// every connection (http3.Server.NewRawServerConn); srv.SetQUICHeaders advertises
// the socket's port. srv.Shutdown and srv.Close do not end these connections: the
// Socket does, as follows.
//
// While this generation is the newest, connections are served as they come. At
// the handover, every connection is told to go away (a GOAWAY frame whose
// identifier rejects no request), and keeps being served: every request its
// client sent, even one that crossed the GOAWAY, is answered, and the client opens
// a new connection, which reaches the newest generation, for its next requests. A
// connection whose handshake began just before the handover is served here too,
// and told to go away at once. A connection ends when its client closes it (a
// client closes it once its last request is answered), or when the generation
// finishes (its drain deadline, or Close): then it is closed with H3_NO_ERROR,
// and handlers still running have two seconds to return before the transport
// closes. If the generation takes the socket back (its successor died), new
// connections are served here again; those told to go away stay so.
func (s *Socket) ServeHTTP3(srv *http3.Server) error {
	if srv == nil || srv.TLSConfig == nil {
		return errors.New("handoverquic: ServeHTTP3: the http3.Server needs a TLSConfig")
	}
	if _, err := checkControlLayout(); err != nil {
		return err
	}
	conf := &quic.Config{Allow0RTT: true}
	if srv.QUICConfig != nil {
		conf = srv.QUICConfig.Clone()
	}
	if srv.EnableDatagrams {
		conf.EnableDatagrams = true
	}
	ln, err := s.ListenEarly(http3.ConfigureTLSConfig(srv.TLSConfig), conf)
	if err != nil {
		return fmt.Errorf("handoverquic: ServeHTTP3: %w", err)
	}
	ln.SetDeadlineError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	app := &h3app{srv: srv, log: s.log, wake: s.wakeUp, conns: map[*h3conn]struct{}{}, idleC: make(chan struct{})}
	if err := s.setApp(app); err != nil {
		ln.Close()
		return err
	}
	defer advertise(srv, ln.Addr())()
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return http.ErrServerClosed
		}
		app.serveConn(conn)
	}
}

// setApp makes app the Socket's HTTP/3 server.
func (s *Socket) setApp(app *h3app) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.app != nil:
		return errors.New("handoverquic: ServeHTTP3 called twice")
	case s.state == sockDone:
		return http.ErrServerClosed
	}
	s.app = app
	if s.state == sockDraining {
		app.drain()
	}
	return nil
}

// h3app serves HTTP/3 on a Socket: each connection with an http3.RawServerConn
// of srv's and an accept loop of its own, which serves every request stream that
// arrives (quic-go's http3.Server, once shut down, rejects them: see goaway.go).
type h3app struct {
	srv  *http3.Server
	log  *slog.Logger
	wake func()

	mu       sync.Mutex
	draining bool // connections are told to go away
	conns    map[*h3conn]struct{}
	idleC    chan struct{} // closed and replaced when conns empties
}

// h3conn is one connection: its streams are served until it ends.
type h3conn struct {
	conn *quic.Conn
	ctrl *quic.SendStream // the control stream, for the GOAWAY
	wg   sync.WaitGroup   // the accept loops and the handlers
	told bool             // guarded by h3app.mu: the GOAWAY was sent
}

// serveConn starts serving a connection the Listener accepted.
func (a *h3app) serveConn(conn *quic.Conn) {
	raw, err := a.srv.NewRawServerConn(conn)
	if err != nil {
		// The control stream could not be opened: the connection is closing.
		_ = conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
		return
	}
	ctrl, err := controlStream(conn)
	if err != nil {
		a.log.Error("HTTP/3 connection refused: cannot tell it to go away", "event", "quic_h3_refused", "err", err)
		_ = conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
		return
	}
	c := &h3conn{conn: conn, ctrl: ctrl}
	a.mu.Lock()
	a.conns[c] = struct{}{}
	if a.draining {
		c.goAwayLocked()
	}
	a.mu.Unlock()
	c.wg.Go(func() {
		for {
			str, err := conn.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			c.wg.Go(func() { raw.HandleUnidirectionalStream(str) })
		}
	})
	c.wg.Go(func() {
		for {
			str, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			c.wg.Go(func() { raw.HandleRequestStream(str) })
		}
	})
	go func() {
		c.wg.Wait()
		a.remove(c)
	}()
}

// goAwayLocked sends the GOAWAY, once. The write runs beside the caller (it may
// wait for flow control credit) and returns at the latest when the connection
// ends; it is not counted in wg, whose count may already have reached zero.
func (c *h3conn) goAwayLocked() {
	if c.told {
		return
	}
	c.told = true
	go func() { _, _ = c.ctrl.Write(goAwayFrame(goAwayAll)) }()
}

// remove forgets a connection that ended and whose handlers returned.
func (a *h3app) remove(c *h3conn) {
	a.mu.Lock()
	delete(a.conns, c)
	if len(a.conns) == 0 {
		close(a.idleC)
		a.idleC = make(chan struct{})
	}
	a.mu.Unlock()
	a.wake()
}

// serve makes new connections normal again (a resume).
func (a *h3app) serve() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining = false
}

// drain tells every connection to go away.
func (a *h3app) drain() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining = true
	for c := range a.conns {
		c.goAwayLocked()
	}
}

// idle reports whether every connection has ended.
func (a *h3app) idle() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.conns) == 0
}

// waitIdle waits until every connection has ended, for at most d.
func (a *h3app) waitIdle(d time.Duration) bool {
	a.mu.Lock()
	if len(a.conns) == 0 {
		a.mu.Unlock()
		return true
	}
	c := a.idleC
	a.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c:
		return true
	case <-t.C:
		return false
	}
}

// advertise registers addr with srv, as its listener, so that srv.SetQUICHeaders
// advertises its port (http3.Server learns its ports only from the listeners it
// serves); the listener yields no connection. The function returned unregisters
// it.
func advertise(srv *http3.Server, addr net.Addr) (stop func()) {
	pl := &portListener{addr: addr, closed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		_ = srv.ServeListener(pl)
		close(done)
	}()
	return func() {
		pl.Close()
		<-done
	}
}

// portListener is a listener that yields no connection: see advertise.
type portListener struct {
	addr   net.Addr
	once   sync.Once
	closed chan struct{}
}

func (l *portListener) Accept(ctx context.Context) (*quic.Conn, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.closed:
		return nil, quic.ErrServerClosed
	}
}

func (l *portListener) Addr() net.Addr { return l.addr }

func (l *portListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}
