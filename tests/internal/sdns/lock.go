package sdns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// One systemd instance at a time: cgroups are not namespaced, so two would
// share init.scope and system.slice. lock serializes instances within this
// process (holder) and across processes (flock on BaseDir/.lock, released by
// the kernel if the process dies), e.g. test binaries of several packages
// run by one `go test ./...`.

var (
	holderMu sync.Mutex
	holder   string // name of the test holding the in-process lock
)

// lock waits up to LockTimeout for the instance lock and returns its release.
func lock(name string) (func(), error) {
	deadline := time.Now().Add(LockTimeout)
	for {
		holderMu.Lock()
		h := holder
		if h == "" {
			holder = name
		}
		holderMu.Unlock()
		if h == "" {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sdns: %s waited %v for the systemd of %s (same process) to stop; "+
				"a test must Stop an instance before starting another, and tests using sdns must not run in parallel", name, LockTimeout, h)
		}
		time.Sleep(50 * time.Millisecond)
	}
	unhold := func() {
		holderMu.Lock()
		holder = ""
		holderMu.Unlock()
	}
	path := filepath.Join(BaseDir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		unhold()
		return nil, fmt.Errorf("sdns: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			unhold()
			return nil, fmt.Errorf("sdns: flock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			who, _ := os.ReadFile(path)
			f.Close()
			unhold()
			return nil, fmt.Errorf("sdns: waited %v for %s, held by another process (%s)", LockTimeout, path, strings.TrimSpace(string(who)))
		}
		// Poll often: a process that runs its systemd tests one after another
		// releases the lock and takes it again a test-process start later; a
		// waiter polling slower than that would starve.
		time.Sleep(10 * time.Millisecond)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d, test %s\n", os.Getpid(), name)), 0)
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = f.Truncate(0)
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			f.Close()
			unhold()
		})
	}, nil
}

// reapStale cleans up after test processes that died without running their
// cleanups (killed, or a test timeout): for each BaseDir/run-* whose owner
// process is gone, it kills the systemd recorded there, if that PID still is
// that systemd (same start time, PID 1 of another namespace, and its
// SYSTEMD_UNIT_PATH is that directory's units), removes the empty cgroups
// named after its units, then removes the directory.
// Called with the lock held.
func reapStale(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join(BaseDir, "run-*"))
	for _, dir := range dirs {
		if owner, start, ok := readPIDFile(filepath.Join(dir, "owner")); ok && sameProcess(owner, start) {
			continue // still in use (possibly kept by a failed Stop of a live process)
		}
		if pid, start, ok := readPIDFile(filepath.Join(dir, "systemd.pid")); ok && sameProcess(pid, start) {
			want := "SYSTEMD_UNIT_PATH=" + filepath.Join(dir, "units")
			err := killVerified(pid, func(p int) error {
				if err := isOurSystemd(p, start); err != nil {
					return err
				}
				for _, e := range readEnviron(p) {
					if e == want {
						return nil
					}
				}
				return fmt.Errorf("sdns: PID %d has no %s", p, want)
			})
			if err != nil {
				t.Logf("sdns: leaving stale %s alone: %v", dir, err)
				continue
			}
			if err := waitGone(pid, start, StopTimeout); err != nil {
				t.Logf("sdns: stale systemd of %s: %v", dir, err)
				continue
			}
			t.Logf("sdns: killed stale systemd (host PID %d) of %s", pid, dir)
		}
		var units []string
		ents, _ := os.ReadDir(filepath.Join(dir, "units"))
		for _, e := range ents {
			units = append(units, e.Name())
		}
		if removed := removeUnitCgroups(units); len(removed) > 0 {
			t.Logf("sdns: removed %d cgroups left by stale %s", len(removed), dir)
		}
		if os.Getenv("HANDOVER_SDNS_KEEP") == "1" {
			continue
		}
		if err := removeStateDir(dir); err != nil {
			t.Logf("sdns: removing stale %s: %v", dir, err)
		}
	}
}

// readPIDFile reads "PID STARTTIME ..." from path.
func readPIDFile(path string) (int, uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0, false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 1 {
		return 0, 0, false
	}
	return pid, start, true
}
