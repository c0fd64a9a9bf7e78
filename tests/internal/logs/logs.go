// Package logs reads the logs of handover processes the way the end-to-end tests
// must: by attribute key, never by message text.
//
// The Upgrader (package graceful) logs with log/slog's text handler, and every line
// it writes carries a stable event= attribute (the vocabulary is Events, copied from
// the team's design notes), gen= and pid=, and for some events an enumerated
// attribute such as cause= or reason=. Parse turns a log file into Lines, each a map
// of its attributes, and Where selects lines by event and by key=value. Message
// wording (msg=) is never matched: it may change without notice.
//
// Where panics on an event name that is not in Events, so a test cannot look for a
// misspelled or retired event and silently find nothing. Check reports every line of
// the Upgrader (a line with gen=) whose event is missing or unknown, or whose
// enumerated attribute has a value outside the vocabulary: a test that runs Check on
// the whole log fails as soon as the library renames an event, so its negative
// checks ("no event=successor_died") cannot pass because the name changed.
package logs

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Spec describes one event of the vocabulary: for each enumerated attribute, the
// values it may take.
type Spec struct {
	// Enums maps an attribute key to its allowed values (e.g. "cause" for
	// upgrade_failed). Attributes not listed here are free.
	Enums map[string][]string
}

// Events is the stable vocabulary of event= values (the design notes' list): the
// Upgrader's, the Server's drain events, the demo's exit, and those of handover
// run's master.
var Events = map[string]Spec{
	"start":             {},
	"inherit_ignored":   {},
	"fd_unclaimed":      {},
	"ready":             {},
	"pidfile_failed":    {},
	"parent_lost":       {},
	"signal_ignored":    {}, // signal=: the design notes say hangup, the library writes SIGHUP
	"exit_now":          {},
	"upgrade_refused":   {Enums: map[string][]string{"reason": {"not_ready", "in_progress", "handed_over", "stopping", "pid1", "master", "unsupported", "prepared", "not_prepared", "cannot_prepare"}}},
	"upgrade_start":     {},
	"child_started":     {},
	"child_error":       {},
	"child_pid_differs": {},
	"barrier_timeout":   {},
	"confirm_failed":    {},
	"upgrade_failed":    {Enums: map[string][]string{"cause": {"start", "timeout", "exited", "channel_closed", "protocol", "notify", "confirm", "abandoned", "cannot_prepare"}}},
	// Two-phase upgrades (issue 18): the library's and the master's.
	"prepared":              {},
	"commit":                {},
	"upgrade_aborted":       {Enums: map[string][]string{"cause": {"aborted", "prepare_timeout"}}},
	"handed_over":           {},
	"reserve_failed":        {},
	"successor_retired":     {},
	"successor_died":        {Enums: map[string][]string{"action": {"none", "replace", "resume"}}},
	"probation_over":        {Enums: map[string][]string{"reason": {"passed", "retired", "stop"}}}, // the new generation's probation (Config.Probation)
	"replace_failed":        {},
	"resumed":               {},
	"listener_lost":         {}, // a parked listener not made again as the process resumed
	"stop":                  {},
	"stop_ignored":          {},
	"notify_failed":         {},
	"control_refused":       {},
	"control_abandoned":     {}, // an upgrade request whose client had gone: not run
	"control_accept_failed": {},
	"control_bad_request":   {},
	"control_busy":          {},
	"fdstore":               {},
	"fdstore_failed":        {},
	"drain_start":           {},
	"drain_deadline":        {},
	"drained":               {},
	"done":                  {}, // the process may exit (every drain ended)
	"control_unsupported":   {},
	"too_many_draining":     {}, // MaxDraining (not yet in the design notes' list)
	"drain_finish_now":      {},
	"upgrade_deferred":      {}, // a SIGUSR2 before a new generation is ready runs once it is
	"history_lost":          {},
	"protocol":              {},
	"exit":                  {},
	// TLS session-ticket keys and application state (issue 10).
	"tls_keys":         {Enums: map[string][]string{"source": {"file", "parent", "store", "new"}}},
	"tls_keys_lost":    {Enums: map[string][]string{"from": {"parent", "store"}, "reason": {"unreadable", "corrupt"}}},
	"tls_keys_rotated": {},
	"tls_keys_failed":  {},
	"state_loaded":     {Enums: map[string][]string{"from": {"parent", "store"}}},
	"state_refused":    {Enums: map[string][]string{"from": {"parent", "store"}}},
	"state_failed":     {Enums: map[string][]string{"reason": {"save", "timeout", "too_large", "memfd"}}},
	"state_lost":       {Enums: map[string][]string{"from": {"parent", "store"}, "reason": {"unreadable", "corrupt"}}},
	"state_saved":      {},
	// Idle connections handed over (issue 20).
	"conn_dropped":   {Enums: map[string][]string{"reason": {"no_server", "stopping", "descriptor", "successor"}}},
	"conns_failed":   {Enums: map[string][]string{"to": {"successor", "fdstore"}}},
	"conns_kept":     {},
	"conns_lost":     {Enums: map[string][]string{"reason": {"corrupt", "descriptor", "table"}}},
	"conns_restored": {},
	// A library child's link to the next child under handover run.
	"link_ready": {},
	"link_lost":  {Enums: map[string][]string{"reason": {"channel", "none", "store", "gone", "protocol"}}},
	// handover run's master (internal/master), beside the ones it shares above.
	"child_errno":       {},
	"child_exited":      {},
	"child_ready":       {},
	"child_reloading":   {},
	"child_stop":        {},
	"child_stopping":    {},
	"fdstore_removed":   {},
	"fdstore_held":      {},
	"fdstore_discarded": {},
	"fdstore_refused":   {Enums: map[string][]string{"reason": {"not_current", "bad_name", "full"}}},
	"forward":           {},
	"leftovers_killed":  {},
	"listen_warning":    {},
	"mainpid_ignored":   {},
	"notify_ignored":    {},
	"orphan_reaped":     {},
	"ready_timeout":     {},
	"restart_failed":    {},
	"restart_scheduled": {},
	"signal_failed":     {},
	"start_failed":      {},
	"subreaper_failed":  {},
	"upgrade_died":      {},
	"last_good":         {},
	"build_reopened":    {},
}

// Line is one parsed slog text-handler line.
type Line struct {
	// N is the line's number in the text (1-based), for ordering and messages.
	N int
	// Raw is the line as written.
	Raw string
	// Attrs holds every key=value of the line, time, level and msg included,
	// with quoted values unquoted.
	Attrs map[string]string
}

// Get returns the value of key, or "" if the line has none.
func (l Line) Get(key string) string { return l.Attrs[key] }

// Has reports whether the line has the attribute key.
func (l Line) Has(key string) bool {
	_, ok := l.Attrs[key]
	return ok
}

// Int returns the value of key as an integer, or 0 if it is absent or not one.
func (l Line) Int(key string) int {
	n, _ := strconv.Atoi(l.Attrs[key])
	return n
}

// Event returns the line's event= value.
func (l Line) Event() string { return l.Attrs["event"] }

// String returns the raw line.
func (l Line) String() string { return l.Raw }

// Log is the slog lines of a log file, in order. Lines that are not slog text
// lines (a panic, a fatal error printed with fmt, another program's output) are
// left out; Parse keeps them in Other.
type Log struct {
	Lines []Line
	// Other holds the lines that are not slog text-handler lines.
	Other []string
}

// Parse parses text, the contents of a log file.
func Parse(text string) Log {
	var g Log
	for i, raw := range strings.Split(text, "\n") {
		if strings.TrimSpace(raw) == "" {
			continue
		}
		attrs, ok := parseLine(raw)
		if !ok {
			g.Other = append(g.Other, raw)
			continue
		}
		g.Lines = append(g.Lines, Line{N: i + 1, Raw: raw, Attrs: attrs})
	}
	return g
}

// defaultLine matches the start of a line of slog's default handler (slog.Default,
// which writes through package log): "2009/11/10 23:00:00 INFO message k=v ...". The
// README's one-word server logs so.
var defaultLine = regexp.MustCompile(`^(\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) (DEBUG|INFO|WARN|ERROR) (.*)$`)

// parseLine parses `time=... level=... msg=... k=v ...` (the text handler), or a
// default-handler line whose attributes start with gen= (every Upgrader line has
// it). A line is a slog line when it parses completely and has time, level and msg.
func parseLine(s string) (map[string]string, bool) {
	if m := defaultLine.FindStringSubmatch(s); m != nil {
		// The message is free text: the attributes are the rest of the line from
		// the first " gen=" after which everything parses as key=value.
		rest := m[3]
		for i := 0; ; {
			j := strings.Index(rest[i:], "gen=")
			if j < 0 {
				return nil, false
			}
			at := i + j
			if at == 0 || rest[at-1] == ' ' {
				if attrs, ok := parseAttrs(rest[at:]); ok {
					attrs["time"], attrs["level"], attrs["msg"] = m[1], m[2], strings.TrimSuffix(rest[:at], " ")
					return attrs, true
				}
			}
			i = at + 1
		}
	}
	attrs, ok := parseAttrs(s)
	if !ok {
		return nil, false
	}
	for _, k := range []string{"time", "level", "msg"} {
		if _, ok := attrs[k]; !ok {
			return nil, false
		}
	}
	return attrs, true
}

// parseAttrs parses a sequence of key=value attributes.
func parseAttrs(s string) (map[string]string, bool) {
	attrs := map[string]string{}
	for s = strings.TrimLeft(s, " "); s != ""; s = strings.TrimLeft(s, " ") {
		key, rest, ok := parseToken(s, true)
		if !ok || !strings.HasPrefix(rest, "=") {
			return nil, false
		}
		val, rest, ok := parseToken(rest[1:], false)
		if !ok {
			return nil, false
		}
		attrs[key] = val
		s = rest
	}
	return attrs, len(attrs) > 0
}

// parseToken reads a key (up to '=') or a value (up to a space), either of which
// may be a Go-quoted string, as slog's text handler writes them.
func parseToken(s string, key bool) (tok, rest string, ok bool) {
	if strings.HasPrefix(s, `"`) {
		q, err := strconv.QuotedPrefix(s)
		if err != nil {
			return "", "", false
		}
		tok, err = strconv.Unquote(q)
		if err != nil {
			return "", "", false
		}
		return tok, s[len(q):], true
	}
	stop := " "
	if key {
		stop = "= "
	}
	i := strings.IndexAny(s, stop)
	if i < 0 {
		return s, "", !key
	}
	if key && s[i] != '=' {
		return "", "", false
	}
	return s[:i], s[i:], i > 0 || !key
}

// KV formats one key=value selector for Where and Count, e.g. KV("pid", 42).
func KV(key string, value any) string { return fmt.Sprintf("%s=%v", key, value) }

// Where returns the lines with event= event and every key=value of match (use KV).
// It panics if event is not in Events, or if a match names an enumerated attribute
// with a value outside the vocabulary: a test must not wait for, or count, lines
// that the library never writes.
func (g Log) Where(event string, match ...string) []Line {
	spec, ok := Events[event]
	if !ok {
		panic(fmt.Sprintf("logs: event %q is not in the vocabulary", event))
	}
	type kv struct{ k, v string }
	var want []kv
	for _, m := range match {
		k, v, ok := strings.Cut(m, "=")
		if !ok {
			panic(fmt.Sprintf("logs: selector %q is not key=value", m))
		}
		if allowed, enum := spec.Enums[k]; enum && !slices.Contains(allowed, v) {
			panic(fmt.Sprintf("logs: %s=%q is not a value of event %s", k, v, event))
		}
		want = append(want, kv{k, v})
	}
	var out []Line
	for _, l := range g.Lines {
		if l.Event() != event {
			continue
		}
		all := true
		for _, w := range want {
			if v, ok := l.Attrs[w.k]; !ok || v != w.v {
				all = false
				break
			}
		}
		if all {
			out = append(out, l)
		}
	}
	return out
}

// Count is len(Where(event, match...)).
func (g Log) Count(event string, match ...string) int { return len(g.Where(event, match...)) }

// Last returns the last line Where selects, and whether there is one.
func (g Log) Last(event string, match ...string) (Line, bool) {
	ls := g.Where(event, match...)
	if len(ls) == 0 {
		return Line{}, false
	}
	return ls[len(ls)-1], true
}

// Ints returns the distinct integer values of key in lines, in order.
func Ints(lines []Line, key string) []int {
	var out []int
	for _, l := range lines {
		if n, err := strconv.Atoi(l.Get(key)); err == nil && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Check returns a description of every line of the Upgrader (one with gen=, which
// every Upgrader line carries) that has no event=, an event outside Events, or an
// enumerated attribute with a value outside the vocabulary. An empty result means
// the log speaks the vocabulary the tests match.
func (g Log) Check() []string {
	var bad []string
	for _, l := range g.Lines {
		if !l.Has("gen") {
			continue // not the Upgrader's (e.g. net/http's error log)
		}
		ev := l.Event()
		spec, ok := Events[ev]
		switch {
		case ev == "":
			bad = append(bad, fmt.Sprintf("line %d has no event=: %s", l.N, l.Raw))
			continue
		case !ok:
			bad = append(bad, fmt.Sprintf("line %d: event=%s is not in the vocabulary: %s", l.N, ev, l.Raw))
			continue
		}
		if !l.Has("pid") {
			bad = append(bad, fmt.Sprintf("line %d has no pid=: %s", l.N, l.Raw))
		}
		for k, allowed := range spec.Enums {
			if v, has := l.Attrs[k]; has && !slices.Contains(allowed, v) {
				bad = append(bad, fmt.Sprintf("line %d: %s=%s is not a value of event %s: %s", l.N, k, v, ev, l.Raw))
			}
		}
	}
	return bad
}
