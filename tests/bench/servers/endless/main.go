// Command endless is the benchmark's server built on github.com/fvbock/endless, used
// as its README shows: endless.ListenAndServe in place of http.ListenAndServe. SIGHUP
// forks a new process on the same socket, which sends the old one SIGTERM; the old
// one stops accepting and finishes its requests (hammered after 60 s).
//
//	endless -listen 127.0.0.1:8080
package main

import (
	"flag"
	"log"

	"github.com/fvbock/endless"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	flag.Parse()
	if err := endless.ListenAndServe(*listen, endpoints.Handler("endless")); err != nil {
		log.Println(err)
	}
}
