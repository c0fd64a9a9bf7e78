// Command brokendemo is a broken build of the demo server, deployed by the tests to
// show that a failed upgrade leaves the old generation serving. Its failure is
// compiled in: go build -ldflags "-X main.mode=crash" (or hang).
//
//	crash  takes its sockets from the parent generation, then panics (exit status 2)
//	hang   takes its sockets and never becomes ready
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/seed-a7250cfa/handover/graceful"
)

var mode = "crash"

func main() {
	listen := "127.0.0.1:8080"
	for i, a := range os.Args {
		if a == "-listen" && i+1 < len(os.Args) {
			listen = os.Args[i+1]
		}
	}
	// The demo's log format (slog text), so that the tests read its events by key.
	u, err := graceful.New(graceful.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokendemo:", err)
		os.Exit(1)
	}
	if _, err := u.Listen("http", "tcp", listen); err != nil {
		fmt.Fprintln(os.Stderr, "brokendemo:", err)
		os.Exit(1)
	}
	switch mode {
	case "crash":
		panic("brokendemo: crashing after taking the sockets")
	case "hang":
		select {}
	}
	fmt.Fprintf(os.Stderr, "brokendemo: unknown mode %q\n", mode)
	os.Exit(1)
}
