// Command readydie is a build that dies right after it has become the current
// generation: it speaks the handover channel like a real new generation ("ready
// <pid>", then waits for "main"), and then kills itself with SIGKILL, as a build that
// crashes as soon as it takes traffic would. It never serves a request. The tests
// deploy it to show that a draining generation replaces a dead successor a bounded
// number of times, and leaves no process behind.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/seed-a7250cfa/handover/activation"
)

func main() {
	m, err := activation.ParseMarker(os.Getenv(activation.MarkerEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "readydie:", err)
		os.Exit(1)
	}
	ch := os.NewFile(uintptr(m.Channel), "handover-channel")
	if _, err := fmt.Fprintf(ch, "ready %d\n", os.Getpid()); err != nil {
		fmt.Fprintln(os.Stderr, "readydie:", err)
		os.Exit(1)
	}
	line, err := bufio.NewReader(ch).ReadString('\n')
	fmt.Fprintf(os.Stderr, "readydie: pid %d got %s (err %v); dying\n", os.Getpid(), strconv.Quote(line), err)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}
