// Command gracehttp is the benchmark's server built on
// github.com/facebookgo/grace/gracehttp, used as its documentation shows:
// gracehttp.Serve restarts on SIGUSR2 (the new process inherits the socket and
// sends the old one SIGTERM, which then finishes its requests) and stops gracefully
// on SIGTERM.
//
//	gracehttp -listen 127.0.0.1:8080
package main

import (
	"flag"
	"log"
	"net/http"
	"os"

	"github.com/facebookgo/grace/gracehttp"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	flag.Parse()
	gracehttp.SetLogger(log.New(os.Stderr, "", log.LstdFlags))
	if err := gracehttp.Serve(&http.Server{Addr: *listen, Handler: endpoints.Handler("gracehttp")}); err != nil {
		log.Fatal(err)
	}
}
