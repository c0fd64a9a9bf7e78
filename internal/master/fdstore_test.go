//go:build linux

package master

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
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
	// A starting child may replace an entry: removed (closed), then stored.
	keys2 := memfd(t)
	f.notifyFDs(cand, []Field{{"FDSTOREREMOVE", "1"}, {"FDNAME", "handover-tls-keys"}})
	f.notifyFDs(cand, storeFields("handover-tls-keys"), keys2)
	if isOpen(keys) || !slices.Equal(f.storedNames(), []string{"stored", "handover-tls-keys"}) {
		t.Errorf("after the replacement: the old one open %v, store %q", isOpen(keys), f.storedNames())
	}
	f.ready(cand)
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
