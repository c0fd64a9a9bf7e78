// Command naive is the benchmark's floor: http.ListenAndServe and nothing else. It
// is restarted by killing it (SIGTERM, whose default action ends the process at
// once) and starting a new process that binds the port again.
//
//	naive -listen 127.0.0.1:8080
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	flag.Parse()
	log.Fatal(http.ListenAndServe(*listen, endpoints.Handler("naive")))
}
