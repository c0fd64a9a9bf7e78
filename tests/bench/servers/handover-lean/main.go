// Command handover-lean is the benchmark's server built on the handover library the way
// the peers' servers are built on theirs: the same endpoints (internal/endpoints),
// no state, no metrics, graceful.ListenAndServe as in the README. It upgrades on
// SIGUSR2 (the new process inherits the socket; the old one drains once the new one
// serves) and drains on SIGTERM. Beside the peers, it times the library's restart
// alone; cmd/handover-demo (the "handover: SIGUSR2" approach) also hands its state
// on and serves more routes.
//
//	handover-lean -listen 127.0.0.1:8080 [-probation D]
package main

import (
	"flag"
	"log"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	probation := flag.Duration("probation", 200*time.Millisecond, "how long the old generation stands by once drained (the benches wait for its exit)")
	flag.Parse()
	if _, err := graceful.New(graceful.Config{Probation: *probation, DrainTimeout: 30 * time.Second}); err != nil {
		log.Fatal(err)
	}
	if err := graceful.ListenAndServe(*listen, endpoints.Handler("handover")); err != nil {
		log.Fatal(err)
	}
}
