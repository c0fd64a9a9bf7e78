// Command oneword is net/http's hello world with one word changed: it upgrades on
// SIGUSR2 and drains on SIGTERM without dropping a request.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pid %d\n", os.Getpid())
	})
	// Was: log.Fatal(http.ListenAndServe(":8080", nil))
	if err := graceful.ListenAndServe(":8080", nil); err != nil {
		log.Fatal(err)
	}
	// nil: a new generation took over (SIGUSR2), or SIGTERM; every request was answered.
}
