// Command wrapped serves a graceful.Server on a listener of its own that wraps the
// Upgrader's, and stops on anything but http.ErrServerClosed, as programs do:
//
//	if err := srv.Serve(ln); err != http.ErrServerClosed {
//		log.Fatal(err)
//	}
//
// -wrap picks the wrapping: "tls" (tls.NewListener, with -tls-cert and -tls-key),
// "embed" (a struct that embeds the net.Listener) or "custom" (a listener of its own
// that holds the Upgrader's in a field and reports Accept's errors in words of its
// own). It takes its socket like the demo (from the parent generation, or by
// binding -listen), writes -pidfile, drains within -drain-timeout, and serves
//
//	GET /            200, header X-Pid, body "pid=P"
//	GET /slow?ms=N   the same, N milliseconds later
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to bind when no socket is passed")
	pidfile := flag.String("pidfile", "", "PID file")
	drain := flag.Duration("drain-timeout", 10*time.Second, "drain deadline")
	wrap := flag.String("wrap", "embed", "how the listener is wrapped: tls, embed or custom")
	certFile := flag.String("tls-cert", "", "certificate (PEM), for -wrap tls")
	keyFile := flag.String("tls-key", "", "its private key (PEM)")
	probation := flag.Duration("probation", 0, "Config.Probation")
	flag.Parse()
	u, err := graceful.New(graceful.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), PIDFile: *pidfile, DrainTimeout: *drain, Probation: *probation})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen("http", "tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	switch *wrap {
	case "tls":
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	case "embed":
		ln = embedded{ln}
	case "custom":
		ln = &custom{inner: ln}
	default:
		log.Fatalf("-wrap %q: want tls, embed or custom", *wrap)
	}
	srv := &graceful.Server{Server: http.Server{Handler: handler()}, Name: "http"}
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	if err := u.Wait(); err != nil && !errors.Is(err, graceful.ErrDrainDeadline) {
		log.Fatal(err)
	}
}

// embedded is a listener that embeds the Upgrader's.
type embedded struct{ net.Listener }

// custom holds the Upgrader's listener in a field and words Accept's errors its own
// way.
type custom struct {
	inner    net.Listener
	accepted int
}

func (c *custom) Accept() (net.Conn, error) {
	conn, err := c.inner.Accept()
	if err != nil {
		return nil, fmt.Errorf("custom listener: no connection after %d: %v", c.accepted, err)
	}
	c.accepted++
	return conn, nil
}

func (c *custom) Close() error   { return c.inner.Close() }
func (c *custom) Addr() net.Addr { return c.inner.Addr() }

func handler() http.Handler {
	pid := strconv.Itoa(os.Getpid())
	answer := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", pid)
		tlsOK := r.TLS != nil && r.TLS.HandshakeComplete
		fmt.Fprintf(w, "pid=%s tls=%v\n", pid, tlsOK)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", answer)
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		answer(w, r)
	})
	return mux
}
