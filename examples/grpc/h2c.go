package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/seed-a7250cfa/handover/examples/grpc/demopb"
	"github.com/seed-a7250cfa/handover/graceful"
)

// runH2C is the alternative recipe (-via h2c): the grpc.Server is the http.Handler of
// a graceful.Server that speaks unencrypted HTTP/2 (h2c, prior knowledge, which is
// what gRPC clients without TLS send). The Server does what run does by hand: it
// stops accepting when a new generation has taken over, sends every connection
// GOAWAY, lets the streams in flight finish, force-closes at the drain deadline, and
// returns once drained. The program never takes Exit, so if the new generation dies
// while this one drains, this one takes its drain back and serves on.
//
// The price: grpc.Server.ServeHTTP runs gRPC on net/http's HTTP/2 server rather than
// grpc-go's own transport. grpc-go calls it experimental, with performance and
// features that may differ (some gRPC features are missing). Prefer run unless one
// port must serve gRPC and plain HTTP together.
func runH2C(cfg graceful.Config, addr string, tick time.Duration) error {
	log := cfg.Logger
	u, err := graceful.New(cfg)
	if err != nil {
		return err
	}
	ln, err := u.Listen("grpc", "tcp", addr)
	if err != nil {
		return err
	}

	d := &demo{pid: os.Getpid(), gen: u.Status().Generation, tick: tick,
		draining: graceful.Draining} // the stream's context says when its Server drains
	s := grpc.NewServer()
	demopb.RegisterDemoServer(s, d)

	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true) // h2c only: gRPC needs HTTP/2
	srv := &graceful.Server{
		Server: http.Server{Handler: s, Protocols: protocols},
		Name:   "grpc",
	}
	start := time.Now()
	// Serve calls u.Ready once it serves and returns http.ErrServerClosed once the
	// Server has drained.
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	err = u.Wait()
	log.Info("exiting", "event", "exit", "gen", d.gen, "pid", d.pid, "via", "h2c",
		"took", time.Since(start).Round(time.Millisecond).String(), "drain", errString(err))
	return nil
}

// exitChannel adapts u.Exit() to demo.draining, for run.
func exitChannel(exit <-chan struct{}) func(context.Context) <-chan struct{} {
	return func(context.Context) <-chan struct{} { return exit }
}
