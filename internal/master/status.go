//go:build linux

package master

import (
	"fmt"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/wire"
)

// What the master shows: its status for `handover status`, its status line for
// systemd, and the records of its upgrades.

// record lists rec, now that it has an outcome.
func (m *machine) record(rec *wire.Upgrade) {
	m.records = append(m.records, rec)
	if len(m.records) > recordsKept {
		m.records = m.records[len(m.records)-recordsKept:]
	}
}

// status is what handover status shows.
func (m *machine) status() wire.Status {
	st := wire.Status{
		PID:        m.pid,
		Generation: m.gen,
		State:      m.state,
		Executable: m.cfg.Prog,
		Systemd:    m.systemd,
		Listeners:  m.sockets,
		Restarts:   m.restarts,
	}
	if m.lastErr != nil {
		st.LastError = m.lastErr.Error()
	}
	if exe, err := m.resolve(m.cfg.Prog); err == nil {
		st.Executable = exe
	}
	if m.serving != nil {
		st.Child = m.serving.pid
		st.ChildExecutable = m.childExecutable()
	}
	switch {
	case m.state == statePrepared && m.cand != nil:
		st.Prepared = m.cand.pid
	case m.up != nil && m.cand != nil:
		st.Upgrading = m.cand.pid
	}
	for _, c := range m.children {
		if c.role == roleOld && c != m.serving {
			st.OlderDraining++
		}
	}
	for _, r := range m.records {
		st.Upgrades = append(st.Upgrades, *r)
	}
	return st
}

// childExecutable says what the serving child runs, and whether it is the last good
// build, for status.
func (m *machine) childExecutable() string {
	c := m.serving
	if c.build == nil {
		return ""
	}
	s := c.build.String() + c.launch.describe(m.cfg.Dir)
	good := m.isLastGood(c)
	switch {
	case good && len(c.launch.loose) > 0:
		// The interpreter is kept, not the code: not the last good build.
		s += fmt.Sprintf(" (the last good build's executable; %s, not reached through a symlink, is read from disk again at every start, not kept: a restart runs what is there then. To keep a last good build, deploy releases behind a symlink, current -> releases/N)", strings.Join(c.launch.loose, ", "))
	case good && c.build.replaced():
		s += " (the last good build, run from the descriptor the master keeps: the file now at " + c.build.exe + " is another)"
	case good:
		s += " (the last good build)"
	case c.onProbation:
		s += fmt.Sprintf(" (a new build, on probation for %s; the last good build is %s)", m.probation(), m.lastGoodString())
	}
	return s
}

// statusLine is the one-line status for systemd (systemctl status).
func (m *machine) statusLine() string {
	var b strings.Builder
	switch m.state {
	case stateStarting:
		if m.cand != nil {
			fmt.Fprintf(&b, "starting: child PID %d, generation %d", m.cand.pid, m.cand.gen)
		} else {
			fmt.Fprintf(&b, "restarting (restart %d)", m.restarts+1)
		}
	case stateServing:
		fmt.Fprintf(&b, "serving: child PID %d, generation %d", m.serving.pid, m.serving.gen)
	case statePrepared:
		fmt.Fprintf(&b, "prepared: child PID %d, generation %d waits for handover commit", m.cand.pid, m.cand.gen)
		if m.serving != nil {
			fmt.Fprintf(&b, "; child PID %d, generation %d serving", m.serving.pid, m.serving.gen)
		}
	case stateUpgrading:
		if m.cand != nil {
			fmt.Fprintf(&b, "upgrading: starting generation %d", m.gen+1)
		} else {
			b.WriteString("upgrading")
		}
		if m.serving != nil {
			fmt.Fprintf(&b, "; child PID %d, generation %d serving", m.serving.pid, m.serving.gen)
		}
	case stateStopping:
		fmt.Fprintf(&b, "stopping: %d children left", len(m.children))
	}
	if m.serving != nil && m.serving.text != "" && m.state == stateServing {
		fmt.Fprintf(&b, " (%s)", m.serving.text)
	}
	if m.restarts > 0 {
		fmt.Fprintf(&b, "; %d restarts", m.restarts)
	}
	if m.lastErr != nil {
		fmt.Fprintf(&b, "; last error: %s", firstLine(m.lastErr.Error()))
	}
	return strings.ReplaceAll(b.String(), "\n", " ")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
