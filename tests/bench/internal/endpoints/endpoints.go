// Package endpoints is the HTTP handler every peer server of the benchmark serves,
// with the endpoints of handover-demo that the load uses:
//
//	GET /            200, header X-Pid, body "pid=P server=NAME"
//	GET /slow?ms=N   the same after N milliseconds (0..600000, default 1000)
package endpoints

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"
)

// Handler returns the handler; name says which server answers.
func Handler(name string) http.Handler {
	pid := strconv.Itoa(os.Getpid())
	body := fmt.Sprintf("pid=%s server=%s\n", pid, name)
	hello := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", pid)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, body)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", hello)
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ms := 1000
		if v := r.URL.Query().Get("ms"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 600000 {
				http.Error(w, fmt.Sprintf("ms=%q: want a whole number from 0 to 600000", v), http.StatusBadRequest)
				return
			}
			ms = n
		}
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		hello(w, r)
	})
	return mux
}
