package proc

import (
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ReservePort reserves a test port for as long as the caller holds it, across every
// test process of the machine: the end-to-end tests run side by side in processes
// of their own (and packages side by side), and a port one of them picked free and
// released, for its server to bind later, could otherwise be picked by another
// meanwhile. The reservation is an flock on a file named after the port, so it ends
// with release or with the process, whatever way it exits. ok is false if another
// holder has it.
func ReservePort(network string, port int) (release func(), ok bool) {
	dir := filepath.Join(os.TempDir(), "handover-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return func() {}, true // no reservations here: the bind's own check stands
	}
	f, err := os.OpenFile(filepath.Join(dir, network+"-"+strconv.Itoa(port)), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return func() {}, true
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return func() { f.Close() }, true
}
