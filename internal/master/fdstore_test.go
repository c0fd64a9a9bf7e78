//go:build linux

package master

import (
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// memfd returns a new memfd (owned by the caller, as a received descriptor is).
func memfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// isOpen reports whether fd is an open descriptor of this process.
func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func (f *fakeMaster) notifyFDs(c *child, fields []Field, fds ...int) {
	f.m.handle(notifyEvent{pids: []int{c.pid}, fields: fields, fds: fds})
}

func storeFields(name string) []Field {
	return []Field{{"FDSTORE", "1"}, {"FDPOLL", "0"}, {"FDNAME", name}}
}

func (f *fakeMaster) storedNames() []string {
	var out []string
	for _, s := range f.m.store {
		out = append(out, s.name)
	}
	return out
}

// TestMachineFDStore: the serving child stores descriptors by name; one already
// stored is not stored twice; FDSTOREREMOVE=1 removes (and closes) every one of a
// name; the next child gets the store; a draining child may not change it; what
// is not stored (a BARRIER=1 pipe, a refused descriptor) is closed once handled.
func TestMachineFDStore(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	keys := memfd(t)
	f.notifyFDs(c, storeFields("handover-tls-keys"), keys)
	other := memfd(t)
	f.notifyFDs(c, []Field{{"FDSTORE", "1"}}, other)
	if got := f.storedNames(); !slices.Equal(got, []string{"handover-tls-keys", "stored"}) {
		t.Fatalf("store: %q", got)
	}
	dup, err := unix.FcntlInt(uintptr(keys), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.notifyFDs(c, storeFields("again"), dup)
	if len(f.m.store) != 2 || isOpen(dup) {
		t.Errorf("the same file stored again: store %q, the duplicate open %v", f.storedNames(), isOpen(dup))
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	f.notifyFDs(c, []Field{{"BARRIER", "1"}}, p[1])
	if isOpen(p[1]) || len(f.m.store) != 2 {
		t.Errorf("BARRIER=1: the pipe is still open (%v) or stored (%q)", isOpen(p[1]), f.storedNames())
	}

	// The next child gets the store after the sockets.
	f.upgrade()
	cand := f.m.cand
	if len(cand.stored) != 2 || cand.stored[0].fd != keys || cand.stored[0].name != "handover-tls-keys" {
		t.Fatalf("the new child was started with %+v", cand.stored)
	}
	// A starting child may replace an entry: removed (closed), then stored; held
	// until it is ready, then applied.
	keys2 := memfd(t)
	f.notifyFDs(cand, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", "handover-tls-keys"}})
	f.notifyFDs(cand, storeFields("handover-tls-keys"), keys2)
	if !isOpen(keys) || !isOpen(keys2) || !slices.Equal(f.storedNames(), []string{"handover-tls-keys", "stored"}) {
		t.Errorf("before the new child is ready: the old keys open %v, the new ones %v, store %q", isOpen(keys), isOpen(keys2), f.storedNames())
	}
	f.ready(cand)
	if isOpen(keys) || !slices.Equal(f.storedNames(), []string{"stored", "handover-tls-keys"}) || f.m.store[1].fd != keys2 {
		t.Errorf("after the replacement: the old one open %v, store %q", isOpen(keys), f.storedNames())
	}
	// The old child drains: it may not change the store.
	late := memfd(t)
	f.notifyFDs(c, storeFields("late"), late)
	f.notifyFDs(c, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", "stored"}})
	if isOpen(late) || !slices.Equal(f.storedNames(), []string{"stored", "handover-tls-keys"}) {
		t.Errorf("a draining child changed the store: %q (its descriptor open: %v)", f.storedNames(), isOpen(late))
	}
	// A name systemd would refuse.
	bad := memfd(t)
	f.notifyFDs(cand, storeFields("a:b"), bad)
	if isOpen(bad) || len(f.m.store) != 2 {
		t.Errorf("a name with ':' was stored")
	}
	// Full.
	for len(f.m.store) < maxStored {
		f.notifyFDs(cand, storeFields("filler"), memfd(t))
	}
	over := memfd(t)
	f.notifyFDs(cand, storeFields("over"), over)
	if isOpen(over) || len(f.m.store) != maxStored {
		t.Errorf("a full store took one more (%d stored, the descriptor open %v)", len(f.m.store), isOpen(over))
	}
	for _, s := range f.m.store {
		unix.Close(s.fd)
	}
}

// TestMachineFDStoreHeldAside: the changes a starting child makes to the fd store
// are held aside until it is ready. A new build that removes the TLS keys, stores a
// socket of its own and tries to fill the store, then fails (exits before it is
// ready, or hangs and is killed at the timeout), leaves the store as it was: the
// next child gets exactly the keys, and what the failed one stored is closed. A
// child that becomes ready has its changes applied in order, after those the
// serving child made meanwhile. (Before, a starting child's changes applied at
// once and stayed when it failed.)
func TestMachineFDStoreHeldAside(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	keys := memfd(t)
	f.notifyFDs(c, storeFields("keys"), keys)

	for _, fail := range []string{"exits", "timeout"} {
		reply := f.upgrade()
		bad := f.m.cand
		if len(bad.stored) != 1 || bad.stored[0].fd != keys {
			t.Fatalf("%s: the new child was started with %+v", fail, bad.stored)
		}
		f.notifyFDs(bad, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", "keys"}})
		own := memfd(t)
		f.notifyFDs(bad, storeFields("evil"), own)
		var filler []int
		for i := 0; i < maxStored+4; i++ {
			filler = append(filler, memfd(t))
		}
		f.notifyFDs(bad, storeFields("filler"), filler...)
		if !slices.Equal(f.storedNames(), []string{"keys"}) || !isOpen(keys) {
			t.Errorf("%s: while the new child starts: store %q, the keys open %v", fail, f.storedNames(), isOpen(keys))
		}
		if fail == "exits" {
			f.exit(bad, 1)
		} else {
			f.fire(timerReadyTimeout, bad)
			f.killedBy(bad, syscall.SIGKILL)
		}
		if r := <-reply; r.Err == nil {
			t.Fatalf("%s: the upgrade succeeded", fail)
		}
		if !slices.Equal(f.storedNames(), []string{"keys"}) || f.m.store[0].fd != keys || !isOpen(keys) {
			t.Errorf("%s: after the failed child: store %q, the keys open %v", fail, f.storedNames(), isOpen(keys))
		}
		for _, fd := range append(filler, own) {
			if isOpen(fd) {
				t.Errorf("%s: descriptor %d the failed child stored is still open", fail, fd)
			}
		}
	}

	// The next child gets the keys; its own changes apply once it is ready, after
	// the serving child's.
	f.upgrade()
	cand := f.m.cand
	if len(cand.stored) != 1 || cand.stored[0].fd != keys {
		t.Fatalf("the next child was started with %+v", cand.stored)
	}
	mine := memfd(t)
	f.notifyFDs(cand, storeFields("mine"), mine)
	f.notifyFDs(cand, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", "served"}})
	served := memfd(t)
	f.notifyFDs(c, storeFields("served"), served)
	if !slices.Equal(f.storedNames(), []string{"keys", "served"}) {
		t.Errorf("the serving child's change: store %q", f.storedNames())
	}
	f.ready(cand)
	if !slices.Equal(f.storedNames(), []string{"keys", "mine"}) || isOpen(served) || !isOpen(mine) {
		t.Errorf("once the new child is ready: store %q (the serving child's removed: %v)", f.storedNames(), !isOpen(served))
	}
	for _, s := range f.m.store {
		unix.Close(s.fd)
	}
}

// TestMachineFDStoreStateOfDrainingChild: a child that drains (the master stopped
// it) may leave the application's state (handoff.StateName), replacing what was
// stored under it, and nothing else; the next child, the replacement of a serving
// child that died, gets it; a link a child stores (handoff.LinkName) is passed to the
// next child only once the child that stored it took over.
func TestMachineFDStoreStateOfDrainingChild(t *testing.T) {
	f := newFake(t, nil)
	c := f.serving()
	link := memfd(t)
	f.notifyFDs(c, storeFields(handoff.LinkName), link)
	f.upgrade()
	cand := f.m.cand
	if len(cand.stored) != 1 || cand.stored[0].fd != link {
		t.Fatalf("the new child was started with %+v, not the serving child's link", cand.stored)
	}
	link2 := memfd(t)
	f.notifyFDs(cand, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", handoff.LinkName}})
	f.notifyFDs(cand, storeFields(handoff.LinkName), link2)
	if f.m.store[0].fd != link {
		t.Fatalf("a starting child's link replaced the serving child's")
	}
	f.ready(cand)
	if len(f.m.store) != 1 || f.m.store[0].fd != link2 || isOpen(link) {
		t.Fatalf("after the takeover: store %+v, the old link open %v", f.m.store, isOpen(link))
	}

	// The old child drains: its state is taken (replacing an older one), anything
	// else is refused.
	state1, state2, other := memfd(t), memfd(t), memfd(t)
	f.notifyFDs(c, storeFields(handoff.StateName), state1)
	f.notifyFDs(c, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", handoff.StateName}})
	f.notifyFDs(c, storeFields(handoff.StateName), state2)
	f.notifyFDs(c, storeFields("other"), other)
	if !slices.Equal(f.storedNames(), []string{handoff.LinkName, handoff.StateName}) || f.m.store[1].fd != state2 || isOpen(state1) || isOpen(other) {
		t.Fatalf("the draining child's changes: store %q, the first state open %v, the other open %v", f.storedNames(), isOpen(state1), isOpen(other))
	}
	f.exit(c, 0)

	// The serving child dies during its probation: the last good build, started
	// in its place, gets the state.
	f.exit(cand, 1)
	if f.m.cand == nil {
		t.Fatal("no replacement started")
	}
	got := f.m.cand.stored
	if len(got) != 2 || got[1].name != handoff.StateName || got[1].fd != state2 {
		t.Fatalf("the restarted child was started with %+v", got)
	}
	for _, s := range f.m.store {
		unix.Close(s.fd)
	}
}
