// Command probedemo is a small graceful server for the security and slow-client
// tests. It takes its socket like the demo (from systemd, from the parent
// generation, or by binding -listen) and serves:
//
//	GET /        200, header X-Pid, body "pid=P gen=G"
//	GET /probe   runs `ls -l /proc/self/fd` and `env` through os/exec, as any server
//	             might run a helper program, and answers with their output: what a
//	             program the server starts can see of the server's descriptors and
//	             environment
//	GET /hold    hijacks the connection and echoes lines; when the server drains it
//	             says "bye" but, unlike a polite application, keeps the connection
//	             open and echoing, so that only the drain deadline closes it
//
// Flags: -listen ADDR, -pidfile PATH, -drain-timeout D.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to bind when no socket is passed")
	pidfile := flag.String("pidfile", "", "PID file")
	drain := flag.Duration("drain-timeout", 10*time.Second, "drain deadline")
	probation := flag.Duration("probation", 0, "Config.Probation")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	u, err := graceful.New(graceful.Config{Logger: log, PIDFile: *pidfile, DrainTimeout: *drain, Probation: *probation})
	if err != nil {
		fmt.Fprintln(os.Stderr, "probedemo:", err)
		os.Exit(1)
	}
	ln, err := u.Listen("http", "tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "probedemo:", err)
		os.Exit(1)
	}
	pid, gen := os.Getpid(), u.Status().Generation
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		fmt.Fprintf(w, "pid=%d gen=%d\n", pid, gen)
	})
	mux.HandleFunc("GET /probe", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		for _, argv := range [][]string{{"ls", "-l", "/proc/self/fd"}, {"env"}} {
			out, err := exec.Command(argv[0], argv[1:]...).Output()
			fmt.Fprintf(w, "--- %s (err %v)\n%s", argv[0], err, out)
		}
	})
	mux.HandleFunc("GET /hold", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: line-echo\r\nConnection: Upgrade\r\nX-Pid: %d\r\n\r\nhello pid=%d\n", pid, pid)
		brw.Flush()
		draining := graceful.Draining(r.Context())
		go func() {
			<-draining
			fmt.Fprintf(conn, "bye pid=%d (but this application keeps the connection open)\n", pid)
		}()
		sc := bufio.NewScanner(brw)
		for sc.Scan() {
			fmt.Fprintf(conn, "echo %s\n", sc.Text())
		}
	})
	srv := &graceful.Server{
		Server: http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		Name:   "http",
	}
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "probedemo:", err)
		os.Exit(1)
	}
	u.Wait()
	log.Info("exiting", "event", "exit")
}
