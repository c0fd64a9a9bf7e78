// Command readydie is a build that dies right after it has become the current
// generation: it speaks the handover channel like a real new generation ("ready
// <pid>", then waits for "main"), and then kills itself with SIGKILL, as a build that
// crashes as soon as it takes traffic would. It never serves a request. The tests
// deploy it to show that a draining generation replaces a dead successor a bounded
// number of times, and leaves no process behind.
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

func main() {
	m, err := handoff.ParseMarker(os.Getenv(handoff.MarkerEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "readydie:", err)
		os.Exit(1)
	}
	ch := os.NewFile(uintptr(m.Channel), "handover-channel")
	// The channel is a SOCK_SEQPACKET socket: one write, one message.
	if _, err := fmt.Fprintf(ch, "ready %d", os.Getpid()); err != nil {
		fmt.Fprintln(os.Stderr, "readydie:", err)
		os.Exit(1)
	}
	// The initial batch, then what the parent says once we are ready, up to "main".
	buf := make([]byte, 128<<10)
	var got string
	for got != "main" && err == nil {
		var n int
		n, err = ch.Read(buf)
		if n == 0 && err == nil {
			break // the parent closed the channel
		}
		got = string(buf[:n])
	}
	fmt.Fprintf(os.Stderr, "readydie: pid %d got %s (err %v); dying\n", os.Getpid(), strconv.Quote(got), err)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}
