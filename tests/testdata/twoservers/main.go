// Command twoservers is a process with two graceful.Servers, for the HTTP/2 tests:
// both drain by themselves (the Upgrader drains every Server of the process) when a
// new generation takes over. It takes its sockets like the demo (from the parent
// generation, or by binding), one per server:
//
//	-listen ADDR    "a": HTTP/2 without TLS only (h2c, prior knowledge)
//	-listen2 ADDR   "b": HTTP/1 and HTTP/2 without TLS
//
// and -pidfile PATH, -drain-timeout D, -probation D (Config.Probation). Both serve
//
//	GET /            200, header X-Pid, body "pid=P server=S"
//	GET /stream?n=N&interval=MS   N such lines, one every MS milliseconds
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address of server a (h2c only)")
	listen2 := flag.String("listen2", "127.0.0.1:8081", "address of server b (HTTP/1 and h2c)")
	pidfile := flag.String("pidfile", "", "PID file")
	drain := flag.Duration("drain-timeout", 10*time.Second, "drain deadline")
	probation := flag.Duration("probation", 0, "Config.Probation")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, *listen, *listen2, graceful.Config{Logger: log, PIDFile: *pidfile, DrainTimeout: *drain, Probation: *probation}); err != nil {
		fmt.Fprintln(os.Stderr, "twoservers:", err)
		os.Exit(1)
	}
	log.Info("exiting", "event", "exit")
}

func run(log *slog.Logger, listen, listen2 string, cfg graceful.Config) error {
	u, err := graceful.New(cfg)
	if err != nil {
		return err
	}
	// Every listener is taken before any server serves (Serve calls Ready, which
	// closes the inherited sockets nobody took).
	servers := map[string]*graceful.Server{}
	lns := map[string]net.Listener{}
	for _, s := range []struct {
		name, addr string
		h1         bool
	}{{"a", listen, false}, {"b", listen2, true}} {
		ln, err := u.Listen(s.name, "tcp", s.addr)
		if err != nil {
			return err
		}
		p := new(http.Protocols)
		p.SetHTTP1(s.h1)
		p.SetUnencryptedHTTP2(true)
		servers[s.name] = &graceful.Server{Server: http.Server{Handler: handler(s.name), Protocols: p}, Name: s.name}
		lns[s.name] = ln
	}
	errs := make(chan error, 2)
	for name, srv := range servers {
		go func() { errs <- srv.Serve(lns[name]) }()
	}
	// Each Serve returns once its server has drained.
	for range 2 {
		if err := <-errs; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	u.Wait()
	return nil
}

func handler(name string) http.Handler {
	pid := os.Getpid()
	line := func(w http.ResponseWriter) {
		fmt.Fprintf(w, "pid=%d server=%s\n", pid, name)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		line(w)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		ms, _ := strconv.Atoi(r.URL.Query().Get("interval"))
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		rc := http.NewResponseController(w)
		for i := 0; i < n; i++ {
			if i > 0 {
				select {
				case <-time.After(time.Duration(ms) * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
			line(w)
			rc.Flush()
		}
	})
	return mux
}
