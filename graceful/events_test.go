package graceful

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// events is the stable vocabulary of the event= attribute of the Upgrader's and the
// drains' log lines: operators and tests match these names, never the messages. A
// rename breaks this test on purpose (and tests/internal/logs, which pins them for
// the end-to-end tests, must follow).
var events = []string{
	"barrier_timeout", "child_error", "child_pid_differs", "child_started",
	"control_refused", "control_unsupported", "done", "drain_deadline",
	"drain_finish_now", "drain_start", "drained", "exit_now", "fd_unclaimed",
	"fdstore", "fdstore_failed", "handed_over", "history_lost", "inherit_ignored",
	"notify_failed", "parent_lost", "pidfile_failed", "probation_over", "protocol", "ready",
	"listener_lost", "reserve_failed", "resumed", "signal_ignored", "start", "stop", "stop_ignored",
	"successor_died", "successor_retired", "too_many_draining", "upgrade_deferred",
	"upgrade_failed", "upgrade_refused", "upgrade_start",
	// Two-phase upgrades (prepare.go).
	"prepared", "commit", "upgrade_aborted",
	// The control socket's server (internal/control), with the Upgrader's logger.
	"control_abandoned", "control_accept_failed", "control_bad_request", "control_busy",
	// TLS session-ticket keys and application state (keycarrier.go, appstate.go).
	"state_failed", "state_loaded", "state_lost", "state_refused", "state_saved", "tls_keys",
	"tls_keys_failed", "tls_keys_lost", "tls_keys_rotated",
	// Idle connections handed over (conncarrier.go).
	"conn_dropped", "conns_failed", "conns_kept", "conns_lost", "conns_restored", "link_ready", "link_lost",
}

func TestEventNamesPinned(t *testing.T) {
	re := regexp.MustCompile(`"event", "([a-z_]+)"`)
	found := map[string]bool{}
	// internal/control logs control_refused with the Upgrader's logger.
	for _, dir := range []string{".", "../internal/control"} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				found[m[1]] = true
			}
		}
	}
	pinned := map[string]bool{}
	for _, e := range events {
		pinned[e] = true
		if !found[e] {
			t.Errorf("event %q is pinned but no longer logged", e)
		}
	}
	var extra []string
	for e := range found {
		if !pinned[e] {
			extra = append(extra, e)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("events logged but not pinned (add them here and to tests/internal/logs): %v", extra)
	}
}
