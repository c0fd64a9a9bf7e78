//go:build linux

package master

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
	"golang.org/x/sys/unix"
)

// ShimEnv marks a process the master started as the re-exec shim: it holds the
// absolute path of the program to run. Go cannot set LISTEN_PID to the child's own
// PID between fork and exec, so the master starts its own binary with this variable,
// and the shim sets LISTEN_PID (and WATCHDOG_PID when WATCHDOG_USEC is set) to its
// PID, removes the variable and execs the program in place: same PID, same
// descriptors.
const ShimEnv = "HANDOVER_RUN_EXEC"

// ShimFDEnv, set beside ShimEnv, names the descriptor (after the sockets) on which
// the master passes a build it kept open: the shim then runs that file (execveat),
// not the one now at the path, and closes the descriptor in doing so (it is
// close-on-exec), so that the program never sees it.
const ShimFDEnv = "HANDOVER_RUN_EXEC_FD"

// Shim is the re-exec shim. Call it at the very top of main: when ShimEnv is set it
// never returns (it execs the program, or exits 127 saying why it could not);
// otherwise it returns at once.
func Shim() {
	path, ok := os.LookupEnv(ShimEnv)
	if !ok {
		return
	}
	os.Unsetenv(ShimEnv)
	fdArg, viaFD := os.LookupEnv(ShimFDEnv)
	os.Unsetenv(ShimFDEnv)
	pid := strconv.Itoa(os.Getpid())
	os.Setenv(handoff.ListenPIDEnv, pid)
	if os.Getenv(sdnotify.WatchdogUSecEnv) != "" {
		os.Setenv(sdnotify.WatchdogPIDEnv, pid)
	}
	if viaFD {
		err := execFD(fdArg, os.Args, os.Environ())
		fmt.Fprintf(os.Stderr, "handover run: cannot execute the kept build of %s (descriptor %s): %v\n", path, fdArg, err)
		os.Exit(127)
	}
	err := syscall.Exec(path, os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "handover run: cannot execute %s: %v\n", path, proc.ExplainExec(path, err))
	os.Exit(127)
}

// execFD runs the file open on descriptor fdArg in place.
func execFD(fdArg string, argv, envv []string) error {
	fd, err := strconv.Atoi(fdArg)
	if err != nil || fd < 3 {
		return fmt.Errorf("bad %s=%q", ShimFDEnv, fdArg)
	}
	// Close-on-exec: the kernel has the file before it closes the descriptor, and
	// the program does not inherit it.
	unix.CloseOnExec(fd)
	restoreFileLimit()
	err = execveat(fd, argv, envv)
	if errors.Is(err, unix.ENOSYS) {
		// Before Linux 3.19: through /proc (the descriptor is open until the exec).
		err = syscall.Exec("/proc/self/fd/"+strconv.Itoa(fd), argv, envv)
	}
	return err
}

// restoreFileLimit gives the open-file soft limit back the value the shim started
// with. Go raises it at start-up for itself and restores it in syscall.Exec, but
// keeps the original to itself; a raw execveat would pass the raised limit on. An
// exec of nothing (it fails with ENOENT at once) restores it, as before any exec.
func restoreFileLimit() {
	syscall.Exec("", []string{""}, nil)
}
