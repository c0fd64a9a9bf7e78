// Command plain is the benchmark's plain net/http server for socket activation: it
// serves on the socket systemd passes (LISTEN_FDS=1, fd 3), or binds -listen when
// started by hand, and on SIGTERM or SIGINT drains with http.Server.Shutdown (30 s
// deadline), as the net/http documentation suggests. No restart library: it is
// restarted by `systemctl restart`, the socket unit holding the socket meanwhile.
//
//	plain [-listen 127.0.0.1:8080]
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to bind when systemd passes no socket")
	flag.Parse()
	ln, err := listener(*listen)
	if err != nil {
		log.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	srv := &http.Server{Handler: endpoints.Handler("plain"), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		log.Fatal(err)
	case <-sigs:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
}

// listener returns the socket systemd passed, or binds addr.
func listener(addr string) (net.Listener, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") == "1" {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
		f := os.NewFile(3, "systemd-socket")
		defer f.Close()
		return net.FileListener(f)
	}
	return net.Listen("tcp", addr)
}
