package graceful

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// deadliner is a listener whose Accept can be interrupted without closing it.
type deadliner interface{ SetDeadline(time.Time) error }

// listener tracks the connections it accepts. While the Drainer drains it does not
// accept: Accept waits until the drain is taken back or the listener is closed. A
// listener that cannot stop accepting without closing (one of the application's
// that wraps a socket: tls.NewListener, a struct embedding a net.Listener) is
// closed by the drain instead.
type listener struct {
	// Listener is the wrapped listener; once the listener was parked and a drain
	// taken back, a new one on the same socket (see park): read it with d.mu held.
	net.Listener
	d       *Drainer
	parked  *os.File      // while paused, the socket, its listener closed (park); guarded by d.mu
	paused  bool          // guarded by d.mu
	wake    chan struct{} // closed and replaced by restart; guarded by d.mu
	closed  atomic.Bool   // closed for good (by the application or a drain)
	byDrain atomic.Bool   // closed by a drain; set before closed
	held    chan struct{} // a prepared generation's: no Accept before it is closed
	quiet   bool          // paused by quiesce; guarded by d.mu
	in      inbox         // connections handed over, for Accept (connpass.go)
}

// stop interrupts an Accept in progress without closing the socket; false if the
// listener cannot do that (the caller closes it instead). d.mu is held.
func (l *listener) stop() bool {
	dl, ok := l.Listener.(deadliner)
	if !ok {
		return false
	}
	return dl.SetDeadline(aLongTimeAgo) == nil
}

// restart lets Accept accept again. d.mu is held.
func (l *listener) restart() {
	if l.closed.Load() {
		return
	}
	l.unpark()
	if dl, ok := l.Listener.(deadliner); ok {
		dl.SetDeadline(time.Time{})
	}
	l.in.kicked = false
	l.paused = false
	close(l.wake)
	l.wake = make(chan struct{})
}

var aLongTimeAgo = time.Unix(1, 0)

// Accept accepts a connection and tracks it. A connection accepted just as a drain
// starts is still tracked and served: it reached this process, so it gets an answer.
func (l *listener) Accept() (net.Conn, error) {
	for {
		l.d.mu.Lock()
		paused, wake, inner := l.paused, l.wake, l.Listener
		var rc arrival
		var got bool
		if !l.closed.Load() {
			rc, got = l.received()
		}
		l.d.mu.Unlock()
		if got {
			return l.track(rc.nc, true, rc.key), nil
		}
		if l.closed.Load() {
			return nil, net.ErrClosed
		}
		if paused {
			<-wake // until the drain is taken back; Close wakes it too
			if l.closed.Load() {
				return nil, net.ErrClosed
			}
			continue
		}
		if l.held != nil {
			select {
			case <-l.held: // committed
			case <-wake:
				continue // closed, or a drain ended
			}
		}
		l.d.accepting.Add(1)
		c, err := inner.Accept()
		if err != nil {
			l.d.acceptEnded()
			var ne net.Error
			switch {
			case l.closed.Load():
				// Whatever the wrapped listener says (an application's may
				// return an error of its own), it was closed.
				return nil, net.ErrClosed
			case errors.As(err, &ne) && ne.Timeout():
				continue // a drain interrupted it; the listener is open
			case l.swapped(inner):
				continue // a drain parked it (or took it back since)
			}
			return nil, err
		}
		return l.track(c, false, ""), nil
	}
}

// Close closes the listener for good; an Accept waiting out a drain, or in
// progress, returns net.ErrClosed.
func (l *listener) Close() error {
	l.d.mu.Lock()
	if l.closed.CompareAndSwap(false, true) {
		close(l.wake) // for good: restart never runs on a closed listener
	}
	ncs := l.takeInbox()
	inner, parked := l.Listener, l.parked
	l.parked = nil
	l.d.mu.Unlock()
	l.d.flushInboxes([]*listener{l}, [][]arrival{ncs})
	if parked != nil {
		return parked.Close() // its listener was closed as it was parked
	}
	return inner.Close()
}

// Addr returns the wrapped listener's address.
func (l *listener) Addr() net.Addr {
	l.d.mu.Lock()
	defer l.d.mu.Unlock()
	return l.Listener.Addr()
}

// parkable is a listener park can close and make again: a *net.TCPListener or a
// *net.UnixListener.
type parkable interface {
	net.Listener
	syscall.Conn
}

// park closes the listener's socket's listener while a drain pauses it, and keeps
// the socket in a file the Go runtime's poller does not watch (Linux; elsewhere it
// does nothing). A paused listener that stays open stays watched: every connection
// that arrives for the new generation would wake a thread of this one, which
// drains or stands by for its successor's probation (10 s by default), in
// proportion to the load. A drain taken back (restart) makes a new listener of
// the file (unpark). Only a *net.TCPListener or *net.UnixListener is parked: the
// application's own listeners cannot be made again; a unix one is told first not
// to remove its socket file, which the new generation serves. d.mu is held.
func (l *listener) park() {
	if !l.paused || l.parked != nil || l.closed.Load() {
		return
	}
	var pl parkable
	switch ln := l.Listener.(type) {
	case *net.TCPListener:
		pl = ln
	case *net.UnixListener:
		pl = ln
	default:
		return
	}
	f, err := parkedFile(pl)
	if err != nil {
		return // it stays open, and watched
	}
	if ul, ok := pl.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	l.parked = f
	pl.Close() // an Accept in it returns, and waits out the drain (swapped)
}

// unpark makes a new listener of the parked socket, for the new listener and
// the Set from then on (Drainer.reopened). d.mu is held.
func (l *listener) unpark() {
	f := l.parked
	if f == nil {
		return
	}
	l.parked = nil
	ln, err := net.FileListener(f)
	f.Close()
	old := l.Listener
	if err == nil {
		l.Listener = ln
	} // else (out of descriptors, say) Accept returns the closed listener's error
	if l.d.reopened != nil {
		l.d.reopened(old, ln, err)
	}
}

// swapped reports whether inner, a listener Accept took, was parked (or made
// again) since.
func (l *listener) swapped(inner net.Listener) bool {
	l.d.mu.Lock()
	defer l.d.mu.Unlock()
	return l.parked != nil || l.Listener != inner
}

// closeForDrain closes the listener for good at a drain.
func (l *listener) closeForDrain() {
	l.byDrain.Store(true)
	l.Close()
}

// quiesce stops the listeners accepting at a handover's last step, just before the
// successor hears it is the current generation, without draining: connections that
// arrive from then on wait in the socket's queue for the successor, instead of
// racing to the one of two processes that accepts first. A listener that cannot
// stop without closing accepts until the drain. The drain takes the pause over
// (stopAccepting); a handover that fails ends it (unquiesce). Does nothing while
// draining.
func (d *Drainer) quiesce() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	if d.draining.Load() || d.quiesced {
		return
	}
	d.quiesced = true
	for _, l := range d.listeners {
		if !l.closed.Load() && !l.paused && l.stop() {
			l.paused, l.quiet = true, true // Accept, interrupted, waits (d.mu is held)
		}
	}
}

// unquiesce lets the listeners quiesce paused accept again, unless a drain took them
// over since.
func (d *Drainer) unquiesce() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.quiesced {
		return
	}
	d.quiesced = false
	for _, l := range d.listeners {
		if l.quiet {
			l.quiet = false
			l.restart()
		}
	}
}
