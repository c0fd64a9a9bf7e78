package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
)

// Two-phase upgrades in the switch benchmark (issue 18): the new generation is
// prepared before the clock starts (`handover prepare`, untimed), and the switch is
// timed from the commit to the first answer from the new PID. Two triggers: the
// command `handover commit` (its own start timed: an exec of a static build, as
// deploy/README.md advises), and the commit request written on the control socket
// by the bench itself (the switch alone, without any process start).

func init() {
	switchApproaches = append(switchApproaches,
		prepareApproach("handover-prep", "handover: prepare, then handover commit (timed)",
			"handover commit -control PATH (a CGO_ENABLED=0 build; its own start is timed); handover prepare ran before, untimed",
			func(s *ctlServer) error { return s.commitCommand(staticHandover) }),
		prepareApproach("handover-prep-cgo", "handover: prepare, then handover commit, default build (timed)",
			"handover commit -control PATH (the build the bench makes: cgo, dynamically linked; its own start is timed); handover prepare ran before, untimed",
			func(s *ctlServer) error { return s.commitCommand(builtHandover) }),
		prepareApproach("handover-prep-sock", "handover: prepare, then commit on the socket (timed)",
			"the commit request, written by the bench on the control socket (no process starts); handover prepare ran before, untimed",
			func(s *ctlServer) error { return s.commitOnSocket() }),
		prepareApproach("handover-prep-floor", "handover: prepare, then an empty Go program's run and the commit on the socket (timed)",
			"an empty Go program (main returns at once; a CGO_ENABLED=0 build) is run and waited for, then the bench writes the commit on the control socket: the least any command written in Go could take",
			func(s *ctlServer) error {
				if err := s.runEmpty(); err != nil {
					return err
				}
				return s.commitOnSocket()
			}),
	)
}

// runEmpty runs the empty Go program and waits for its exit: what the start of a
// command written in Go costs at the least (the runtime's own start and exit).
func (s *ctlServer) runEmpty() error {
	bin, err := emptyProgram(s.e)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin)
	cmd.Env = cleanEnv()
	return cmd.Run()
}

// emptyProgram builds, once, a Go program whose main returns at once
// (CGO_ENABLED=0, as the static handover command).
func emptyProgram(e *env) (string, error) {
	emptyOnce.Do(func() {
		dir := filepath.Join(e.work, "empty")
		emptyBin = filepath.Join(dir, "empty")
		if emptyErr = os.MkdirAll(dir, 0o755); emptyErr != nil {
			return
		}
		for name, text := range map[string]string{"go.mod": "module empty\n", "main.go": "package main\n\nfunc main() {}\n"} {
			if emptyErr = os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); emptyErr != nil {
				return
			}
		}
		cmd := exec.Command("go", "build", "-o", emptyBin, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			emptyErr = fmt.Errorf("go build of an empty program: %v\n%s", err, out)
		}
	})
	return emptyBin, emptyErr
}

var (
	emptyOnce sync.Once
	emptyBin  string
	emptyErr  error
)

// prepareApproach is handover-demo with a control socket, prepared before each
// switch and committed by commit.
func prepareApproach(name, label, trigger string, commit func(*ctlServer) error) switchApproach {
	return switchApproach{
		Name:    name,
		Label:   label,
		Server:  "cmd/handover-demo -control PATH -drain-timeout 30s -probation 200ms",
		Trigger: trigger,
		new: func(e *env) (server, error) {
			// Built before any switch: the build is not timed.
			if _, err := staticHandover(e); err != nil {
				return nil, err
			}
			if _, err := emptyProgram(e); err != nil {
				return nil, err
			}
			return newCtlServer(e)
		},
		prepare: func(srv server, _ int) error { return srv.(*ctlServer).handover("prepare") },
		trigger: func(srv server, _ int) error { return commit(srv.(*ctlServer)) },
	}
}

// staticHandover is the handover command built with CGO_ENABLED=0 (no dynamic
// loader, the fastest start), beside the servers.
func staticHandover(e *env) (string, error) {
	staticOnce.Do(func() {
		staticBin = filepath.Join(e.work, "static", "handover")
		cmd := exec.Command("go", "build", "-o", staticBin, "./cmd/handover")
		cmd.Dir = e.repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("go build CGO_ENABLED=0 ./cmd/handover: %v\n%s", err, out)
		}
	})
	return staticBin, staticErr
}

// builtHandover is the handover command the bench built with the servers.
func builtHandover(e *env) (string, error) { return filepath.Join(e.bin, "handover"), nil }

var (
	staticOnce sync.Once
	staticBin  string
	staticErr  error
)

// commitCommand runs `handover commit -control PATH` with the command bin returns.
func (s *ctlServer) commitCommand(bin func(*env) (string, error)) error {
	path, err := bin(s.e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.e.opts.exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "commit", "-control", s.ctl)
	cmd.Env = cleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("handover commit -control %s: %v: %s", s.ctl, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// commitOnSocket writes the commit request on the control socket and reads the
// answer, as `handover commit` does, without a process to start.
func (s *ctlServer) commitOnSocket() error {
	c, err := net.DialTimeout("unix", s.ctl, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(s.e.opts.exitTimeout))
	if _, err := io.WriteString(c, control.Commit+"\n"); err != nil {
		return err
	}
	resp, err := control.ReadResponse(c)
	if err == nil && !resp.OK {
		err = fmt.Errorf("commit: %s", resp.Error)
	}
	return err
}
