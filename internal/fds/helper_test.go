package fds

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests that need real descriptors at fd 3, 4, ... run the test binary again as a
// helper process (TestHelperProcess) with exec.Cmd.ExtraFiles. The helper follows a
// helperSpec passed in the environment, calls Inherit, claims sockets, and prints a
// helperResult as one JSON line on stdout.

const (
	helperEnv    = "ACTIVATION_TEST_HELPER" // the helperSpec, as JSON
	resultPrefix = "ACTIVATION-HELPER-RESULT "
	helperWait   = 30 * time.Second
)

func TestMain(m *testing.M) {
	// Descriptors this test binary inherited (from a shell, a CI runner) must not reach
	// the helper processes, whose fds 3, 4, ... are the point of the test. A helper
	// keeps what it was given: making its strays close-on-exec is Inherit's job.
	if os.Getenv(helperEnv) == "" {
		unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	}
	os.Exit(m.Run())
}

// helperSpec says what a helper process does.
type helperSpec struct {
	// Systemd makes the helper set LISTEN_PID to its own PID before Inherit, as
	// systemd would (the test cannot know the PID before the fork).
	Systemd bool
	// Claims are Listen or ListenPacket calls, in order.
	Claims []claim
	// CloseClaimed closes every claimed socket afterwards, then reports which unix
	// socket files still exist.
	CloseClaimed bool
	// CloseUnclaimed calls Set.CloseUnclaimed.
	CloseUnclaimed bool
	// Shell runs a shell that lists its descriptors and environment.
	Shell bool
	// Child hands the claimed sockets to a further helper, running Child, with
	// ForChild and Child.Env.
	Child *helperSpec
}

// claim is one Listen (or, with Packet, ListenPacket) call.
type claim struct {
	Name, Network, Address string
	Packet                 bool
}

type helperFile struct {
	Fd     int
	Name   string
	Source string
	Kind   string
	Owned  bool
}

type claimResult struct {
	Err    string
	Addr   string
	Source string // from Held
	// ServeErr is "" when a connection (or datagram) to the claimed socket from within
	// the helper was accepted and its bytes read.
	ServeErr string
}

type helperResult struct {
	PID        int
	FDsBefore  map[int]string // fd 3 to 6 before Inherit: closed, cloexec or inherit
	FDsAfter   map[int]string // the same after Inherit and the claims
	InheritErr string
	Source     string
	Ignored    string
	Marker     string
	Files      []helperFile
	Claims     []claimResult
	Env        []string        // protocol variables left in the environment after Inherit
	Exists     map[string]bool // unix socket files after CloseClaimed
	Unclaimed  []int           // fds closed by CloseUnclaimed
	ShellFDs   []string        // what the shell found in /proc/$$/fd
	ShellEnv   []string        // protocol variables in the shell's environment
	// Nonblock is O_NONBLOCK of the first claimed socket before ForChild, after it
	// and after the further helper was started.
	Nonblock []bool
	Child    *helperResult
	ChildErr string
}

// TestHelperProcess is not a test: it is the helper process the other tests start.
func TestHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("helper process for the subprocess tests")
	}
	var spec helperSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "helper: bad spec:", err)
		os.Exit(3)
	}
	res := runHelperSpec(spec)
	b, _ := json.Marshal(res)
	fmt.Printf("%s%s\n", resultPrefix, b)
	os.Exit(0)
}

func fdState(fd int) string {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	switch {
	case err != nil:
		return "closed"
	case flags&unix.FD_CLOEXEC != 0:
		return "cloexec"
	}
	return "inherit"
}

func fdStates() map[int]string {
	m := map[int]string{}
	for fd := 3; fd <= 6; fd++ {
		m[fd] = fdState(fd)
	}
	return m
}

func protocolVars(environ []string) []string {
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case handoff.ListenPIDEnv, handoff.ListenFDsEnv, handoff.ListenFDNamesEnv, handoff.MarkerEnv:
			out = append(out, kv)
		}
	}
	return out
}

func runHelperSpec(spec helperSpec) *helperResult {
	res := &helperResult{PID: os.Getpid(), FDsBefore: fdStates()}
	if spec.Systemd {
		os.Setenv(handoff.ListenPIDEnv, fmt.Sprint(os.Getpid()))
	}
	s, err := Inherit()
	if err != nil {
		res.InheritErr = err.Error()
	}
	if s2, err2 := Inherit(); s2 != s || err2 != err {
		res.InheritErr += "; a second Inherit returned something else"
	}
	res.Env = protocolVars(os.Environ())
	res.Source, res.Ignored = s.Source().String(), s.Ignored()
	if m := s.Marker(); m != nil {
		res.Marker = m.String()
	}
	for _, f := range s.Files() {
		res.Files = append(res.Files, helperFile{Fd: f.Fd, Name: f.Name, Source: f.Source.String(), Kind: f.Kind.String(), Owned: f.Owned})
	}
	var closers []io.Closer
	var paths []string
	for _, c := range spec.Claims {
		var r claimResult
		if c.Packet {
			pc, err := s.ListenPacket(c.Name, c.Network, c.Address)
			if err != nil {
				r.Err = err.Error()
			} else {
				closers = append(closers, pc)
				r.Addr = pc.LocalAddr().String()
				r.ServeErr = errString(servePacket(pc))
			}
		} else {
			ln, err := s.Listen(c.Name, c.Network, c.Address)
			if err != nil {
				r.Err = err.Error()
			} else {
				closers = append(closers, ln)
				r.Addr = ln.Addr().String()
				r.ServeErr = errString(serveStream(ln))
				if c.Network == "unix" {
					paths = append(paths, r.Addr)
				}
			}
		}
		if r.Err == "" {
			held := s.Held()
			r.Source = held[len(held)-1].Source.String()
		}
		res.Claims = append(res.Claims, r)
	}
	if spec.CloseUnclaimed {
		for _, f := range s.CloseUnclaimed() {
			res.Unclaimed = append(res.Unclaimed, f.Fd)
		}
	}
	res.FDsAfter = fdStates()
	if spec.Shell {
		out, err := exec.Command("sh", "-c", `ls /proc/$$/fd; echo --env--; env`).Output()
		fds, env, _ := strings.Cut(string(out), "--env--\n")
		res.ShellFDs = strings.Fields(fds)
		res.ShellEnv = protocolVars(strings.Split(env, "\n"))
		if err != nil {
			res.ShellFDs = append(res.ShellFDs, "error: "+err.Error())
		}
	}
	if spec.Child != nil {
		res.Child, res.Nonblock, err = handToChild(s, *spec.Child, closers)
		res.ChildErr = errString(err)
	}
	if spec.CloseClaimed {
		for _, c := range closers {
			c.Close()
		}
		res.Exists = map[string]bool{}
		for _, p := range paths {
			_, err := os.Stat(p)
			res.Exists[p] = err == nil
		}
	}
	return res
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// serveStream connects to ln from this process and accepts the connection.
func serveStream(ln net.Listener) error {
	addr := ln.Addr()
	dialed := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout(addr.Network(), addr.String(), 5*time.Second)
		if err == nil {
			_, err = c.Write([]byte("ping"))
			c.Close()
		}
		dialed <- err
	}()
	if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Now().Add(5 * time.Second))
		defer d.SetDeadline(time.Time{})
	}
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "ping" {
		return fmt.Errorf("read %q, want ping", b)
	}
	return <-dialed
}

// servePacket sends a datagram to pc from this process and reads it.
func servePacket(pc net.PacketConn) error {
	addr := pc.LocalAddr()
	c, err := net.Dial(addr.Network(), addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 16)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("read %q, want ping", buf[:n])
	}
	return nil
}

// nonblocking reports whether the socket under c has O_NONBLOCK set.
func nonblocking(c any) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, fmt.Errorf("%T has no SyscallConn", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		return false, err
	}
	return flags&unix.O_NONBLOCK != 0, ferr
}

// handToChild passes the process's sockets to a further helper the way the upgrader
// does, and returns what it reported and the O_NONBLOCK flag of the first socket
// before ForChild, after it, and after the child was started.
func handToChild(s *Set, spec helperSpec, held []io.Closer) (*helperResult, []bool, error) {
	var nb []bool
	check := func() {
		if len(held) > 0 {
			b, _ := nonblocking(held[0])
			nb = append(nb, b)
		}
	}
	check()
	c, err := s.ForChild()
	if err != nil {
		return nil, nb, err
	}
	defer c.Close()
	check()
	gen := 1
	if m := s.Marker(); m != nil {
		gen = m.Generation
	}
	env := c.Env(specEnv(os.Environ(), spec), handoff.Marker{PID: os.Getpid(), PPID: os.Getpid(), Channel: handoff.ListenFDsStart + len(c.Files), Generation: gen + 1})
	ours, theirs, err := channelPair()
	if err != nil {
		return nil, nb, err
	}
	defer ours.Close()
	res, err := startHelper(env, append(slices.Clone(c.Files), theirs), func() { theirs.Close(); check() })
	return res, nb, err
}

// channelPair returns the two ends of a unix seqpacket socket pair, as the upgrader
// uses for its handover channel.
func channelPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "channel-parent"), os.NewFile(uintptr(fds[1]), "channel-child"), nil
}

// specEnv returns environ with the helper spec replaced by spec.
func specEnv(environ []string, spec helperSpec) []string {
	b, _ := json.Marshal(spec)
	out := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		if !strings.HasPrefix(kv, helperEnv+"=") {
			out = append(out, kv)
		}
	}
	return append(out, helperEnv+"="+string(b))
}

// startHelper runs the test binary as a helper with env and files at fd 3, 4, ...
// (a nil entry leaves that descriptor closed), calls started once it runs, waits for
// it (at most helperWait) and returns its result.
func startHelper(env []string, files []*os.File, started func()) (*helperResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), helperWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = env
	if os.Getenv("GORACE") == "" {
		// Under -race a process sleeps a second at exit by default.
		cmd.Env = append(slices.Clone(env), "GORACE=atexit_sleep_ms=0")
	}
	cmd.ExtraFiles = files
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if started != nil {
		started()
	}
	err := cmd.Wait()
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), resultPrefix); ok {
			var res helperResult
			if jerr := json.Unmarshal([]byte(line), &res); jerr != nil {
				return nil, fmt.Errorf("helper result: %v: %s", jerr, line)
			}
			if err != nil {
				return &res, fmt.Errorf("helper: %v\nstderr:\n%s", err, stderr.String())
			}
			return &res, nil
		}
	}
	if err == nil {
		err = errors.New("no result line")
	}
	return nil, fmt.Errorf("helper: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
}
