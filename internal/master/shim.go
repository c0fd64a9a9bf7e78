//go:build linux

package master

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"
)

// ShimEnv marks a process the master started as the re-exec shim: it holds the
// absolute path of the program to run. Go cannot set LISTEN_PID to the child's own
// PID between fork and exec, so the master starts its own binary with this variable,
// and the shim sets LISTEN_PID (and WATCHDOG_PID when WATCHDOG_USEC is set) to its
// PID, removes the variable and execs the program in place: same PID, same
// descriptors.
const ShimEnv = "HANDOVER_RUN_EXEC"

// Shim is the re-exec shim. Call it at the very top of main: when ShimEnv is set it
// never returns (it execs the program, or exits 127 saying why it could not);
// otherwise it returns at once.
func Shim() {
	path, ok := os.LookupEnv(ShimEnv)
	if !ok {
		return
	}
	os.Unsetenv(ShimEnv)
	pid := strconv.Itoa(os.Getpid())
	os.Setenv("LISTEN_PID", pid)
	if os.Getenv("WATCHDOG_USEC") != "" {
		os.Setenv("WATCHDOG_PID", pid)
	}
	err := syscall.Exec(path, os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "handover run: cannot execute %s: %v\n", path, explainExec(path, err))
	os.Exit(127)
}

// explainExec says what an ENOENT from execve means for a file that exists.
func explainExec(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(path); serr == nil {
			return fmt.Errorf("%w (the file exists: the interpreter on its #! line, or its ELF loader, is missing)", err)
		}
	}
	return err
}
