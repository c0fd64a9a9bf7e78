// Command gracehttp is the benchmark's server built on
// github.com/facebookgo/grace/gracehttp, used as its documentation shows:
// gracehttp.Serve restarts on SIGUSR2 (the new process inherits the socket and
// sends the old one SIGTERM, which then finishes its requests) and stops gracefully
// on SIGTERM.
//
//	gracehttp -listen 127.0.0.1:8080 [-tls-cert F -tls-key F]
//
// With -tls-cert and -tls-key it serves HTTPS (HTTP/1.1; gracehttp wraps the
// listener when the http.Server has a TLSConfig) with crypto/tls's defaults: session
// tickets on, with keys each process makes for itself.
package main

import (
	"crypto/tls"
	"flag"
	"log"
	"net/http"
	"os"

	"github.com/facebookgo/grace/gracehttp"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	certFile := flag.String("tls-cert", "", "serve HTTPS with this certificate (PEM)")
	keyFile := flag.String("tls-key", "", "the key of -tls-cert (PEM)")
	flag.Parse()
	gracehttp.SetLogger(log.New(os.Stderr, "", log.LstdFlags))
	s := &http.Server{Addr: *listen, Handler: endpoints.Handler("gracehttp")}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	}
	if err := gracehttp.Serve(s); err != nil {
		log.Fatal(err)
	}
}
