package proc

import (
	"fmt"
	"strconv"
	"syscall"
)

// Describe says how a process ended: "exit status 1", "signal: killed", "signal:
// segmentation fault (core dumped)", as os.ProcessState says it.
func Describe(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// ExitCode is the exit code a shell reports for ws: the status, or 128+signal.
func ExitCode(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return 1
}
