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
// not stored twice; at most maxStored are kept.

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

// fdStore handles the FDSTORE=1 and FDSTOREREMOVE=1 of a notification from c (a
// removal first, then the store, when a datagram has both). The descriptors it
// stores are taken from fds (set to -1); the caller closes the rest.
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
	if c.role != roleServing && c.role != roleCandidate {
		m.log.Warn("fd store: refused: only the serving child (or one starting) may change it", "event", "fdstore_refused", "child", c.pid, "reason", "not_current")
		return
	}
	if named && (name == "" || !handoff.ValidName(name)) {
		// systemd ignores such a name; so does the master, and the whole request.
		m.log.Warn("fd store: refused: a name is printable ASCII without ':', at most 255 characters", "event", "fdstore_refused", "child", c.pid, "reason", "bad_name")
		return
	}
	if remove && named {
		kept, removed := m.store[:0], 0
		for _, s := range m.store {
			if s.name == name {
				unix.Close(s.fd)
				removed++
				continue
			}
			kept = append(kept, s)
		}
		clear(m.store[len(kept):])
		m.store = kept
		m.log.Info("fd store: removed", "event", "fdstore_removed", "child", c.pid, "name", name, "count", removed)
	}
	if !store {
		return
	}
	if !named {
		name = defaultStoredName
	}
	added, full := 0, 0
	for i, fd := range fds {
		switch {
		case fd < 0 || m.stores(fd):
			continue
		case len(m.store) >= maxStored:
			full++
			continue
		}
		m.store = append(m.store, storedFD{name: name, fd: fd})
		fds[i] = -1
		added++
	}
	if full > 0 {
		m.log.Warn("fd store: full; descriptors closed", "event", "fdstore_refused", "child", c.pid, "reason", "full", "name", name, "count", full, "max", maxStored)
	}
	if added > 0 {
		m.log.Info("fd store: stored", "event", "fdstore", "child", c.pid, "name", name, "count", added, "stored", len(m.store))
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
