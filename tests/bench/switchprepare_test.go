package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

// commitServer answers a control socket: status, and each upgrade request with err.
type commitServer struct {
	reqs chan string
	err  error
}

func (s commitServer) Status() (wire.Status, error) { return wire.Status{PID: 1}, nil }
func (s commitServer) Upgrade(req string) control.Outcome {
	s.reqs <- req
	return control.Outcome{PID: 2, Generation: 2, Err: s.err}
}

// TestCommitOnSocket: the socket trigger sends "commit" and reads the answer; a
// refused commit is the switch's error.
func TestCommitOnSocket(t *testing.T) {
	for _, refusal := range []error{nil, errors.New("no prepared generation")} {
		path := filepath.Join(t.TempDir(), "control.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		f := commitServer{reqs: make(chan string, 1), err: refusal}
		go control.Accept(ln, slog.New(slog.NewTextHandler(io.Discard, nil)), f)
		s := &ctlServer{procServer: &procServer{e: &env{opts: options{exitTimeout: 5 * time.Second}}}, ctl: path}
		err = s.commitOnSocket()
		if got := <-f.reqs; got != control.Commit {
			t.Errorf("sent %q", got)
		}
		if refusal == nil && err != nil || refusal != nil && (err == nil || !strings.Contains(err.Error(), refusal.Error())) {
			t.Errorf("refusal %v: commitOnSocket = %v", refusal, err)
		}
	}
}
