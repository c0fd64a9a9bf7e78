package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

func status(path string, timeout time.Duration, asJSON bool, stdout, stderr io.Writer) int {
	resp, err := ask(path, control.Status, time.Time{}, timeout)
	if errors.Is(err, errTimedOut) {
		err = fmt.Errorf("no answer from %s within %s", path, timeout.Round(time.Millisecond))
	}
	if err == nil && !resp.OK {
		err = errors.New(resp.Error)
	}
	if err == nil && resp.Status == nil {
		err = errors.New("malformed answer: no status")
	}
	if err != nil {
		fmt.Fprintf(stderr, "handover status: %s\n", printableLines(err.Error()))
		return 1
	}
	if asJSON {
		b, _ := json.MarshalIndent(resp.Status, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return 0
	}
	var text strings.Builder
	printStatus(&text, resp.Status)
	io.WriteString(stdout, printableLines(text.String()))
	return 0
}

// printStatus prints s for a person: a library process's (its connections) or a
// handover run master's (its child, the build it runs and its restarts), then its
// last upgrades.
func printStatus(w io.Writer, s *wire.Status) {
	fmt.Fprintf(w, "PID:         %d\n", s.PID)
	fmt.Fprintf(w, "Generation:  %d\n", s.Generation)
	fmt.Fprintf(w, "State:       %s\n", s.State)
	if s.Child != 0 {
		fmt.Fprintf(w, "Child:       PID %d (handover run; restarts: %d)\n", s.Child, s.Restarts)
		if s.ChildExecutable != "" {
			fmt.Fprintf(w, "Child runs:  %s\n", s.ChildExecutable)
		}
	} else if s.Restarts != 0 {
		fmt.Fprintf(w, "Restarts:    %d\n", s.Restarts)
	}
	if s.Upgrading != 0 {
		fmt.Fprintf(w, "Upgrading:   new generation PID %d starting\n", s.Upgrading)
	}
	if s.Prepared != 0 {
		fmt.Fprintf(w, "Prepared:    new generation PID %d, ready and not accepting: handover commit makes it serve, handover abort ends it\n", s.Prepared)
	}
	fmt.Fprintf(w, "Executable:  %s\n", s.Executable)
	fmt.Fprintf(w, "Systemd:     %v\n", s.Systemd)
	for i, l := range s.Listeners {
		label := "Listeners:  "
		if i > 0 {
			label = "            "
		}
		name := l.Name
		if name == "" {
			name = "(unnamed)"
		}
		from := "from " + l.Source
		if l.Source == "bound" {
			from = "bound" // by the process itself
		}
		fmt.Fprintf(w, "%s %s %s:%s (%s)\n", label, name, l.Network, l.Addr, from)
	}
	master := s.Child != 0 || s.Restarts != 0
	if !master {
		// A handover run master does not see its child's connections.
		c := s.Connections
		fmt.Fprintf(w, "Connections: %d open (%d active, %d idle, %d new, %d hijacked), %d accepted, %d received, %d handed over\n",
			c.Total(), c.Active, c.Idle, c.New, c.Hijacked, c.Accepted, c.Received, c.HandedOver)
	}
	if !s.ProbationUntil.IsZero() {
		fmt.Fprintf(w, "Probation:   until %s: the old generation, drained, stands by to serve again if the new one dies\n",
			s.ProbationUntil.Local().Format("15:04:05.000"))
	}
	switch {
	case s.LastError != "" && master:
		fmt.Fprintf(w, "Last error:  %s\n", strings.TrimSpace(s.LastError))
	case s.LastError != "":
		fmt.Fprintf(w, "Last upgrade failed: %s\n", strings.TrimSpace(s.LastError))
	}
	printUpgrades(w, s.Upgrades, master)
}

// printUpgrades lists the last upgrades of a status (the library's or a handover
// run master's), one line each: when it was asked for, its trigger, its outcome, the
// PIDs from and to, the handover (a two-phase upgrade's: its commit's) and the old
// generation's drain in milliseconds, the reason when it failed or died (or why the
// drain was cut short: a master killed the old child, a library process force-closed
// its connections), and for a two-phase upgrade its prepare's time and the wait for
// its commit.
func printUpgrades(w io.Writer, ups []wire.Upgrade, master bool) {
	if len(ups) > 10 {
		ups = ups[len(ups)-10:]
	}
	if len(ups) == 0 {
		return
	}
	fmt.Fprintf(w, "Upgrades:    %d (oldest first)\n", len(ups))
	fmt.Fprintf(w, "  %-12s  %-14s  %-9s  %-15s  %11s  %9s  %s\n", "TIME", "TRIGGER", "OUTCOME", "FROM→TO", "HANDOVER", "DRAIN", "REASON")
	for _, u := range ups {
		to := "-"
		if u.To != 0 {
			to = fmt.Sprint(u.To)
		}
		handover := "-"
		if u.Outcome == "ok" || u.Outcome == "died" {
			handover = fmt.Sprintf("%.1fms", u.HandoverSeconds*1000)
		}
		drain := "-"
		if u.Drained {
			drain = fmt.Sprintf("%.0fms", u.DrainSeconds*1000)
		}
		var reason []string
		if u.Reason != "" {
			reason = append(reason, u.Reason)
		}
		if line, _, _ := strings.Cut(u.Error, "\n"); line != "" {
			reason = append(reason, line)
		}
		switch {
		case u.DrainKilled != "" && master:
			reason = append(reason, "old child killed ("+u.DrainKilled+")")
		case u.DrainKilled != "":
			reason = append(reason, "drain cut short ("+u.DrainKilled+")")
		}
		if u.ConnsForced > 0 {
			reason = append(reason, fmt.Sprintf("%d connections force-closed", u.ConnsForced))
		}
		if u.ConnsHandedOver > 0 {
			reason = append(reason, fmt.Sprintf("%d connections handed over", u.ConnsHandedOver))
		}
		if !u.Prepared.IsZero() {
			reason = append(reason, twoPhase(u))
		}
		fmt.Fprintf(w, "  %-12s  %-14s  %-9s  %-15s  %11s  %9s  %s\n", u.Start.Local().Format("15:04:05.000"), u.Trigger, u.Outcome,
			fmt.Sprintf("%d→%s", u.From, to), handover, drain, strings.Join(reason, ": "))
	}
}

// twoPhase describes a two-phase upgrade's prepare and the wait for its commit.
func twoPhase(u wire.Upgrade) string {
	s := fmt.Sprintf("prepared in %.1fms", u.PrepareSeconds*1000)
	if !u.Committed.IsZero() {
		s += fmt.Sprintf(", committed %s later", u.Committed.Sub(u.Prepared).Round(time.Millisecond))
	}
	return s
}
