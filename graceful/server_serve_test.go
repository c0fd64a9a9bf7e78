//go:build linux

package graceful

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// rewording is a listener of an application's that holds another in a field and
// reports Accept's errors in words of its own.
type rewording struct{ inner net.Listener }

func (l rewording) Accept() (net.Conn, error) {
	c, err := l.inner.Accept()
	if err != nil {
		return nil, fmt.Errorf("no connection: %v", err)
	}
	return c, nil
}
func (l rewording) Close() error   { return l.inner.Close() }
func (l rewording) Addr() net.Addr { return l.inner.Addr() }

// TestServeWrappedListener: Serve on a listener of the application's that wraps a
// socket and cannot stop accepting without closing (a struct embedding it, one that
// rewords its errors) returns http.ErrServerClosed once a drain that could be taken
// back (the Upgrader's after a handover) has closed it and the request in flight
// has been answered; it used to return the listener's "use of closed network
// connection" as the drain began (issue 17).
func TestServeWrappedListener(t *testing.T) {
	useTestUpgrader(t)
	for name, wrap := range map[string]func(net.Listener) net.Listener{
		"embedding": func(l net.Listener) net.Listener { return struct{ net.Listener }{l} },
		"rewording": func(l net.Listener) net.Listener { return rewording{l} },
	} {
		t.Run(name, func(t *testing.T) {
			release := make(chan struct{})
			s := &Server{Server: http.Server{Handler: holdHandler(release)}, KeepAliveGrace: testGrace}
			s.drainer.clock = newFakeClock()
			ln := listenLoopback(t)
			served := make(chan error, 1)
			go func() { served <- s.Serve(wrap(ln)) }()
			c := dialClient(t, ln.Addr().String())
			c.send(t, "/hold")
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			first := make([]byte, len("first\n"))
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatal(err)
			}

			// The Upgrader's drain after a handover (target.drain, not hard).
			s.drainer.stopAccepting(false)
			s.startDrain()
			expectRefused(t, ln.Addr().String()) // closed: it cannot pause
			close(release)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(first)+string(rest) != "first\nlast\n" {
				t.Errorf("the response in flight: %q, %v", string(first)+string(rest), err)
			}
			select {
			case err := <-served:
				t.Fatalf("Serve returned (%v) while a connection was open", err)
			default:
			}
			c.Close() // the last connection ends: the drain is over
			select {
			case err := <-served:
				if !errors.Is(err, http.ErrServerClosed) {
					t.Errorf("Serve: %v, want http.ErrServerClosed", err)
				}
			case <-time.After(waitBound):
				t.Fatal("Serve did not return once drained")
			}
			if n := s.drainer.Counts().Total(); n != 0 {
				t.Errorf("Serve returned with %d connections open", n)
			}
		})
	}
}
