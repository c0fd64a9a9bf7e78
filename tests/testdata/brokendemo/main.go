// Command brokendemo is a broken build of the demo server, deployed by the tests to
// show that a failed upgrade leaves the old generation serving. Its failure is
// compiled in: go build -ldflags "-X main.mode=crash" (or another mode).
//
//	crash      takes its sockets from the parent generation, then panics (exit status 2)
//	hang       takes its sockets and never becomes ready
//	serve-die  takes over and serves like the demo ("pid=P gen=G message=broken",
//	           header X-Pid) for one second, then dies: it stops accepting, finishes
//	           the requests it has (so that the test's clients lose nothing to the
//	           build itself), and exits 1 without saying goodbye to its parent, as a
//	           build that crashes once it takes traffic
//
// Every start appends a line to the file named by $BROKENDEMO_STARTS, if set, so
// that a test can count how often the broken build was started.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

var mode = "crash"

func main() {
	if p := os.Getenv("BROKENDEMO_STARTS"); p != "" {
		if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(f, "%d %s\n", os.Getpid(), mode)
			f.Close()
		}
	}
	listen, pidfile := "127.0.0.1:8080", ""
	for i, a := range os.Args {
		if i+1 < len(os.Args) {
			switch a {
			case "-listen":
				listen = os.Args[i+1]
			case "-pidfile":
				pidfile = os.Args[i+1]
			}
		}
	}
	// The demo's log format (slog text), so that the tests read its events by key.
	cfg := graceful.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	if mode == "serve-die" {
		cfg.PIDFile = pidfile // the others never become ready
	}
	u, err := graceful.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokendemo:", err)
		os.Exit(1)
	}
	ln, err := u.Listen("http", "tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokendemo:", err)
		os.Exit(1)
	}
	switch mode {
	case "crash":
		panic("brokendemo: crashing after taking the sockets")
	case "hang":
		select {}
	case "serve-die":
		gen := u.Status().Generation
		srv := &graceful.Server{Server: http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Pid", strconv.Itoa(os.Getpid()))
			fmt.Fprintf(w, "pid=%d gen=%d message=broken\n", os.Getpid(), gen)
		})}}
		go func() {
			if err := u.Ready(); err != nil {
				os.Exit(1)
			}
			time.Sleep(time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			fmt.Fprintf(os.Stderr, "brokendemo: pid %d dying after serving for a second\n", os.Getpid())
			os.Exit(1)
		}()
		srv.Serve(ln)
		select {}
	}
	fmt.Fprintf(os.Stderr, "brokendemo: unknown mode %q\n", mode)
	os.Exit(1)
}
