//go:build linux

// Command handover-h3demo is handover-demo's HTTP/3 build: an HTTPS server that
// serves HTTP/1.1 and HTTP/2 on TCP and HTTP/3 on UDP at the same address, and
// upgrades itself without dropping a connection of either kind (SIGUSR2, `handover
// reload`, `systemctl reload`, or a `handover run` master's upgrade). It lives in
// the quic module, so that the library's module does not depend on quic-go.
//
//	-listen ADDR            TCP and UDP address to bind when no socket is passed
//	                        (default 127.0.0.1:8443); the passed sockets named "http"
//	                        (stream) and "quic" (datagram) are used when they are
//	-tls-cert F -tls-key F  the certificate (required)
//	-pidfile PATH           write the current generation's PID here
//	-drain-timeout D        end the drain D after it starts
//	-control PATH           serve `handover reload`/`handover status` on this unix socket
//	-fdstore                under systemd, keep the sockets and keys in the fd store
//	-message TEXT           included in every answer
//
//	GET /                        200, headers X-Pid and X-Gen, body "pid=P gen=G proto=H message=M"
//	GET /download?size=N&chunks=K  N bytes (byte i is i%251), in K chunks 20 ms apart
//
// Every TCP answer advertises HTTP/3 with Alt-Svc.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/seed-a7250cfa/handover/graceful"
	handoverquic "github.com/seed-a7250cfa/handover/quic"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "TCP and UDP address to bind when no socket is passed")
	cert := flag.String("tls-cert", "", "certificate (PEM)")
	key := flag.String("tls-key", "", "private key of -tls-cert (PEM)")
	pidfile := flag.String("pidfile", "", "write the current generation's PID to this file")
	drain := flag.Duration("drain-timeout", 30*time.Second, "end the drain this long after it starts")
	control := flag.String("control", "", "path of the control socket")
	fdstore := flag.Bool("fdstore", false, "under systemd, keep the sockets and keys in systemd's fd store")
	message := flag.String("message", "hello", "text included in every answer")
	flag.Parse()
	if *cert == "" || *key == "" {
		fmt.Fprintln(os.Stderr, "handover-h3demo: -tls-cert and -tls-key are required (HTTP/3 runs over TLS)")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := graceful.Config{Logger: log, PIDFile: *pidfile, DrainTimeout: *drain, ControlSocket: *control, FDStore: *fdstore}
	if err := run(cfg, *listen, *cert, *key, *message); err != nil {
		fmt.Fprintf(os.Stderr, "handover-h3demo: %v\n", err)
		os.Exit(1)
	}
}

func run(cfg graceful.Config, listen, certFile, keyFile, message string) error {
	log := cfg.Logger
	u, err := graceful.New(cfg)
	if err != nil {
		return err
	}
	gen, pid := u.Status().Generation, os.Getpid()
	ln, err := u.Listen("http", "tcp", listen)
	if err != nil {
		return fmt.Errorf("listener http: %w", err)
	}
	sock, err := handoverquic.Listen(u, "quic", "udp", listen)
	if err != nil {
		return fmt.Errorf("socket quic: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	// The line's session-ticket keys: a client resumes its TLS session (and sends
	// 0-RTT data over QUIC) with any generation.
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	if err := u.KeepTLSSessions(tlsConf); err != nil {
		return err
	}
	h3 := &http3.Server{TLSConfig: tlsConf, Handler: handler(pid, gen, message, nil)}
	h3done := make(chan error, 1)
	go func() { h3done <- sock.ServeHTTP3(h3) }()
	srv := &graceful.Server{Server: http.Server{
		Handler:           handler(pid, gen, message, h3),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         tlsConf,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}, Name: "http"}
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-h3done
	err = u.Wait()
	log.Info("exiting", "event", "exit", "gen", gen, "pid", pid, "quic", fmt.Sprintf("%+v", sock.Stats()))
	return err
}

// handler answers every request; advertise, if not nil, adds Alt-Svc (TCP).
func handler(pid, gen int, message string, advertise *http3.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid=%d gen=%d proto=%s message=%s\n", pid, gen, r.Proto, message)
	})
	mux.HandleFunc("GET /download", func(w http.ResponseWriter, r *http.Request) {
		size, _ := strconv.Atoi(r.URL.Query().Get("size"))
		chunks, _ := strconv.Atoi(r.URL.Query().Get("chunks"))
		if size <= 0 || size > 1<<30 || chunks <= 0 || chunks > 10000 {
			http.Error(w, "want size in (0, 1 GiB] and chunks in (0, 10000]", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		rc := http.NewResponseController(w)
		buf := make([]byte, size/chunks+1)
		for i, sent := 0, 0; sent < size; i++ {
			n := min(len(buf), size-sent)
			for j := range n {
				buf[j] = byte((sent + j) % 251)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			rc.Flush()
			sent += n
			if sent < size {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		w.Header().Set("X-Gen", strconv.Itoa(gen))
		if advertise != nil {
			_ = advertise.SetQUICHeaders(w.Header())
		}
		mux.ServeHTTP(w, r)
	})
}
