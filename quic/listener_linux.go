package handoverquic

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
)

// Listener is a QUIC listener on a Socket's transport (Socket.Listen,
// Socket.ListenEarly) that keeps count of the connections it accepted: the
// generation knows when they have all ended, and closes those still open when it
// finishes. It is for raw QUIC servers; ServeHTTP3 makes its own.
//
// While its generation is the newest, Accept returns every new connection. Once
// the generation has handed the socket over (Socket.Draining is closed), new
// connections reach the newer generation; Accept still returns the connections
// whose handshake began here before the handover. The application learns of the
// drain from Socket.Draining, and should tell its clients to move in its own
// protocol's way (as HTTP/3 does with GOAWAY) while it keeps serving them. The
// generation finishes as soon as every connection accepted here has ended (and
// ServeHTTP3's, if any), or at the drain deadline, when the connections still
// open are closed with the error code and message of SetDeadlineError: their
// clients get a CONNECTION_CLOSE. Accept then returns quic.ErrServerClosed.
type Listener struct {
	ln   quicListener
	wake func() // tells the Socket a connection ended

	mu      sync.Mutex
	conns   map[*quic.Conn]struct{}
	code    quic.ApplicationErrorCode
	msg     string
	expired bool
}

// quicListener is a *quic.Listener or a *quic.EarlyListener.
type quicListener interface {
	Accept(context.Context) (*quic.Conn, error)
	Addr() net.Addr
	Close() error
}

// deadlineMessage is the reason phrase a raw QUIC connection gets when the drain
// deadline closes it, unless SetDeadlineError says otherwise.
const deadlineMessage = "server generation finished (drain deadline)"

func newListener(ln quicListener, wake func()) *Listener {
	return &Listener{ln: ln, wake: wake, conns: map[*quic.Conn]struct{}{}, msg: deadlineMessage}
}

// Listen listens for QUIC connections on the Socket's transport, as
// quic.Transport.Listen does, and tracks them (see Listener).
func (s *Socket) Listen(tlsConf *tls.Config, conf *quic.Config) (*Listener, error) {
	ln, err := s.tr.Listen(tlsConf, conf)
	if err != nil {
		return nil, err
	}
	return s.addListener(ln)
}

// ListenEarly listens for QUIC connections on the Socket's transport, as
// quic.Transport.ListenEarly does (Accept returns connections before their
// handshake completes, for 0.5-RTT and 0-RTT data), and tracks them (see
// Listener).
func (s *Socket) ListenEarly(tlsConf *tls.Config, conf *quic.Config) (*Listener, error) {
	ln, err := s.tr.ListenEarly(tlsConf, conf)
	if err != nil {
		return nil, err
	}
	return s.addListener(ln)
}

// errSocketDone is returned by Listen and ListenEarly on a finished Socket.
var errSocketDone = errors.New("handoverquic: the Socket has finished")

// addListener tracks ln's connections for the Socket.
func (s *Socket) addListener(ln quicListener) (*Listener, error) {
	l := newListener(ln, s.wakeUp)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == sockDone {
		ln.Close()
		return nil, errSocketDone
	}
	s.listeners = append(s.listeners, l)
	return l, nil
}

// Accept returns the next connection, and tracks it until it ends. Once the
// Socket has finished (or Close was called), it returns quic.ErrServerClosed.
func (l *Listener) Accept(ctx context.Context) (*quic.Conn, error) {
	conn, err := l.ln.Accept(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	if l.expired {
		code, msg := l.code, l.msg
		l.mu.Unlock()
		_ = conn.CloseWithError(code, msg)
		return nil, quic.ErrServerClosed
	}
	l.conns[conn] = struct{}{}
	l.mu.Unlock()
	context.AfterFunc(conn.Context(), func() {
		l.mu.Lock()
		delete(l.conns, conn)
		l.mu.Unlock()
		l.wake()
	})
	return conn, nil
}

// SetDeadlineError sets the application error code and reason phrase of the
// CONNECTION_CLOSE that connections still open when the generation finishes get
// (the default: code 0, "server generation finished (drain deadline)").
func (l *Listener) SetDeadlineError(code quic.ApplicationErrorCode, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.code, l.msg = code, msg
}

// Addr is the shared socket's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting: Accept returns quic.ErrServerClosed. Connections already
// accepted are not closed, and still counted.
func (l *Listener) Close() error { return l.ln.Close() }

// idle reports whether every connection accepted has ended.
func (l *Listener) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns) == 0
}

// expire stops accepting and closes every connection still open.
func (l *Listener) expire() {
	l.mu.Lock()
	l.expired = true
	code, msg := l.code, l.msg
	conns := make([]*quic.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	l.ln.Close()
	for _, c := range conns {
		_ = c.CloseWithError(code, msg)
	}
}
