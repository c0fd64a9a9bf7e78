// Command oneword is the README's one-word change from net/http: a server that
// calls graceful.ListenAndServe where it called http.ListenAndServe. The address is
// its first argument (default :8080).
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	addr := ":8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", fmt.Sprint(os.Getpid()))
		fmt.Fprintln(w, "hello")
	})
	if err := graceful.ListenAndServe(addr, nil); err != nil {
		log.Fatal(err)
	}
}
