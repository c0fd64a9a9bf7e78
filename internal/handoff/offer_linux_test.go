package handoff

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// link returns a serving child's link: the end it reads, and the master's copy of
// the other (a descriptor, as the master keeps it in its fd store).
func link(t *testing.T) (serving *Channel, stored int) {
	t.Helper()
	serving, f, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serving.Close()
		unix.Close(fd)
	})
	serving.conn.SetDeadline(time.Now().Add(waitBound))
	return serving, fd
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestOfferNext: the master offers a new child's channel on the serving child's
// link: the serving child receives "next" with one end, and what the new child
// sends on the other (the descriptor OfferNext returns) reaches it, and back.
func TestOfferNext(t *testing.T) {
	serving, stored := link(t)
	fd, err := OfferNext(stored)
	if err != nil {
		t.Fatal(err)
	}
	newChild, err := NewChannel(os.NewFile(uintptr(fd), "offered"))
	if err != nil {
		t.Fatal(err)
	}
	defer newChild.Close()
	newChild.conn.SetDeadline(time.Now().Add(waitBound))
	m, err := serving.Receive()
	if err != nil || m.Verb != Next || len(m.Files) != 1 {
		t.Fatalf("the serving child received %+v, %v; want next with one descriptor", m, err)
	}
	theirs, err := NewChannel(m.Files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	theirs.conn.SetDeadline(time.Now().Add(waitBound))
	if err := theirs.Send(Message{Verb: End}, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := newChild.Receive(); err != nil || got.Verb != End {
		t.Fatalf("the new child received %+v, %v; want end", got, err)
	}
	if err := newChild.Send(Message{Verb: Ready, PID: 42}, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := theirs.Receive(); err != nil || got.Verb != Ready || got.PID != 42 {
		t.Fatalf("the serving child received %+v, %v; want ready 42", got, err)
	}
}

// TestOfferNextRefused: a link whose reader is gone (the serving child died), or
// does not read (its queue is full), refuses the offer without waiting, and leaves
// no descriptor open.
func TestOfferNextRefused(t *testing.T) {
	serving, gone := link(t)
	serving.Close()
	before := openFDs(t)
	if fd, err := OfferNext(gone); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("offer on a link nobody reads: %d, %v; want EPIPE", fd, err)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d descriptors open after the refused offer, %d before", n, before)
	}

	_, full := link(t)
	for i := 0; ; i++ {
		err := unix.Sendmsg(full, []byte(Done), nil, nil, unix.MSG_DONTWAIT)
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil || i == 1<<16 {
			t.Fatalf("filling the link: %d messages, %v", i, err)
		}
	}
	before = openFDs(t)
	if fd, err := OfferNext(full); !errors.Is(err, syscall.EAGAIN) {
		t.Errorf("offer on a full link: %d, %v; want EAGAIN", fd, err)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d descriptors open after the refused offer, %d before", n, before)
	}
}
