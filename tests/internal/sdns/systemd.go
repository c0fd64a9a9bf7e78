package sdns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts; every wait in this package is bounded.
var (
	// BootTimeout bounds Boot: systemd appearing and test.target active.
	BootTimeout = 30 * time.Second
	// CommandTimeout bounds each Ctl and Exec call.
	CommandTimeout = 30 * time.Second
	// StopTimeout bounds waiting for the killed systemd and for script.
	StopTimeout = 15 * time.Second
	// LockTimeout bounds waiting for another instance (in this process or
	// another) to stop.
	LockTimeout = 5 * time.Minute
)

// TestPrefix, when set (by a TestMain that runs its tests at the same time and
// only those named so one at a time, see package shard), is how the name of every
// top-level test that boots a systemd must start: New fails any other test, on
// every machine (before it checks that systemd can run), so that a test added
// without the prefix cannot overlap another instance.
var TestPrefix string

// checkTestName fails t unless its top-level test's name starts with TestPrefix.
func checkTestName(t testing.TB) {
	t.Helper()
	if err := testNameError(t.Name()); err != nil {
		t.Fatal(err)
	}
}

// testNameError says what is wrong with the name of a test that boots a systemd.
func testNameError(name string) error {
	top, _, _ := strings.Cut(name, "/")
	if TestPrefix == "" || strings.HasPrefix(top, TestPrefix) {
		return nil
	}
	return fmt.Errorf("sdns: %s boots a systemd, so its name must start with %s: the tests run at the same time, "+
		"except those named %s..., which run one at a time (two systemd instances share the host's cgroups)",
		top, TestPrefix, TestPrefix)
}

// Suspicious lists console-log fragments that mean systemd is unhappy with a
// service's processes; SuspiciousLines finds them.
var Suspicious = []string{
	"which is not our child",
	"does not belong to service",
	"Got notification message from PID",
	"Failed to parse",
	"Unknown key",
	"Unknown section",
	"Assertion",
	"Freezing execution",
	"Caught <",
}

// Systemd is one systemd running as PID 1 of its own PID and mount
// namespaces. Create it with Start, or New + AddUnit + Boot.
type Systemd struct {
	// LogLevel is systemd's --log-level ("info" unless
	// $HANDOVER_SDNS_LOG_LEVEL is set; "debug" shows much more). Set it
	// before Boot.
	LogLevel string

	t       testing.TB
	v       Version
	dir     string // state directory
	unitDir string
	console string
	release func()

	mu       sync.Mutex
	booted   bool
	stopped  bool
	cmd      *exec.Cmd     // setsid script ...
	waitDone chan struct{} // closed when cmd has been reaped
	waitErr  error
	pid      int    // systemd's host PID
	start    uint64 // its start time
	ns       string // its PID namespace
	cgBefore map[string]bool

	stopOnce sync.Once
	stopErr  error
}

// Start is New, AddUnit for each of units (name → contents), and Boot. A
// test.target that Wants= every .socket unit is added unless units has one.
// Stop is registered with t.Cleanup.
func Start(t testing.TB, v Version, units map[string]string) (*Systemd, error) {
	t.Helper()
	s, err := New(t, v)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(units))
	for n := range units {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := s.AddUnit(n, units[n]); err != nil {
			return nil, err
		}
	}
	if err := s.Boot(); err != nil {
		return nil, err
	}
	return s, nil
}

// New takes the instance lock (waiting up to LockTimeout for other
// instances, in this process or another, to stop), reaps instances left
// behind by killed test processes, and creates a fresh state directory
// BaseDir/run-PID-RANDOM holding units/, logs/ and later init.sh and
// console.log. Stop, which kills systemd and removes the directory, is
// registered with t.Cleanup.
func New(t testing.TB, v Version) (*Systemd, error) {
	t.Helper()
	checkTestName(t)
	if err := Available(); err != nil {
		return nil, err
	}
	if err := v.Check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(BaseDir, 0o755); err != nil {
		return nil, fmt.Errorf("sdns: %w", err)
	}
	if err := checkPrivateDir(BaseDir); err != nil {
		return nil, err
	}
	release, err := lock(t.Name())
	if err != nil {
		return nil, err
	}
	reapStale(t)
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		release()
		return nil, err
	}
	dir := filepath.Join(BaseDir, fmt.Sprintf("run-%d-%s", os.Getpid(), hex.EncodeToString(rnd[:])))
	s := &Systemd{
		LogLevel: "info",
		t:        t,
		v:        v,
		dir:      dir,
		unitDir:  filepath.Join(dir, "units"),
		console:  filepath.Join(dir, "console.log"),
		release:  release,
	}
	if l := os.Getenv("HANDOVER_SDNS_LOG_LEVEL"); l != "" {
		s.LogLevel = l
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("sdns cleanup: %v", err)
		}
	})
	for _, d := range []string{dir, s.unitDir, filepath.Join(dir, "logs"), filepath.Join(dir, "bin")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("sdns: %w", err)
		}
	}
	if err := checkPrivateDir(s.unitDir); err != nil {
		return nil, err
	}
	st, err := readStat(os.Getpid())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(fmt.Sprintf("%d %d %s\n", os.Getpid(), st.start, t.Name())), 0o644); err != nil {
		return nil, fmt.Errorf("sdns: %w", err)
	}
	return s, nil
}

// Dir returns the state directory. It is visible at the same path inside
// the namespace: put binaries the units run here (Dir()/bin exists).
func (s *Systemd) Dir() string { return s.dir }

// UnitDir returns the directory systemd loads units from (and from nowhere
// else). After Boot, add units with AddUnit and then Ctl("daemon-reload").
func (s *Systemd) UnitDir() string { return s.unitDir }

// Version returns the systemd version this instance runs.
func (s *Systemd) Version() Version { return s.v }

// LogPath returns an absolute path in the state directory for a service's
// output, e.g. "StandardOutput=append:" + s.LogPath("x.log") (journald does
// not run). name must be a plain file name.
func (s *Systemd) LogPath(name string) string {
	return filepath.Join(s.dir, "logs", filepath.Base(name))
}

// ReadLog returns the contents of LogPath(name) ("" if it does not exist).
func (s *Systemd) ReadLog(name string) string {
	b, _ := os.ReadFile(s.LogPath(name))
	return string(b)
}

var (
	unitName    = regexp.MustCompile(`^[A-Za-z0-9:_.@-]+\.(service|socket|target|timer|path|slice|mount)$`)
	noDefDeps   = regexp.MustCompile(`(?m)^\s*DefaultDependencies\s*=\s*(no|false|0|off)\s*$`)
	socketUnits = regexp.MustCompile(`\.socket$`)
	envName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// AddUnit writes a unit file into UnitDir. The unit must say
// DefaultDependencies=no (there is no sysinit.target to depend on).
func (s *Systemd) AddUnit(name, contents string) error {
	if !unitName.MatchString(name) {
		return fmt.Errorf("sdns: bad unit name %q", name)
	}
	if !noDefDeps.MatchString(contents) {
		return fmt.Errorf("sdns: unit %s needs DefaultDependencies=no in [Unit] (there is no sysinit.target)", name)
	}
	if err := os.WriteFile(filepath.Join(s.unitDir, name), []byte(contents), 0o644); err != nil {
		return fmt.Errorf("sdns: %w", err)
	}
	return nil
}

// initScript is run by /bin/sh as PID 1 of the new namespaces; it becomes
// systemd. Values are shell-quoted; the result is kept in the state
// directory as init.sh for inspection.
const initScript = `#!/bin/sh
# Written by tests/internal/sdns. Runs as PID 1 of new PID, mount, UTS and IPC
# namespaces (started by: setsid script -qfec "unshare ... -- /bin/sh init.sh"
# console.log), then execs systemd.
set -eu
die() { echo "sdns init: $*" >&2; exit 1; }
[ "$$" = 1 ] || die "not PID 1 of a new PID namespace"
[ "$(readlink /proc/self/ns/mnt)" != %[1]s ] || die "not in a new mount namespace"
# Nothing mounted from here on may propagate to the host.
mount --make-rprivate /
# Private /run, /tmp, /var/tmp: nothing systemd or a unit does there reaches
# the host (a stray systemd-tmpfiles once wiped the host's /tmp).
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
mkdir -p /run/systemd
# Sysctls are global or belong to the host's network namespace; PID 1
# systemd raises some at boot. Read-only here.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
# As PID 1, systemd logs to /dev/console: point that at script's terminal.
mount --bind "$(tty)" /dev/console
# Tell systemd it runs in a container: no kernel module loading, no
# core_pattern or clock setup.
export container=handover-sdns
export SYSTEMD_COLORS=0
# Our units only: no trailing colon, which would append the system unit path.
export SYSTEMD_UNIT_PATH=%[2]s
%[3]sexec %[4]s --system --unit=test.target --log-target=console --log-level=%[5]s --show-status=false
`

var logLevel = regexp.MustCompile(`^(emerg|alert|crit|err|warning|notice|info|debug|[0-7])$`)

// Boot starts systemd with the units in UnitDir and waits, up to
// BootTimeout, until test.target is active. On failure it stops the
// instance and returns an error with the tail of the console log.
func (s *Systemd) Boot() error {
	s.mu.Lock()
	if s.booted || s.stopped {
		s.mu.Unlock()
		return errors.New("sdns: Boot called twice, or after Stop")
	}
	s.booted = true
	s.mu.Unlock()
	began := time.Now()
	if err := s.boot(); err != nil {
		err = fmt.Errorf("%w\nconsole log (last lines):\n%s", err, tail(s.ConsoleLog(), 40))
		if serr := s.Stop(); serr != nil {
			err = fmt.Errorf("%w\nand stopping: %v", err, serr)
		}
		return err
	}
	s.t.Logf("sdns: %s up as host PID %d in %v (state %s)", s.v.Name, s.pid, time.Since(began).Round(time.Millisecond), s.dir)
	return nil
}

func (s *Systemd) boot() error {
	if !logLevel.MatchString(s.LogLevel) {
		return fmt.Errorf("sdns: bad LogLevel %q", s.LogLevel)
	}
	if err := checkPrivateDir(s.unitDir); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(s.unitDir, "test.target")); errors.Is(err, os.ErrNotExist) {
		if err := s.AddUnit("test.target", s.defaultTarget()); err != nil {
			return err
		}
	}
	hostMnt, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("sdns: %w", err)
	}
	var env strings.Builder
	for _, e := range s.v.Env {
		k, val, ok := strings.Cut(e, "=")
		if !ok || !envName.MatchString(k) {
			return fmt.Errorf("sdns: bad Version.Env entry %q", e)
		}
		fmt.Fprintf(&env, "export %s=%s\n", k, shellQuote(val))
	}
	script := fmt.Sprintf(initScript, shellQuote(hostMnt), shellQuote(s.unitDir), env.String(),
		shellQuote(s.v.Systemd), s.LogLevel)
	initPath := filepath.Join(s.dir, "init.sh")
	if err := os.WriteFile(initPath, []byte(script), 0o755); err != nil {
		return fmt.Errorf("sdns: %w", err)
	}

	s.cgBefore = cgroupDirs()
	// script(1) runs the command with $SHELL -c and gives it a
	// pseudo-terminal; "exec" leaves no shell between script and unshare.
	inner := "exec unshare --pid --fork --mount --mount-proc --uts --ipc --propagation private -- /bin/sh " + shellQuote(initPath)
	cmd := exec.Command("script", "-qfec", inner, s.console)
	cmd.Env = baseEnv()
	cmd.Dir = s.dir
	// setsid(2), as setsid(1) in the recipe: a session of its own, no
	// controlling terminal of ours. cmd.Process.Pid is script itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sdns: starting script: %w", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.waitDone = make(chan struct{})
	s.mu.Unlock()
	go func() {
		s.waitErr = cmd.Wait()
		close(s.waitDone)
	}()

	deadline := time.Now().Add(BootTimeout)
	// Find systemd in the process tree of script: script → unshare → PID 1
	// (sh init.sh, which execs systemd).
	for s.pid == 0 {
		for _, p := range descendants(cmd.Process.Pid) {
			if isOurSystemd(p, 0) == nil {
				st, err := readStat(p)
				if err != nil {
					continue
				}
				ns, err := pidNS(p)
				if err != nil {
					continue
				}
				s.mu.Lock()
				s.pid, s.start, s.ns = p, st.start, ns
				s.mu.Unlock()
				break
			}
		}
		if s.pid != 0 {
			break
		}
		select {
		case <-s.waitDone:
			return fmt.Errorf("sdns: systemd did not come up (script exited: %v)", s.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sdns: systemd did not appear within %v", BootTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "systemd.pid"), []byte(fmt.Sprintf("%d %d\n", s.pid, s.start)), 0o644); err != nil {
		return fmt.Errorf("sdns: %w", err)
	}
	idle := 0
	for {
		_, code, err := s.Ctl("is-active", "--quiet", "test.target")
		if err == nil && code == 0 {
			return nil
		}
		if err := isOurSystemd(s.pid, s.start); err != nil {
			return fmt.Errorf("sdns: systemd (host PID %d) went away while booting: %v", s.pid, err)
		}
		// No job left but test.target not active: its start failed (a
		// failed dependency leaves a target inactive, not failed).
		// Seen twice in a row, so as not to race the initial transaction.
		if jobs, code, err := s.Ctl("list-jobs", "--no-legend"); err == nil && code == 0 && strings.TrimSpace(jobs) == "" {
			idle++
		} else {
			idle = 0
		}
		if idle >= 2 {
			out, _, _ := s.Ctl("list-units", "--all", "--no-legend")
			return fmt.Errorf("sdns: test.target did not start (no jobs left); units:\n%s", out)
		}
		if time.Now().After(deadline) {
			out, _, _ := s.Ctl("list-units", "--all", "--no-legend")
			return fmt.Errorf("sdns: test.target not active within %v; units:\n%s", BootTimeout, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Systemd) defaultTarget() string {
	var wants []string
	ents, _ := os.ReadDir(s.unitDir)
	for _, e := range ents {
		if socketUnits.MatchString(e.Name()) {
			wants = append(wants, e.Name())
		}
	}
	t := "[Unit]\nDescription=handover test target\nDefaultDependencies=no\n"
	if len(wants) > 0 {
		t += "Wants=" + strings.Join(wants, " ") + "\nAfter=" + strings.Join(wants, " ") + "\n"
	}
	return t
}

// PID returns systemd's PID as seen from the host (0 before Boot).
func (s *Systemd) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// running returns systemd's host PID after checking it is still our
// systemd.
func (s *Systemd) running() (int, error) {
	s.mu.Lock()
	pid, start, stopped := s.pid, s.start, s.stopped
	s.mu.Unlock()
	if pid == 0 || stopped {
		return 0, errors.New("sdns: systemd is not running (not booted, or stopped)")
	}
	if err := isOurSystemd(pid, start); err != nil {
		return 0, fmt.Errorf("sdns: systemd (host PID %d) is gone: %w", pid, err)
	}
	return pid, nil
}

// Command returns a command that runs args inside the namespaces (via
// nsenter -t PID -m -p), with a clean environment (PATH only; append to
// cmd.Env as needed) and the state directory as working directory. It is
// killed when ctx is done. Use it for long-running or streaming commands;
// Exec for simple ones. The process is in systemd's PID and mount
// namespaces but is a child of nsenter on the host, not of systemd, and in
// no unit's cgroup; inside, its parent PID reads as 0.
func (s *Systemd) Command(ctx context.Context, args ...string) (*exec.Cmd, error) {
	if len(args) == 0 {
		return nil, errors.New("sdns: Command needs a program")
	}
	pid, err := s.running()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-m", "-p", "--"}, args...)...)
	cmd.Env = baseEnv()
	cmd.Dir = s.dir
	cmd.WaitDelay = 2 * time.Second
	return cmd, nil
}

// Exec runs args inside the namespaces and returns their combined output
// and exit code. err is non-nil only if the command could not run, was
// killed by a signal, or took longer than CommandTimeout.
func (s *Systemd) Exec(args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd, err := s.Command(ctx, args...)
	if err != nil {
		return "", -1, err
	}
	return runCmd(cmd)
}

// Ctl runs `systemctl --no-pager ARGS...` of this version inside the
// namespaces and returns its combined output and exit code (err as for
// Exec). SYSTEMD_PAGER=cat, SYSTEMD_COLORS=0 and Version.Env are set.
func (s *Systemd) Ctl(args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd, err := s.Command(ctx, append([]string{s.v.Systemctl, "--no-pager"}, args...)...)
	if err != nil {
		return "", -1, err
	}
	cmd.Env = append(cmd.Env, "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0")
	cmd.Env = append(cmd.Env, s.v.Env...)
	return runCmd(cmd)
}

// CtlOK is Ctl, with a non-zero exit turned into an error holding the output.
func (s *Systemd) CtlOK(args ...string) (string, error) {
	out, code, err := s.Ctl(args...)
	if err == nil && code != 0 {
		err = fmt.Errorf("sdns: systemctl %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out))
	}
	return out, err
}

// Show returns one property of a unit (systemctl show -p PROP --value UNIT).
func (s *Systemd) Show(unit, prop string) (string, error) {
	out, err := s.CtlOK("show", "-p", prop, "--value", unit)
	return strings.TrimRight(out, "\n"), err
}

// MainPID returns the unit's MainPID, a PID in systemd's namespace (0 if
// none); see HostPID.
func (s *Systemd) MainPID(unit string) (int, error) {
	v, err := s.Show(unit, "MainPID")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("sdns: MainPID of %s is %q", unit, v)
	}
	return n, nil
}

// ActiveState returns the unit's ActiveState (active, inactive, failed,
// activating, deactivating, reloading).
func (s *Systemd) ActiveState(unit string) (string, error) {
	return s.Show(unit, "ActiveState")
}

// WaitState polls, up to timeout, until the unit's ActiveState is state.
// The error holds the last state and `systemctl status` of the unit.
func (s *Systemd) WaitState(unit, state string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := s.ActiveState(unit)
		if err == nil && got == state {
			return nil
		}
		if _, rerr := s.running(); rerr != nil {
			return rerr
		}
		if time.Now().After(deadline) {
			st, _, _ := s.Ctl("status", unit)
			return fmt.Errorf("sdns: %s: ActiveState %q (err %v), want %q after %v\n%s", unit, got, err, state, timeout, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitActive is WaitState(unit, "active", timeout).
func (s *Systemd) WaitActive(unit string, timeout time.Duration) error {
	return s.WaitState(unit, "active", timeout)
}

// ConsoleLog returns everything systemd printed so far (its console, copied
// by script(1)), with carriage returns removed.
func (s *Systemd) ConsoleLog() string {
	b, _ := os.ReadFile(s.console)
	return strings.ReplaceAll(string(b), "\r", "")
}

// Grep returns the console-log lines matching the regular expression
// pattern. It panics if pattern does not compile.
func (s *Systemd) Grep(pattern string) []string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, l := range strings.Split(s.ConsoleLog(), "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// SuspiciousLines returns the console-log lines containing any of
// Suspicious (e.g. "Supervising process N which is not our child").
func (s *Systemd) SuspiciousLines() []string {
	var out []string
	for _, l := range strings.Split(s.ConsoleLog(), "\n") {
		for _, frag := range Suspicious {
			if strings.Contains(l, frag) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// HostPID translates a PID in systemd's namespace (e.g. a MainPID) into
// the host PID, by scanning /proc/*/status NSpid lines of the processes in
// systemd's PID namespace.
func (s *Systemd) HostPID(nsPID int) (int, error) {
	pid, err := s.running()
	if err != nil {
		return 0, err
	}
	if nsPID == 1 {
		return pid, nil
	}
	if nsPID <= 0 {
		return 0, fmt.Errorf("sdns: no such PID %d", nsPID)
	}
	for _, p := range allPIDs() {
		if ns, err := pidNS(p); err != nil || ns != s.ns {
			continue
		}
		ids, err := nsPIDs(p)
		if err == nil && len(ids) >= 2 && ids[len(ids)-1] == nsPID {
			return p, nil
		}
	}
	return 0, fmt.Errorf("sdns: no process with PID %d in systemd's namespace", nsPID)
}

// Processes returns the host PIDs of all processes in systemd's PID
// namespace, systemd included.
func (s *Systemd) Processes() ([]int, error) {
	if _, err := s.running(); err != nil {
		return nil, err
	}
	var out []int
	for _, p := range allPIDs() {
		if ns, err := pidNS(p); err == nil && ns == s.ns {
			out = append(out, p)
		}
	}
	return out, nil
}

// Stop kills systemd with SIGKILL (the whole namespace dies with it), waits
// until it is gone, reaps the script process Boot started, removes the
// cgroups systemd left behind and the state directory (unless
// HANDOVER_SDNS_KEEP=1), and releases the lock. Only the systemd found at
// Boot is signalled, after checking it is still that process. Stop is
// idempotent and registered with t.Cleanup by New.
func (s *Systemd) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Systemd) stop() error {
	began := time.Now()
	s.mu.Lock()
	s.stopped = true
	pid, start, cmd, waitDone := s.pid, s.start, s.cmd, s.waitDone
	s.mu.Unlock()
	defer s.release()
	var errs []error
	if cmd != nil {
		if pid != 0 {
			if sameProcess(pid, start) {
				if err := killVerified(pid, func(p int) error { return isOurSystemd(p, start) }); err != nil {
					errs = append(errs, fmt.Errorf("not killing host PID %d: %w", pid, err))
				}
			}
		} else {
			// systemd never showed up; kill the PID 1 of the namespace we
			// created, if there is one, found below our own child.
			for _, p := range descendants(cmd.Process.Pid) {
				if st, err := readStat(p); err == nil && nsInit(p) == nil {
					if err := killVerified(p, func(q int) error {
						if !sameProcess(q, st.start) {
							return errors.New("gone")
						}
						return nsInit(q)
					}); err == nil {
						_ = waitGone(p, st.start, StopTimeout)
					}
				}
			}
		}
		if pid != 0 {
			if err := waitGone(pid, start, StopTimeout); err != nil {
				errs = append(errs, err)
			}
		}
		select {
		case <-waitDone:
		case <-time.After(StopTimeout):
			// script is our own child: kill and reap it.
			_ = cmd.Process.Kill()
			select {
			case <-waitDone:
			case <-time.After(StopTimeout):
				errs = append(errs, fmt.Errorf("script (PID %d) not reaped after kill", cmd.Process.Pid))
			}
		}
		if removed := removeNewCgroups(s.cgBefore); len(removed) > 0 && testing.Verbose() {
			s.t.Logf("sdns: removed %d leftover cgroups", len(removed))
		}
		if pid != 0 {
			s.t.Logf("sdns: %s (host PID %d) stopped in %v", s.v.Name, pid, time.Since(began).Round(time.Millisecond))
		}
	}
	if s.t.Failed() {
		s.t.Logf("sdns: console log of %s (last lines):\n%s", s.v.Name, tail(s.ConsoleLog(), 60))
	}
	if os.Getenv("HANDOVER_SDNS_KEEP") == "1" {
		s.t.Logf("sdns: keeping %s (HANDOVER_SDNS_KEEP=1)", s.dir)
	} else if len(errs) == 0 {
		if err := removeStateDir(s.dir); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, fmt.Errorf("kept %s", s.dir))
	}
	if len(errs) > 0 {
		return fmt.Errorf("sdns: stop: %w", errors.Join(errs...))
	}
	return nil
}

// removeStateDir removes a state directory, after checking it is one.
func removeStateDir(dir string) error {
	if filepath.Dir(dir) != BaseDir || !strings.HasPrefix(filepath.Base(dir), "run-") {
		return fmt.Errorf("sdns: refusing to remove %s", dir)
	}
	return os.RemoveAll(dir)
}
