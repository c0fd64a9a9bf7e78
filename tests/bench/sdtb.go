package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// cmdTB lets this command use tests/internal/sdns, whose API takes a testing.TB for
// its logs and for the cleanup that stops systemd. testing.TB cannot be implemented
// outside package testing (it has an unexported method), so cmdTB embeds a nil one
// and overrides every method; none of them reaches the embedded value.
//
// Fatal, FailNow and the Skip methods end the calling goroutine's work with a panic
// of type tbAbort, which run recovers from.
type cmdTB struct {
	testing.TB
	name string
	logf func(format string, args ...any)

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// tbAbort is the panic value of Fatal, FailNow and Skip.
type tbAbort struct{ msg string }

func newCmdTB(name string, logf func(format string, args ...any)) *cmdTB {
	return &cmdTB{name: name, logf: logf}
}

func (t *cmdTB) Helper()      {}
func (t *cmdTB) Name() string { return t.name }
func (t *cmdTB) Log(args ...any) {
	t.logf("%s", fmt.Sprint(args...))
}
func (t *cmdTB) Logf(format string, args ...any) { t.logf(format, args...) }
func (t *cmdTB) Error(args ...any) {
	t.Fail()
	t.logf("error: %s", fmt.Sprint(args...))
}
func (t *cmdTB) Errorf(format string, args ...any) {
	t.Fail()
	t.logf("error: "+format, args...)
}
func (t *cmdTB) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}
func (t *cmdTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *cmdTB) FailNow() {
	t.Fail()
	panic(tbAbort{t.name + ": FailNow"})
}
func (t *cmdTB) Fatal(args ...any) {
	t.Fail()
	panic(tbAbort{fmt.Sprint(args...)})
}
func (t *cmdTB) Fatalf(format string, args ...any) {
	t.Fail()
	panic(tbAbort{fmt.Sprintf(format, args...)})
}
func (t *cmdTB) Skip(args ...any) { panic(tbAbort{"skipped: " + fmt.Sprint(args...)}) }
func (t *cmdTB) Skipf(format string, args ...any) {
	panic(tbAbort{"skipped: " + fmt.Sprintf(format, args...)})
}
func (t *cmdTB) SkipNow()                 { panic(tbAbort{"skipped"}) }
func (t *cmdTB) Skipped() bool            { return false }
func (t *cmdTB) Setenv(key, value string) { os.Setenv(key, value) }
func (t *cmdTB) Chdir(dir string)         { panic(tbAbort{"cmdTB: Chdir is not supported"}) }
func (t *cmdTB) TempDir() string          { panic(tbAbort{"cmdTB: TempDir is not supported"}) }
func (t *cmdTB) ArtifactDir() string      { panic(tbAbort{"cmdTB: ArtifactDir is not supported"}) }
func (t *cmdTB) Attr(key, value string)   {}
func (t *cmdTB) Context() context.Context { return context.Background() }
func (t *cmdTB) Output() io.Writer        { return os.Stderr }

// Cleanup registers f to run, last registered first, in runCleanups.
func (t *cmdTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

// runCleanups runs the registered cleanups, last first, once each.
func (t *cmdTB) runCleanups() {
	for {
		t.mu.Lock()
		if len(t.cleanups) == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[len(t.cleanups)-1]
		t.cleanups = t.cleanups[:len(t.cleanups)-1]
		t.mu.Unlock()
		f()
	}
}
