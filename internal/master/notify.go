//go:build linux

package master

import (
	"strconv"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// Field is one KEY=VALUE assignment of an sd_notify datagram.
type Field struct {
	Key, Value string
}

// maxNotify is the largest datagram read, as systemd reads them (NOTIFY_BUFFER_MAX).
const maxNotify = 4096

// ParseNotify splits an sd_notify datagram into its assignments, in order. Lines
// are separated by "\n"; empty lines and lines without "=" or with an empty key are
// skipped, as systemd skips them. A NUL byte ends the message.
func ParseNotify(b []byte) []Field {
	s := string(b)
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	var out []Field
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\r") {
			continue
		}
		out = append(out, Field{Key: k, Value: v})
	}
	return out
}

// onNotify handles an sd_notify datagram from a child (or a process it started).
// The descriptors it carries are closed once it is handled (the answer to
// BARRIER=1), but those the fd store keeps.
func (m *machine) onNotify(ev notifyEvent) {
	defer func() { closeFDs(ev.fds) }()
	var c *child
	pids := ev.pids
	if len(pids) == 1 && m.children[pids[0]] == nil && m.ancestors != nil {
		pids = m.ancestors(pids[0])
	}
	for _, pid := range pids {
		if c = m.children[pid]; c != nil {
			break
		}
	}
	if c == nil {
		m.log.Debug("notification from a process that is not a child", "event", "notify_ignored", "sender", ev.pids[0])
		return
	}
	m.fdStore(c, ev.fields, ev.fds)
	waits := canPrepare(c, ev.fields)
	ready := false
	for _, f := range ev.fields {
		switch f.Key {
		case "READY":
			ready = ready || f.Value == "1"
		case "STATUS":
			c.text = f.Value
			if c == m.serving {
				m.sd("STATUS=" + m.statusLine())
			}
		case "RELOADING":
			if f.Value == "1" && c == m.serving && m.up == nil {
				c.reloading = true
				m.log.Info("the child is reloading", "event", "child_reloading", "child", c.pid)
				m.sd("RELOADING=1\n" + sdnotify.MonotonicUsec())
			}
		case "STOPPING":
			if f.Value == "1" && !c.stopSent && !m.stopping {
				m.log.Warn("the child says it is stopping, unasked", "event", "child_stopping", "child", c.pid, "gen", c.gen)
			}
		case "WATCHDOG":
			if f.Value == "1" {
				c.lastPing = time.Now()
				if c == m.serving && m.watchdog {
					m.sd("WATCHDOG=1")
				}
			}
		case "MAINPID":
			if f.Value != strconv.Itoa(c.pid) {
				m.log.Debug("MAINPID from a child ignored: the master is the main process", "event", "mainpid_ignored", "child", c.pid, "mainpid", f.Value)
			}
		case "ERRNO":
			m.log.Warn("the child reports an error", "event", "child_errno", "child", c.pid, "errno", f.Value)
		}
	}
	if !ready {
		return
	}
	switch {
	case c == m.cand && c.role == roleCandidate && !c.killed && !c.reaped && !m.stopping:
		// (A child that said READY=1 and died before this was read is not ready: its
		// exit is being handled.)
		switch {
		case c.commit != nil:
			m.onPrepared(c, waits)
		case c.prepared.IsZero():
			m.takeOver(c, "notify")
		}
	case c == m.serving && c.reloading:
		c.reloading = false
		if m.up == nil {
			m.sd("READY=1\nSTATUS=" + m.statusLine())
		}
	}
}
