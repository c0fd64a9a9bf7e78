//go:build linux

package master

import (
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

// The master's fd store, as systemd keeps one (sd_notify(3): FDSTORE=1, FDNAME=,
// FDSTOREREMOVE=1): the serving child (or one starting) hands the master
// descriptors to keep, and every later child gets them after the sockets, in
// LISTEN_FDS with their names in LISTEN_FDNAMES. A child built with handover's
// library keeps its TLS session-ticket keys there, so that they survive its
// successors and its crash. A descriptor already stored (the same open file) is
// not stored twice; at most maxStored are kept. A child that drains may change
// nothing but the application's state (handoff.StateName): the state it leaves as
// it stops, which the next child to start without another one takes out (a
// restart after a crash, say).

// maxStored bounds the fd store, as FileDescriptorStoreMax= bounds systemd's.
const maxStored = 16

// defaultStoredName is the name of a descriptor stored without FDNAME=, as
// systemd names it.
const defaultStoredName = "stored"

// storedFD is one descriptor in the fd store (close-on-exec; passed to children
// explicitly). Kept as a number, never an *os.File: Fd would switch a stored
// socket, shared with the child that stored it, to blocking mode.
type storedFD struct {
	name string
	fd   int
}

// A child that is starting (a candidate) may change the store too, but its changes
// are held aside (child.held) until it is ready and takes over: a new build that
// fails before that (it exits, hangs, is abandoned) leaves the store as it was, and
// the descriptors it stored are closed. Its changes are applied, in order, when it
// takes over, on top of what the serving child may have changed meanwhile.

// storeOp is one change of the fd store: a removal of every descriptor named name,
// or the store of fds under name.
type storeOp struct {
	remove bool
	name   string
	fds    []int
}

// fdStore handles the FDSTORE=1 and FDSTOREREMOVE=1 of a notification from c (a
// removal first, then the store, when a datagram has both): applied at once for the
// serving child, held aside for one that is starting. The descriptors it stores or
// holds are taken from fds (set to -1); the caller closes the rest.
func (m *machine) fdStore(c *child, fields []Field, fds []int) {
	var store, remove bool
	name, named := "", false
	for _, f := range fields {
		switch f.Key {
		case "FDSTORE":
			store = f.Value == "1"
		case "FDSTOREREMOVE":
			remove = f.Value == "1"
		case "FDNAME":
			name, named = f.Value, true
		}
	}
	if !store && !remove {
		return
	}
	// A child the master stopped leaves its last state once drained (when no newer
	// child took it over), as a service stopped by systemd does: it waits in the
	// store for the next child to start without one.
	leaves := c.role == roleOld && named && name == handoff.StateName
	if c.role != roleServing && c.role != roleCandidate && !leaves {
		m.log.Warn("fd store: refused: only the serving child (or one starting) may change it", "event", "fdstore_refused", "child", c.pid, "reason", "not_current")
		return
	}
	if named && (name == "" || !handoff.ValidName(name)) {
		// systemd ignores such a name; so does the master, and the whole request.
		m.log.Warn("fd store: refused: a name is printable ASCII without ':', at most 255 characters", "event", "fdstore_refused", "child", c.pid, "reason", "bad_name")
		return
	}
	var ops []storeOp
	if remove && named {
		ops = append(ops, storeOp{remove: true, name: name})
	}
	if store {
		if !named {
			name = defaultStoredName
		}
		op := storeOp{name: name}
		for i, fd := range fds {
			if fd >= 0 {
				op.fds = append(op.fds, fd)
				fds[i] = -1
			}
		}
		ops = append(ops, op)
	}
	if c.role == roleCandidate {
		m.holdStore(c, ops)
		return
	}
	for _, op := range ops {
		m.applyStore(c, op)
	}
}

// holdStore keeps ops, changes of the store by c (a child that is starting), until
// c takes over (applyHeld) or fails (dropHeld). It holds at most maxStored
// descriptors; more are closed.
func (m *machine) holdStore(c *child, ops []storeOp) {
	n := 0
	for _, op := range c.held {
		n += len(op.fds)
	}
	for _, op := range ops {
		if extra := n + len(op.fds) - maxStored; extra > 0 {
			closeFDs(op.fds[len(op.fds)-extra:])
			op.fds = op.fds[:len(op.fds)-extra]
			m.log.Warn("fd store: full; descriptors closed", "event", "fdstore_refused", "child", c.pid, "reason", "full", "name", op.name, "count", extra, "max", maxStored)
		}
		n += len(op.fds)
		c.held = append(c.held, op)
		m.log.Info("fd store: change held until the child is ready", "event", "fdstore_held", "child", c.pid, "name", op.name, "remove", op.remove, "count", len(op.fds))
	}
}

// applyHeld applies the changes c held aside, now that it takes over.
func (m *machine) applyHeld(c *child) {
	for _, op := range c.held {
		m.applyStore(c, op)
	}
	c.held = nil
}

// dropHeld discards the changes c held aside (it failed before it was ready) and
// closes the descriptors it stored.
func (m *machine) dropHeld(c *child) {
	if len(c.held) == 0 {
		return
	}
	n := 0
	for _, op := range c.held {
		closeFDs(op.fds)
		n += len(op.fds)
	}
	m.log.Info("fd store: the changes of a child that was never ready are discarded", "event", "fdstore_discarded", "child", c.pid, "changes", len(c.held), "closed", n)
	c.held = nil
}

// applyStore applies op to the store, for c; the descriptors of op it does not
// store (the same file stored already, the store full) are closed.
func (m *machine) applyStore(c *child, op storeOp) {
	if op.remove {
		kept, removed := m.store[:0], 0
		for _, s := range m.store {
			if s.name == op.name {
				unix.Close(s.fd)
				removed++
				continue
			}
			kept = append(kept, s)
		}
		clear(m.store[len(kept):])
		m.store = kept
		m.log.Info("fd store: removed", "event", "fdstore_removed", "child", c.pid, "name", op.name, "count", removed)
		return
	}
	added, full := 0, 0
	for _, fd := range op.fds {
		switch {
		case m.stores(fd):
			unix.Close(fd)
			continue
		case len(m.store) >= maxStored:
			unix.Close(fd)
			full++
			continue
		}
		m.store = append(m.store, storedFD{name: op.name, fd: fd})
		added++
	}
	if full > 0 {
		m.log.Warn("fd store: full; descriptors closed", "event", "fdstore_refused", "child", c.pid, "reason", "full", "name", op.name, "count", full, "max", maxStored)
	}
	if added > 0 {
		m.log.Info("fd store: stored", "event", "fdstore", "child", c.pid, "name", op.name, "count", added, "stored", len(m.store))
	}
}

// stores reports whether the store holds fd's file already.
func (m *machine) stores(fd int) bool {
	var a unix.Stat_t
	if unix.Fstat(fd, &a) != nil {
		return false
	}
	for _, s := range m.store {
		var b unix.Stat_t
		if unix.Fstat(s.fd, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
			return true
		}
	}
	return false
}
