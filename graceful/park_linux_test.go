package graceful

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDrainParksUnixListener: a unix listener paused by a drain that can be taken
// back is parked as a TCP one is: closed without removing its socket file (the new
// generation serves it), its socket kept; a connection made meanwhile waits in the
// socket's queue; taken back, the drain makes a new listener on the same socket,
// which accepts that connection, and reports it (reopened).
func TestDrainParksUnixListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path) // removes its file when closed, unless told not to
	if err != nil {
		t.Fatal(err)
	}
	d := &Drainer{clock: newFakeClock()}
	var reopened net.Listener
	d.reopened = func(old, nl net.Listener, err error) {
		if old != ln || err != nil {
			t.Errorf("reopened(%v, %v, %v); want the parked listener replaced", old, nl, err)
		}
		reopened = nl
	}
	tl := d.Listener(ln)
	defer tl.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		defer close(accepted)
		if c, err := tl.Accept(); err == nil {
			accepted <- c
		}
	}()

	d.stopAccepting(false)
	d.mu.Lock()
	parked := tl.(*listener).parked != nil
	d.mu.Unlock()
	if !parked {
		t.Fatal("the unix listener is not parked")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the socket file after parking: %v", err)
	}
	c, err := net.Dial("unix", path) // the socket listens on: the connection waits
	if err != nil {
		t.Fatalf("dial while parked: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}

	d.resume()
	select {
	case a := <-accepted:
		if a == nil {
			t.Fatal("Accept failed after the drain was taken back")
		}
		defer a.Close()
		a.SetReadDeadline(time.Now().Add(waitBound))
		b := make([]byte, 1)
		if _, err := io.ReadFull(a, b); err != nil || b[0] != 'x' {
			t.Fatalf("the connection accepted after the resume: %q, %v; want the one made while parked", b, err)
		}
	case <-time.After(waitBound):
		t.Fatal("no Accept after the drain was taken back")
	}
	if reopened == nil || reopened == ln {
		t.Fatalf("reopened %v; want a new listener", reopened)
	}
	if got := d.Counts().Accepted; got != 1 {
		t.Errorf("Accepted = %d, want 1", got)
	}
}
