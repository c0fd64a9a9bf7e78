// Command tableflip-h3 is the HTTP/3 peer of the benchmark (-http3): quic-go's
// http3.Server on a UDP socket passed by github.com/cloudflare/tableflip, written as
// tableflip's README and net/http example show for TCP: upgrade on SIGHUP, serve,
// and once a new process is ready (upg.Exit) drain with http3.Server.Shutdown
// (GOAWAY, then wait for the open requests) under a 30 s deadline.
//
//	tableflip-h3 -listen 127.0.0.1:8443 -tls-cert F -tls-key F [-pid-file PATH]
//
// Every generation reads the one UDP socket (tableflip passes a duplicate of it),
// and nothing routes a connection's packets to the process that made it.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/quic-go/quic-go/http3"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/endpoints"
)

func main() {
	listenAddr := flag.String("listen", "127.0.0.1:8443", "UDP `address` to listen on")
	pidFile := flag.String("pid-file", "", "`path` to pid file")
	certFile := flag.String("tls-cert", "", "certificate (PEM)")
	keyFile := flag.String("tls-key", "", "the key of -tls-cert (PEM)")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("%d ", os.Getpid()))
	if *certFile == "" || *keyFile == "" {
		log.Fatalln("-tls-cert and -tls-key are required (HTTP/3 runs over TLS)")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalln("TLS:", err)
	}

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile})
	if err != nil {
		panic(err)
	}
	defer upg.Stop()

	// Do an upgrade on SIGHUP.
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			if err := upg.Upgrade(); err != nil {
				log.Println("Upgrade failed:", err)
			}
		}
	}()

	// ListenPacket must be called before Ready.
	pc, err := upg.ListenPacket("udp", *listenAddr)
	if err != nil {
		log.Fatalln("Can't listen:", err)
	}
	server := &http3.Server{
		Handler:   endpoints.Handler("tableflip-h3"),
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
	}
	go func() {
		if err := server.Serve(pc); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Println("HTTP/3 server:", err)
		}
	}()

	log.Printf("ready")
	if err := upg.Ready(); err != nil {
		panic(err)
	}
	<-upg.Exit()

	// As in tableflip's example: a deadline on exiting once upg.Exit() is closed.
	time.AfterFunc(30*time.Second, func() {
		log.Println("Graceful shutdown timed out")
		os.Exit(1)
	})
	// Wait for connections to drain.
	server.Shutdown(context.Background())
}
