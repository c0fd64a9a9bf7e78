// Command servers runs two HTTP servers in one process, with a PID file and a
// control socket for `handover reload` and `handover status`.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	apiAddr := flag.String("api", "127.0.0.1:8080", "address of the API")
	adminPath := flag.String("admin", "/run/myapp/admin.sock", "unix socket of the admin server")
	pidFile := flag.String("pidfile", "/run/myapp/myapp.pid", "PID file")
	control := flag.String("control", "/run/myapp/control.sock", "control socket")
	flag.Parse()

	// New first: it configures the process's Upgrader, which the servers use.
	u, err := graceful.New(graceful.Config{
		PIDFile:       *pidFile, // always names the current generation
		ControlSocket: *control, // for `handover reload` and `handover status`
		DrainTimeout:  30 * time.Second,
	})
	if err != nil {
		log.Fatal(err) // e.g. LISTEN_FDS names a descriptor that is not a socket
	}
	// Take every listener before serving any: passed on by systemd or the previous
	// generation (by name), bound otherwise.
	apiLn, err := u.Listen("api", "tcp", *apiAddr)
	if err != nil {
		log.Fatal(err)
	}
	adminLn, err := u.Listen("admin", "unix", *adminPath)
	if err != nil {
		log.Fatal(err)
	}

	apiMux := http.NewServeMux()
	apiMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "api, pid %d\n", os.Getpid())
	})
	apiMux.HandleFunc("/report", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Second) // a slow request: the old generation finishes it
		fmt.Fprintf(w, "report, pid %d\n", os.Getpid())
	})
	adminMux := http.NewServeMux()
	adminMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "admin, pid %d\n", os.Getpid())
	})
	api := &graceful.Server{Server: http.Server{Handler: apiMux}}
	admin := &graceful.Server{Server: http.Server{Handler: adminMux}}
	go api.Serve(apiLn) // Serve tells the parent generation, or systemd, that we are ready
	go admin.Serve(adminLn)

	// Wait returns once a new generation has taken over (or SIGTERM) and both
	// servers have drained: returning from main earlier would cut their requests.
	if err := u.Wait(); err != nil {
		log.Print(err) // some connections outlived the drain deadline
	}
}
