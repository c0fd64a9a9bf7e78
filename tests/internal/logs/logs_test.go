package logs

import (
	"bytes"
	"errors"
	"log"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
)

// realLog writes lines through slog's text handler, as the demo does.
func realLog(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	base := slog.New(slog.NewTextHandler(&b, nil))
	base.Error("http: TLS handshake error from 127.0.0.1:1234: EOF") // net/http's, no gen
	log := base.With("gen", 2, "pid", 4242)
	log.Info("starting", "event", "start", "executable", "/opt/my app/demo", "inherited", "1 descriptors from systemd")
	log.Error("upgrade failed; still serving", "event", "upgrade_failed", "cause", "exited", "child", 4250,
		"err", errors.New("the new generation (PID 4250) exited before it was ready (exit status 1): \"quoted\"\nsecond line"))
	log.Warn("upgrade refused: this process has handed over", "event", "upgrade_refused", "reason", "handed_over", "current", 4251)
	log.Info("handed over", "event", "handed_over", "to", 4251, "took", "1.2ms")
	b.WriteString("panic: something\n\ngoroutine 1 [running]:\n")
	log.Info("exiting", "event", "exit", "empty", "")
	return b.String()
}

func TestParseRealLines(t *testing.T) {
	text := realLog(t)
	g := Parse(text)
	if len(g.Lines) != 6 {
		t.Fatalf("%d slog lines, want 6:\n%s", len(g.Lines), text)
	}
	if len(g.Other) != 2 || !strings.HasPrefix(g.Other[0], "panic:") {
		t.Errorf("other lines %q, want the panic and the goroutine line", g.Other)
	}
	start := g.Where("start")
	if len(start) != 1 || start[0].Get("executable") != "/opt/my app/demo" || start[0].Int("gen") != 2 || start[0].Int("pid") != 4242 {
		t.Errorf("start: %+v", start)
	}
	f, ok := g.Last("upgrade_failed", "cause=exited", KV("child", 4250))
	if !ok || !strings.Contains(f.Get("err"), "\"quoted\"\nsecond line") {
		t.Errorf("upgrade_failed: %+v, %v", f, ok)
	}
	if n := g.Count("upgrade_failed", "cause=timeout"); n != 0 {
		t.Errorf("cause=timeout matched %d lines", n)
	}
	if got := Ints(g.Where("handed_over"), "to"); !slices.Equal(got, []int{4251}) {
		t.Errorf("handed_over to= %v", got)
	}
	if l, ok := g.Last("exit"); !ok || !l.Has("empty") || l.Get("empty") != "" {
		t.Errorf("exit: %+v", l)
	}
	if bad := g.Check(); len(bad) != 0 {
		t.Errorf("Check: %q", bad)
	}
	// Ordering by line number.
	if a, b := g.Where("start")[0], g.Where("exit")[0]; a.N >= b.N {
		t.Errorf("line numbers %d, %d", a.N, b.N)
	}
}

// TestParseDefaultHandler: slog.Default's lines (through package log), as the
// README's one-word server writes them, with a message holding '=' and ':'.
func TestParseDefaultHandler(t *testing.T) {
	var b bytes.Buffer
	log.SetOutput(&b) // slog.Default writes through package log's default logger
	defer log.SetOutput(os.Stderr)
	h := slog.Default().With("gen", 1, "pid", 1)
	h.Warn("upgrade refused: graceful: x=1 gen=2 is PID 1", "event", "upgrade_refused", "reason", "pid1", "trigger", "SIGUSR2")
	g := Parse(b.String())
	l, ok := g.Last("upgrade_refused", "reason=pid1", KV("gen", 1))
	if !ok || l.Get("msg") != "upgrade refused: graceful: x=1 gen=2 is PID 1" || l.Get("level") != "WARN" || l.Get("trigger") != "SIGUSR2" {
		t.Fatalf("parsed %+v from %q", g.Lines, b.String())
	}
}

func TestCheckFindsUnknownEvents(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewTextHandler(&b, nil)).With("gen", 1, "pid", 7)
	log.Info("renamed", "event", "successor_crashed")
	log.Info("no event at all")
	log.Error("bad enum", "event", "upgrade_failed", "cause", "exploded")
	slog.New(slog.NewTextHandler(&b, nil)).Info("not the Upgrader's, no gen")
	bad := Parse(b.String()).Check()
	if len(bad) != 3 {
		t.Fatalf("Check found %d problems, want 3: %q", len(bad), bad)
	}
	for i, want := range []string{"successor_crashed", "no event=", "cause=exploded"} {
		if !strings.Contains(bad[i], want) {
			t.Errorf("problem %d %q does not mention %q", i, bad[i], want)
		}
	}
}

func TestWherePanicsOutsideTheVocabulary(t *testing.T) {
	for _, c := range []struct {
		event string
		match []string
	}{
		{"upgrade_refuse", nil},                    // misspelled event
		{"upgrade_failed", []string{"cause=exit"}}, // misspelled enumerated value
		{"upgrade_failed", []string{"cause"}},      // not key=value
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Where(%q, %q) did not panic", c.event, c.match)
				}
			}()
			Parse("").Where(c.event, c.match...)
		}()
	}
}

func TestParseRejectsNonSlog(t *testing.T) {
	for _, s := range []string{
		"handover-demo: listener http: address already in use",
		"2024/01/02 15:04:05 INFO starting event=start",
		`time=x level=INFO msg="unterminated`,
		"time=x level=INFO", // no msg
		"readydie: pid 42 got \"main\\n\" (err <nil>); dying",
	} {
		if g := Parse(s); len(g.Lines) != 0 {
			t.Errorf("%q parsed as %+v", s, g.Lines)
		}
	}
}
