//go:build linux

package master

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/proc"
)

// The children's lives apart from an upgrade: the master's signals and its stop,
// a child's stop signal and SIGKILL, its exit, and the restart after a crash.

// stopChild sends c sig (the stop signal) and gives it the drain timeout before
// SIGKILL.
func (m *machine) stopChild(c *child, sig syscall.Signal) {
	if c.stopSent || c.reaped {
		return
	}
	c.stopSent = true
	c.role = roleOld
	c.onProbation = false // replaced before the end of its probation: its build is not promoted
	c.stoppedAt = time.Now()
	c.stopTimers()
	m.settled(c)
	if err := m.signal(c, sig, false); err != nil {
		m.log.Warn("could not signal a child", "event", "signal_failed", "child", c.pid, "signal", signalName(sig), "err", err)
	}
	c.timers = append(c.timers, m.after(m.cfg.DrainTimeout, timerEvent{timerDrain, c}))
	m.log.Info("child stopping", "event", "child_stop", "child", c.pid, "gen", c.gen, "signal", signalName(sig), "deadline", m.cfg.DrainTimeout.String())
}

// kill sends SIGKILL to c's process group (c and whatever it started).
func (m *machine) kill(c *child) {
	if c.reaped || c.killed {
		return
	}
	c.killed = true
	if err := m.signal(c, syscall.SIGKILL, true); err != nil {
		m.signal(c, syscall.SIGKILL, false)
	}
}

// clearLeftovers kills what c (a child that exited, or whose drain deadline came)
// and other dead children left behind (leftovers), and logs event with how many.
func (m *machine) clearLeftovers(c *child, event string) {
	if pids := m.leftovers(c); len(pids) > 0 {
		m.log.Warn("killed what the children left behind", "event", event, "child", c.pid, "gen", c.gen, "leftovers", len(pids), "pids", fmt.Sprint(pids))
	}
}

func (m *machine) onSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGHUP, syscall.SIGUSR2:
		m.beginUpgrade(signalName(sig), false, nil)
	case syscall.SIGTERM:
		m.terms++
		if m.terms > 1 || m.stopping {
			m.exitNow(sig)
			return
		}
		m.stop(signalName(sig))
	case syscall.SIGINT, syscall.SIGQUIT:
		if m.stopping {
			m.exitNow(sig)
			return
		}
		targets := []*child{m.serving, m.cand}
		sent := false
		for _, c := range targets {
			if c != nil && !c.reaped {
				m.signal(c, sig, false)
				m.log.Info("signal forwarded", "event", "forward", "signal", signalName(sig), "child", c.pid)
				sent = true
			}
		}
		if !sent {
			m.stop(signalName(sig))
			return
		}
		m.forwarded = sig
	}
}

// exitNow ends every child at once (a second stop signal).
func (m *machine) exitNow(sig syscall.Signal) {
	m.log.Warn("second stop signal: killing the children without waiting for their drain", "event", "exit_now", "signal", signalName(sig))
	m.stopping, m.state = true, stateStopping
	for _, c := range m.children {
		if c.role == roleOld && !c.killed {
			c.killWhy = killedStop
		}
		m.kill(c)
	}
}

// stop begins the master's stop: the children get the stop signal and their drain
// timeout; an upgrade in progress is abandoned.
func (m *machine) stop(why string) {
	if m.stopping {
		return
	}
	m.stopping, m.state = true, stateStopping
	m.log.Info("stopping", "event", "stop", "why", why)
	if m.restartT != nil {
		m.restartT()
		m.restartT = nil
	}
	if m.exitFrom = m.serving; m.exitFrom == nil {
		m.exitFrom = m.cand
	}
	if up := m.up; up != nil {
		// The new child of an upgrade is killed: the serving one drains the sockets.
		m.up = nil
		c := m.cand
		m.cand = nil
		c.role, c.failCause, c.failReason = roleFailed, "abandoned", "abandoned: handover run is stopping"
		if r := c.rec; r != nil {
			r.To, r.Generation = c.pid, c.gen
			m.recordFailure(r, &proc.Failure{Cause: "abandoned", Err: errStopping})
			c.rec = nil
		}
		c.stopTimers()
		m.kill(c)
		closeCommit(c)
		m.log.Warn("upgrade abandoned: stopping", "event", "upgrade_failed", "cause", "abandoned", "child", c.pid)
		answer(up.waiters, control.Outcome{Err: fmt.Errorf("upgrade abandoned: %w", errStopping), Stopping: true})
		answer(up.aborts, control.Outcome{PID: c.pid, Generation: c.gen})
	}
	for _, c := range []*child{m.serving, m.cand} {
		if c != nil {
			m.stopChild(c, m.cfg.StopSignal)
		}
	}
	m.sd("STOPPING=1\nSTATUS=" + m.statusLine())
}

// scheduleRestart starts a new child after the backoff delay.
func (m *machine) scheduleRestart() {
	if m.stopping || m.restartT != nil || m.cand != nil {
		return
	}
	m.state = stateStarting
	delay := m.backoff
	m.backoff = min(2*m.backoff, m.cfg.RestartDelayMax)
	m.restartT = m.after(delay, timerEvent{kind: timerRestart})
	m.log.Info("restart scheduled", "event", "restart_scheduled", "in", delay.String(), "restarts", m.restarts)
	m.sd("STATUS=" + m.statusLine())
}

// onReaped records a child's exit; it is handled once its output has settled. Other
// processes (orphans reparented to the master) are only logged.
func (m *machine) onReaped(pid int, ws syscall.WaitStatus) {
	c := m.children[pid]
	if c == nil {
		m.log.Info("reaped an orphan", "event", "orphan_reaped", "child", pid, "status", proc.Describe(ws))
		return
	}
	c.reaped, c.status, c.reapedAt = true, ws, time.Now()
	if c.role != roleOld {
		// (A stopped child's drain deadline stays: it also ends what the child left.)
		c.stopTimers()
	}
	m.settle(c)
}

// onGone handles the exit of child c.
func (m *machine) onGone(c *child) {
	delete(m.children, c.pid)
	defer m.drop(c.build)
	if c.pidfd != nil {
		c.pidfd.Close()
	}
	m.dropHeld(c)
	closeCommit(c)
	if r := c.drainRec; r != nil && c.role == roleOld {
		r.Drained, r.DrainSeconds, r.DrainKilled = true, c.reapedAt.Sub(c.stoppedAt).Seconds(), c.killWhy
	}
	if c.role == roleOld && c.killWhy != "" {
		// Its drain was cut short (its deadline, -max-draining, a second stop
		// signal): so is that of what it left behind. (Otherwise they go at its
		// drain deadline, which stays pending after its exit.)
		c.stopTimers()
		m.clearLeftovers(c, "leftovers_killed")
	}
	level := slog.LevelInfo
	if c.role == roleServing || c.role == roleCandidate && !m.stopping {
		level = slog.LevelWarn
	}
	m.log.Log(context.Background(), level, "child exited", "event", "child_exited", "child", c.pid, "gen", c.gen, "role", c.role.String(), "status", proc.Describe(c.status), "code", proc.ExitCode(c.status))
	if m.stopping && c == m.exitFrom {
		m.exitFrom = nil
		m.exitCode = proc.ExitCode(c.status)
	}
	switch {
	case c == m.cand:
		m.cand = nil
		m.candidateFailed(c)
	case c.role == roleFailed:
		m.candidateFailed(c)
	case c == m.serving:
		m.serving = nil
		switch {
		case m.stopping:
		case m.forwarded != 0:
			// The child ended after a forwarded SIGINT/SIGQUIT: so does the master.
			m.stop("child exited after " + signalName(m.forwarded))
			m.exitFrom, m.exitCode = nil, proc.ExitCode(c.status)
		case c.onProbation:
			m.upgradeDied(c)
		default:
			m.lastErr = &proc.Failure{Cause: "exited", Err: fmt.Errorf("child PID %d (generation %d) exited while serving (%s)", c.pid, c.gen, proc.Describe(c.status)), Stderr: c.out.Lines()}
			if time.Since(c.readyAt) >= stableAfter {
				m.backoff = m.cfg.RestartDelay
			}
			switch {
			case m.up == nil:
				m.scheduleRestart()
			case m.state == statePrepared:
				m.commitPrepared(m.cand, "the serving child exited")
			}
			// During an upgrade, the new child takes over when ready (or a restart
			// follows its failure).
		}
	}
}
