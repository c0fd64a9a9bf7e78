package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

var builds struct {
	mu    sync.Mutex
	dir   string
	built map[string]string // binary name -> target key, built (or found built) by this process
}

// BuildsEnv names the variable through which ShareBuilds hands a build directory
// to the test processes a coordinator starts (see package shard): Build and
// Variant put their binaries there, once for all of them, instead of in a
// directory of their own.
const BuildsEnv = "HANDOVER_TEST_BUILDS"

// sharedBuilds is $HANDOVER_TEST_BUILDS, taken out of the environment so that the
// servers the tests start do not inherit it.
var sharedBuilds = func() string {
	dir := os.Getenv(BuildsEnv)
	os.Unsetenv(BuildsEnv)
	return dir
}()

// ShareBuilds makes a build directory for the test processes a coordinator is
// about to start, and builds pkgs there first (the binaries most tests need: then
// no test waits for a build inside a timed step). env, added to the test
// processes' environment, points Build there; done removes the directory. Its
// result is what shard.Config's Setup returns.
func ShareBuilds(pkgs ...string) (env []string, done func(), err error) {
	dir, err := os.MkdirTemp("", "handover-build-")
	if err != nil {
		return nil, nil, fmt.Errorf("proc: %w", err)
	}
	if err := buildInto(dir, plain(pkgs)); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return []string{BuildsEnv + "=" + dir}, func() { os.RemoveAll(dir) }, nil
}

// Build compiles the given main packages (import paths such as
// "github.com/seed-a7250cfa/handover/cmd/handover-demo", or paths relative
// to the test's package directory) with the go tool on PATH, and returns
// the directory holding the binaries, each named after the last element of
// its package path. Each package is built at most once per test binary run
// (once per run of all of them, in a directory ShareBuilds shared), so tests
// can call Build freely. A build failure fails t.
func Build(t testing.TB, pkgs ...string) string {
	t.Helper()
	dir, err := build(plain(pkgs))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// Binary builds one main package like Build and returns its binary's path.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	return filepath.Join(Build(t, pkg), path.Base(pkg))
}

// Variant builds the main package pkg with more go build flags (such as
// "-ldflags", "-X main.mode=hang") into a binary called name, like Build (once
// per run), and returns its path. Tests copy it where they need it; they must not
// change it.
func Variant(t testing.TB, pkg, name string, flags ...string) string {
	t.Helper()
	dir, err := build([]target{{pkg: pkg, name: name, flags: flags}})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// BuildE is Build for callers without a testing.TB (e.g. TestMain).
func BuildE(pkgs ...string) (string, error) { return build(plain(pkgs)) }

// target is one binary to build: pkg with flags, named name.
type target struct {
	pkg, name string
	flags     []string
}

// key identifies what a binary was built from; NAME.pkg beside it holds it.
func (g target) key() string { return strings.Join(append([]string{g.pkg}, g.flags...), "\x00") }

// keyText is a key for messages: the package and its flags.
func keyText(k string) string { return strings.ReplaceAll(k, "\x00", " ") }

// plain makes the targets of packages built without flags, named after their
// package's last element.
func plain(pkgs []string) []target {
	ts := make([]target, len(pkgs))
	for i, p := range pkgs {
		ts[i] = target{pkg: p, name: path.Base(p)}
	}
	return ts
}

func build(ts []target) (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir == "" {
		dir := sharedBuilds
		if dir == "" {
			var err error
			if dir, err = os.MkdirTemp("", "handover-build-"); err != nil {
				return "", fmt.Errorf("proc: %w", err)
			}
		}
		builds.dir, builds.built = dir, map[string]string{}
	}
	var missing []target
	for _, g := range ts {
		switch k, ok := builds.built[g.name]; {
		case !ok:
			missing = append(missing, g)
		case k != g.key():
			return "", fmt.Errorf("proc: %q and %q would both build binary %q", keyText(k), keyText(g.key()), g.name)
		}
	}
	if len(missing) == 0 {
		return builds.dir, nil
	}
	if sharedBuilds != "" && !built(builds.dir, missing) {
		// Other test processes build into the same directory.
		unlock, err := lockFile(filepath.Join(builds.dir, ".lock"))
		if err != nil {
			return "", err
		}
		defer unlock()
	}
	if err := buildInto(builds.dir, missing); err != nil {
		return "", err
	}
	for _, g := range missing {
		builds.built[g.name] = g.key()
	}
	return builds.dir, nil
}

// built reports whether dir holds the binaries of all of ts already.
func built(dir string, ts []target) bool {
	for _, g := range ts {
		if b, err := os.ReadFile(filepath.Join(dir, g.name) + ".pkg"); err != nil || string(b) != g.key() {
			return false
		}
	}
	return true
}

// buildInto builds those of ts whose binary dir does not hold yet: the plain ones
// in one go build, each variant in one of its own. A file NAME.pkg beside each
// binary records what it was built from, so that two targets cannot claim one name.
func buildInto(dir string, ts []target) error {
	var plainPkgs []string
	var missing, variants []target
	for _, g := range ts {
		b, err := os.ReadFile(filepath.Join(dir, g.name) + ".pkg")
		switch {
		case err == nil && string(b) == g.key():
			continue
		case err == nil:
			return fmt.Errorf("proc: %q and %q would both build binary %q", keyText(string(b)), keyText(g.key()), g.name)
		}
		for _, m := range missing {
			if m.name == g.name {
				return fmt.Errorf("proc: %q and %q would both build binary %q", m.pkg, g.pkg, g.name)
			}
		}
		missing = append(missing, g)
		if len(g.flags) == 0 && g.name == path.Base(g.pkg) {
			plainPkgs = append(plainPkgs, g.pkg)
		} else {
			variants = append(variants, g)
		}
	}
	if len(plainPkgs) > 0 {
		if err := goBuild(append([]string{"-o", dir + string(filepath.Separator)}, plainPkgs...)); err != nil {
			return err
		}
	}
	for _, g := range variants {
		if err := goBuild(append(append([]string{"-o", filepath.Join(dir, g.name)}, g.flags...), g.pkg)); err != nil {
			return err
		}
	}
	for _, g := range missing {
		bin := filepath.Join(dir, g.name)
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("proc: go build produced no binary for %q (not a main package?): %w", g.pkg, err)
		}
		// Written whole, then renamed: built reads it without the lock.
		if err := os.WriteFile(bin+".pkg.new", []byte(g.key()), 0o644); err != nil {
			return fmt.Errorf("proc: %w", err)
		}
		if err := os.Rename(bin+".pkg.new", bin+".pkg"); err != nil {
			return fmt.Errorf("proc: %w", err)
		}
	}
	return nil
}

// goBuild runs go build with args, with the go tool on PATH (else $GOROOT's).
func goBuild(args []string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	cmd := exec.Command(goTool, append([]string{"build"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("proc: %s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return nil
}

// lockFile takes an exclusive flock on path (created if need be) and returns its
// release. The kernel releases it if the process dies.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("proc: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("proc: flock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// CleanupBuilds removes the directory of binaries made by Build (unless
// ShareBuilds shared it: its done removes it). Call it from TestMain after m.Run.
func CleanupBuilds() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" && builds.dir != sharedBuilds {
		os.RemoveAll(builds.dir)
	}
	builds.dir, builds.built = "", nil
}
