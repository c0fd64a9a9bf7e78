//go:build linux

package master

import (
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// servingLink returns a serving child's link: the end it reads, and the master's
// copy of the other, as the fd store keeps it.
func servingLink(t *testing.T) (*handoff.Channel, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	serving, err := handoff.NewChannel(os.NewFile(uintptr(fds[0]), "link"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(serving.Close)
	return serving, fds[1]
}

// TestOfferNext: a new child whose build takes a channel of the master's making
// gets the fd store with that channel (handoff.NextName) in place of the serving
// child's link, and the serving child gets "next" with the other end of it; the
// store itself is unchanged, and the master's copy of the channel is closed once
// passed. A child whose build does not take it, a store without a link, and a link
// whose reader died (a restart after a crash) leave the store to pass as it is.
func TestOfferNext(t *testing.T) {
	serving, linkFD := servingLink(t)
	keys, state := memfd(t), memfd(t)
	defer unix.Close(keys)
	defer unix.Close(state)
	store := []storedFD{{name: "handover-ticket-keys", fd: keys}, {name: handoff.LinkName, fd: linkFD}, {name: handoff.StateName, fd: state}}
	orig := slices.Clone(store)

	pass, closeOffer := offerNext(store, false)
	closeOffer()
	if !slices.Equal(pass, orig) {
		t.Errorf("a build without the mark gets %v; want the store %v", pass, orig)
	}

	pass, closeOffer = offerNext(store, true)
	if !slices.Equal(store, orig) {
		t.Errorf("the store became %v", store)
	}
	if len(pass) != 3 || pass[0] != orig[0] || pass[2] != orig[2] || pass[1].name != handoff.NextName() || pass[1].fd == linkFD {
		t.Fatalf("passed %v; want the store with %s in place of the link", pass, handoff.NextName())
	}
	offered := pass[1].fd
	newFD, err := unix.Dup(offered)
	if err != nil {
		t.Fatal(err)
	}
	closeOffer()
	if isOpen(offered) {
		t.Errorf("the master's copy of the channel (fd %d) is open after it was passed", offered)
	}
	newChild, err := handoff.NewChannel(os.NewFile(uintptr(newFD), "new child"))
	if err != nil {
		t.Fatal(err)
	}
	defer newChild.Close()
	serving.SetDeadline(time.Now().Add(10 * time.Second))
	m, err := serving.Receive()
	if err != nil || m.Verb != handoff.Next || len(m.Files) != 1 {
		t.Fatalf("the serving child received %+v, %v; want next with one descriptor", m, err)
	}
	theirs, err := handoff.NewChannel(m.Files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	if err := theirs.Send(handoff.Message{Verb: handoff.End}, time.Second); err != nil {
		t.Fatal(err)
	}
	newChild.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := newChild.Receive(); err != nil || got.Verb != handoff.End {
		t.Fatalf("the new child received %+v, %v; want what the serving child sent", got, err)
	}

	noLink := []storedFD{orig[0], orig[2]}
	if pass, _ := offerNext(noLink, true); !slices.Equal(pass, noLink) {
		t.Errorf("a store without a link passes as %v", pass)
	}
	serving.Close()
	if pass, _ := offerNext(store, true); !slices.Equal(pass, orig) {
		t.Errorf("with the serving child gone, the store passes as %v; want it as it is", pass)
	}
}
