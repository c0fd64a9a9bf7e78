// Package sdns runs a real systemd as PID 1 of new PID and mount namespaces,
// so that end-to-end tests can drive it with systemctl on a machine where
// systemd is not PID 1 (a container, a CI runner).
//
// How it works (see init.sh written into each state directory, and Boot):
//
//	setsid script -qfec "unshare --pid --fork --mount --mount-proc --uts --ipc \
//	    --propagation private -- /bin/sh STATE/init.sh" STATE/console.log
//
// init.sh runs as PID 1 of the new namespaces: it makes every mount private,
// puts fresh tmpfs mounts on /run, /tmp and /var/tmp, makes /proc/sys
// read-only, binds script's pseudo-terminal over /dev/console (where PID 1
// systemd logs) and execs systemd with SYSTEMD_UNIT_PATH set to the test's
// own unit directory and nothing else. Sockets of the units listen in the
// host's network namespace: host clients reach them on 127.0.0.1.
//
// Dangers this package guards against (each one happened or nearly did):
//
//   - The distribution's unit path pulls in sysinit.target and
//     systemd-tmpfiles, which once wiped the host's /tmp. SYSTEMD_UNIT_PATH
//     never ends in ':' (which would append the default path), and /run, /tmp
//     and /var/tmp are private tmpfs mounts inside.
//   - State and unit directories must not be under /tmp, /run or /var/tmp
//     (replaced inside) nor under /etc, /usr, /lib. They live under BaseDir.
//   - PID 1 systemd tunes global sysctls at boot (fs.nr_open,
//     net.unix.max_dgram_qlen of the host network namespace, and, when it
//     thinks it runs on bare metal, kernel.core_pattern and kernel modules).
//     init.sh mounts /proc/sys read-only and sets $container so it does not.
//   - cgroups are not namespaced: two instances at once would share unit
//     cgroups. A lock (in-process and across processes, on BaseDir/.lock)
//     serializes instances; tests using this package must not run in
//     parallel with each other (they would just wait), and should use unique
//     unit names anyway. On a host whose PID 1 is systemd the instance would
//     share the host manager's cgroup tree, so Available refuses that unless
//     HANDOVER_SDNS_ALLOW_HOST_SYSTEMD=1.
//   - Only the systemd found in the process tree of the process Boot started,
//     after checking that it is a systemd that is PID 1 of another PID
//     namespace (and the same process as at boot), is ever signalled. Nothing
//     is killed by name.
//
// Do not run `systemctl enable`, or `set-property` without --runtime, inside:
// those write into the host's /etc.
//
// Units need [Unit] DefaultDependencies=no (there is no sysinit.target) and,
// as journald does not run, StandardOutput=append:PATH with a PATH from
// LogPath.
//
// Environment:
//
//	CI                               if set, Require fails instead of skipping
//	HANDOVER_SYSTEMD254              folder holding the unpacked systemd 254
//	                                 (default DefaultBackportsDir)
//	HANDOVER_SDNS_LOG_LEVEL          systemd --log-level (default info)
//	HANDOVER_SDNS_KEEP=1             keep state directories after the test
//	HANDOVER_SDNS_ALLOW_HOST_SYSTEMD=1  run even if the host's PID 1 is systemd
package sdns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BaseDir holds the lock file and one state directory per systemd instance.
// It must not be under /tmp, /run or /var/tmp: those are replaced inside the
// namespace, and unit files, binaries and logs must be visible on both sides.
const BaseDir = "/var/lib/handover-tests"

// DefaultBackportsDir is where .ci/fetch-systemd254 unpacks systemd 254 by
// default, and where Backports("") looks unless $HANDOVER_SYSTEMD254 is set.
const DefaultBackportsDir = BaseDir + "/systemd254"

// Version is one systemd build: the manager binary, the matching systemctl
// and the environment both need (LD_LIBRARY_PATH for an unpacked build).
type Version struct {
	// Name labels the version in messages and test names, e.g. "systemd254".
	Name string
	// Systemd is the absolute path of the manager (…/lib/systemd/systemd).
	Systemd string
	// Systemctl is the absolute path of the matching systemctl.
	Systemctl string
	// Env is added to the environment of systemd and of systemctl, e.g.
	// LD_LIBRARY_PATH=… for an unpacked build. It is not given to Exec.
	Env []string
	// Major is the version number reported by `systemd --version` (252, 254).
	Major int
}

// String returns the version's name and binary.
func (v Version) String() string {
	return fmt.Sprintf("%s (%s)", v.Name, v.Systemd)
}

// Check verifies that both binaries exist, run, and report the same version,
// and fills Major and Name from it.
func (v *Version) Check() error {
	if v.Systemd == "" || v.Systemctl == "" {
		return errors.New("sdns: empty Version (no systemd or systemctl path)")
	}
	for _, p := range []string{v.Systemd, v.Systemctl} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("sdns: %s is not an absolute path", p)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("sdns: %w", err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("sdns: %s is not an executable file", p)
		}
	}
	m1, err := binaryMajor(v.Systemd, v.Env)
	if err != nil {
		return err
	}
	m2, err := binaryMajor(v.Systemctl, v.Env)
	if err != nil {
		return err
	}
	if m1 != m2 {
		return fmt.Errorf("sdns: %s is systemd %d but %s is systemd %d; use the matching systemctl", v.Systemd, m1, v.Systemctl, m2)
	}
	v.Major = m1
	if v.Name == "" {
		v.Name = fmt.Sprintf("systemd%d", m1)
	}
	return nil
}

var versionLine = regexp.MustCompile(`^systemd ([0-9]+) `)

// binaryMajor runs `bin --version` (safe: it prints and exits) and parses
// the major version from its first line.
func binaryMajor(bin string, env []string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Env = append(baseEnv(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("sdns: %s --version: %v: %s", bin, err, firstLine(string(out)))
	}
	m := versionLine.FindStringSubmatch(firstLine(string(out)))
	if m == nil {
		return 0, fmt.Errorf("sdns: %s --version printed %q, not \"systemd N ...\"", bin, firstLine(string(out)))
	}
	return strconv.Atoi(m[1])
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSpace(s)
}

// Installed returns the distribution's systemd (252 on Debian 12):
// /usr/lib/systemd/systemd and /usr/bin/systemctl.
func Installed() (Version, error) {
	v := Version{
		Systemd:   firstExisting("/usr/lib/systemd/systemd", "/lib/systemd/systemd"),
		Systemctl: firstExisting("/usr/bin/systemctl", "/bin/systemctl"),
	}
	if v.Systemd == "" || v.Systemctl == "" {
		return v, errors.New("sdns: no installed systemd (/usr/lib/systemd/systemd and /usr/bin/systemctl)")
	}
	if err := v.Check(); err != nil {
		return v, err
	}
	return v, nil
}

func firstExisting(paths ...string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Backports returns the systemd 254 unpacked by .ci/fetch-systemd254 into
// dir; an empty dir means $HANDOVER_SYSTEMD254, or DefaultBackportsDir. The
// error says how to get it when it is absent.
func Backports(dir string) (Version, error) {
	if dir == "" {
		dir = os.Getenv("HANDOVER_SYSTEMD254")
	}
	if dir == "" {
		dir = DefaultBackportsDir
	}
	v := Version{
		Systemd:   filepath.Join(dir, "lib/systemd/systemd"),
		Systemctl: filepath.Join(dir, "bin/systemctl"),
		Env: []string{"LD_LIBRARY_PATH=" + filepath.Join(dir, "usr/lib/x86_64-linux-gnu/systemd") +
			":" + filepath.Join(dir, "usr/lib/x86_64-linux-gnu")},
	}
	if _, err := os.Stat(v.Systemd); err != nil {
		return v, fmt.Errorf("sdns: no systemd 254 in %s (run `.ci/fetch-systemd254 %s` as root, or set HANDOVER_SYSTEMD254): %w", dir, dir, err)
	}
	if err := v.Check(); err != nil {
		return v, err
	}
	if v.Major < 254 {
		return v, fmt.Errorf("sdns: %s is systemd %d, want 254 or later", v.Systemd, v.Major)
	}
	return v, nil
}

var (
	availableOnce sync.Once
	availableErr  error
)

// Available reports whether systemd can be run in namespaces here: nil if
// so, else an error saying why not (not root, a tool missing, namespaces not
// permitted, the host's PID 1 is systemd, ...). The result is cached.
func Available() error {
	availableOnce.Do(func() { availableErr = available() })
	return availableErr
}

func available() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("sdns: needs Linux, this is %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		return errors.New("sdns: needs root (to create PID and mount namespaces)")
	}
	for _, tool := range []string{"unshare", "nsenter", "script", "mount", "tty"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("sdns: %s not found (util-linux/coreutils): %v", tool, err)
		}
	}
	if _, err := os.Stat("/bin/sh"); err != nil {
		return fmt.Errorf("sdns: %v", err)
	}
	if fi, err := os.Stat("/dev/console"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return errors.New("sdns: /dev/console is missing or not a character device (a pseudo-terminal is bound over it inside)")
	}
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) == "systemd" &&
		os.Getenv("HANDOVER_SDNS_ALLOW_HOST_SYSTEMD") != "1" {
		return errors.New("sdns: the host's PID 1 is systemd; cgroups are not namespaced, so a test systemd " +
			"would share the host manager's cgroup tree. Set HANDOVER_SDNS_ALLOW_HOST_SYSTEMD=1 to run anyway")
	}
	if !cgroupMounted() {
		return errors.New("sdns: no cgroup filesystem mounted under /sys/fs/cgroup")
	}
	// A trial run of the namespaces and mounts init.sh needs.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--mount", "--mount-proc", "--uts", "--ipc",
		"--propagation", "private", "--", "/bin/sh", "-c",
		`[ "$$" = 1 ] && mount --make-rprivate / && mount -t tmpfs tmpfs /run && `+
			`mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys`)
	cmd.Env = baseEnv()
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sdns: cannot create PID and mount namespaces here: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// SkipOrFail skips the test with err, or fails it when the CI environment
// variable is set (so that CI never silently skips end-to-end tests).
func SkipOrFail(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%v (CI is set, so this is a failure, not a skip)", err)
	}
	t.Skip(err)
}

// Require skips the test (fails it if $CI is set) unless systemd can run in
// namespaces here (Available) and v checks out (Version.Check).
func Require(t testing.TB, v Version) {
	t.Helper()
	checkTestName(t)
	if err := Available(); err != nil {
		SkipOrFail(t, err)
	}
	if err := v.Check(); err != nil {
		SkipOrFail(t, err)
	}
}

// RequireInstalled returns Installed(), skipping (or failing under $CI) the
// test when it or the namespaces are unavailable.
func RequireInstalled(t testing.TB) Version {
	t.Helper()
	checkTestName(t)
	if err := Available(); err != nil {
		SkipOrFail(t, err)
	}
	v, err := Installed()
	if err != nil {
		SkipOrFail(t, err)
	}
	return v
}

// RequireBackports returns Backports(""), skipping (or failing under $CI)
// the test when it or the namespaces are unavailable. When systemd 254 is
// missing from the default directory, it first runs .ci/fetch-systemd254
// (found by walking up from the working directory) once, so that `go test
// ./...` as root on a fresh machine runs every test.
func RequireBackports(t testing.TB) Version {
	t.Helper()
	checkTestName(t)
	if err := Available(); err != nil {
		SkipOrFail(t, err)
	}
	v, err := Backports("")
	if err != nil && os.Getenv("HANDOVER_SYSTEMD254") == "" {
		fetchOnce.Do(func() { fetchErr = fetchBackports(t) })
		if fetchErr != nil {
			SkipOrFail(t, fmt.Errorf("%v; fetching it failed: %v", err, fetchErr))
		}
		v, err = Backports("")
	}
	if err != nil {
		SkipOrFail(t, err)
	}
	return v
}

var (
	fetchOnce sync.Once
	fetchErr  error
)

// fetchBackports runs .ci/fetch-systemd254 DefaultBackportsDir, serialized
// across processes by a lock file.
func fetchBackports(t testing.TB) error {
	script := ""
	for dir, _ := os.Getwd(); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		p := filepath.Join(dir, ".ci", "fetch-systemd254")
		if _, err := os.Stat(p); err == nil {
			script = p
			break
		}
	}
	if script == "" {
		return errors.New("no .ci/fetch-systemd254 above the working directory")
	}
	if err := os.MkdirAll(BaseDir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(BaseDir, ".fetch.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	t.Logf("sdns: systemd 254 is missing; running %s %s", script, DefaultBackportsDir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, DefaultBackportsDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", script, err, out)
	}
	return nil
}

// baseEnv is the clean environment every command this package starts gets:
// nothing of the test process's (no stray NOTIFY_SOCKET, LISTEN_FDS, ...).
func baseEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"SHELL=/bin/sh",
		"LANG=C.UTF-8",
	}
}

// safePath matches the paths this package accepts for state and units: they
// are written into a shell script, SYSTEMD_UNIT_PATH and unit files.
var safePath = regexp.MustCompile(`^/[A-Za-z0-9._/+-]*$`)

// checkPrivateDir returns an error unless dir (which must exist) is a
// directory of our own that is visible the same way inside the namespace and
// is no system unit directory: no ':' (a path-list separator), not under
// /tmp, /run, /var/tmp (replaced inside) nor /etc, /usr, /lib & co.
func checkPrivateDir(dir string) error {
	if !safePath.MatchString(dir) {
		return fmt.Errorf("sdns: %q: want an absolute path of [A-Za-z0-9._/+-] (no ':', no spaces)", dir)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("sdns: %w", err)
	}
	for _, p := range []string{dir, real} {
		p = filepath.Clean(p)
		if p == "/" {
			return fmt.Errorf("sdns: %s is the root directory", dir)
		}
		for _, bad := range []string{"/tmp", "/run", "/var/tmp", "/var/run", "/dev", "/proc", "/sys"} {
			if p == bad || strings.HasPrefix(p, bad+"/") {
				return fmt.Errorf("sdns: %s is under %s, which is replaced or special inside the namespace", dir, bad)
			}
		}
		for _, bad := range []string{"/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/boot"} {
			if p == bad || strings.HasPrefix(p, bad+"/") {
				return fmt.Errorf("sdns: %s is under %s; it looks like a system directory, use one of our own", dir, bad)
			}
		}
	}
	return nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runCmd runs cmd with a bound, collecting stdout and stderr together. A
// non-zero exit is reported in code with a nil error; err is for commands
// that could not run, were killed by a signal, or timed out.
func runCmd(cmd *exec.Cmd) (string, int, error) {
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	out := buf.String()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return out, ee.ExitCode(), nil
	}
	if err != nil {
		return out, -1, fmt.Errorf("sdns: %s: %w", strings.Join(cmd.Args, " "), err)
	}
	return out, 0, nil
}
