// Command grpc-demo is a gRPC server that upgrades to a new build of itself without
// failing an RPC: the recipe for serving gRPC with handover. Run it, send it SIGUSR2
// (or `handover reload -control PATH`), and a new process takes over its socket while
// this one finishes the RPCs it has.
//
//	-addr ADDR         address to bind when no socket is passed (default 127.0.0.1:9090)
//	-pidfile PATH      write the current generation's PID here
//	-control PATH      serve `handover reload` and `handover status` on this unix socket
//	-drain-timeout D   how long a generation that handed over may finish its RPCs
//	-max-draining N    at most N generations drain at once; past it the oldest
//	                   force-closes its connections (graceful.Config.MaxDraining)
//	-tick D            interval between the messages of a Count stream
//	-via grpc|h2c      grpc-go's own transport (default; this file), or gRPC through a
//	                   graceful.Server over h2c (the alternative; h2c.go)
//
// It serves the Demo service of package demopb: Info answers the server's PID and
// generation, Count streams N messages, one per tick.
//
// The recipe, in run below: graceful.New; u.Listen; a graceful.Drainer on the
// listener; grpc.NewServer; go s.Serve; u.Ready; <-u.Exit(); stop accepting (the
// gate of gate.go); GracefulStop bounded by the drain timeout, Stop at the deadline;
// u.Wait; return.
//
// What clients see at an upgrade:
//
//   - The new generation starts on the same listening socket and says it is ready;
//     u.Exit() is closed in this one, which stops accepting: the socket stays open
//     (the new generation holds it) and connections waiting in its queue are the
//     new generation's. Connections this process had just accepted are served here
//     (the gate waits until gRPC has taken each one up).
//   - GracefulStop sends every client connection GOAWAY. A unary RPC in flight here
//     finishes and its answer is sent. An RPC the client sends after the GOAWAY goes
//     to a new connection, which reaches the new generation. An RPC that crossed the
//     GOAWAY on the wire was never seen by this process; gRPC clients retry such an
//     RPC transparently (it is safe: nothing ran), with no retry policy configured.
//   - A stream open here (Count) goes on, on its old connection, to its end; its
//     messages then say Draining. GracefulStop returns once every RPC has ended, and
//     closes the connections. A stream that would outlast the drain timeout is cut
//     by Stop at the deadline: its client gets codes.Unavailable. Long streams should
//     watch for the drain (u.Exit(); here the demo's exit channel) and end politely
//     before then.
//
// A process that takes u.Exit(), as a gRPC server must (graceful cannot stop a
// grpc.Server by itself), cannot take its drain back: if the new generation dies
// while this one drains, the Upgrader starts this process's own build again (its last
// good build, on the sockets it kept open) rather than serving on. It watches the
// new generation while something of the process still drains (here the Drainer's
// connections), then until the new generation's probation is over
// (graceful.Config.Probation, 10 s from the handover by default): u.Wait returns
// only then, so that a new build that dies moments after taking over is replaced
// even when the RPCs here ended at once.
//
// The alternative, gRPC over h2c through graceful.Server: a grpc.Server is also an
// http.Handler (ServeHTTP), so a graceful.Server whose Protocols allow unencrypted
// HTTP/2 can serve it. That Server drains by itself (GOAWAY to every HTTP/2
// connection, h2c included), needs no Exit, and can take a drain back. But grpc-go
// documents ServeHTTP as experimental, on net/http's HTTP/2 server rather than its
// own, with performance and features that "may vary" and some gRPC features
// missing. This recipe keeps grpc-go's transport; h2c.go has the other (-via h2c).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/seed-a7250cfa/handover/examples/grpc/demopb"
	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9090", "address to bind when no socket is passed")
	pidFile := flag.String("pidfile", "", "write the current generation's PID to this file")
	control := flag.String("control", "", "path of the control socket for `handover reload` and `handover status`")
	drainTimeout := flag.Duration("drain-timeout", 30*time.Second, "how long a generation that handed over may finish its RPCs")
	maxDraining := flag.Int("max-draining", 3, "at most this many generations drain at once; past it the oldest force-closes its connections")
	tick := flag.Duration("tick", 20*time.Millisecond, "interval between the messages of a Count stream")
	via := flag.String("via", "grpc", "serve with grpc-go's own transport (grpc) or through a graceful.Server over h2c (h2c)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg := graceful.Config{
		Logger:        log,
		PIDFile:       *pidFile,
		ControlSocket: *control,
		DrainTimeout:  *drainTimeout,
		MaxDraining:   *maxDraining,
	}
	serve := run
	switch *via {
	case "grpc":
	case "h2c":
		serve = runH2C
	default:
		fmt.Fprintf(os.Stderr, "grpc-demo: -via %q: want grpc or h2c\n", *via)
		os.Exit(2)
	}
	if err := serve(cfg, *addr, *tick); err != nil {
		log.Error("grpc-demo failed", "event", "failed", "err", err.Error())
		os.Exit(1)
	}
}

func run(cfg graceful.Config, addr string, tick time.Duration) error {
	log := cfg.Logger

	// The process's Upgrader: what it inherited, its PID file, its control socket.
	u, err := graceful.New(cfg)
	if err != nil {
		return err
	}

	// The listener: the socket the previous generation (or systemd, or `handover
	// run`) passed under the name "grpc", else one bound to addr. It is passed on to
	// the next generation.
	ln, err := u.Listen("grpc", "tcp", addr)
	if err != nil {
		return err
	}
	// Optional, and worth its line: a Drainer counts the connections (`handover
	// status` shows them) and belongs to the Upgrader, so u.Wait waits until gRPC
	// has closed them, and the Upgrader goes on watching the new generation
	// meanwhile. At the drain deadline it force-closes what is left. Without it,
	// u.Wait waits only for the new generation's probation.
	ln = (&graceful.Drainer{}).Listener(ln)
	// gRPC serves on a gate, so that no connection accepted at the handover is
	// dropped by GracefulStop (see gate.go).
	gate := newAcceptGate(ln)

	d := &demo{pid: os.Getpid(), gen: u.Status().Generation, tick: tick, draining: exitChannel(u.Exit())}
	s := grpc.NewServer()
	demopb.RegisterDemoServer(s, d)
	serveErr := make(chan error, 1)
	go func() {
		// Serve returns nil after GracefulStop or Stop, and an error once its
		// listener is closed under it: by StopAccepting or a stop's drain
		// (expected), or by a failure while serving: then the process drains
		// what it has and exits 1.
		if err := s.Serve(gate); err != nil {
			select {
			case <-u.Exit():
			default:
				log.Error("grpc: serving failed; stopping", "event", "serve_failed", "err", err.Error())
				serveErr <- err
				u.Stop()
			}
		}
	}()

	// Ready: the previous generation, if any, stops accepting and drains; the PID
	// file names this process.
	if err := u.Ready(); err != nil {
		s.Stop()
		return err
	}

	// A new generation took over, or SIGTERM/SIGINT: stop accepting, send GOAWAY,
	// let the RPCs in flight finish, all within the drain timeout.
	<-u.Exit()
	start := time.Now()
	drainTimeout := cfg.DrainTimeout
	if drainTimeout <= 0 {
		drainTimeout = 30 * time.Second // graceful's default
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	gate.StopAccepting(ctx)
	stopped := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(stopped)
	}()
	how := "graceful"
	select {
	case <-stopped:
	case <-ctx.Done():
		// The deadline: cancel what is left (clients get codes.Unavailable).
		how = "deadline"
		s.Stop()
		<-stopped
	}

	// Wait until the Upgrader is done too (the Drainer has seen every connection
	// close), then return: main must not return before it.
	err = u.Wait()
	log.Info("exiting", "event", "exit", "gen", d.gen, "pid", d.pid, "via", "grpc", "grpc_stop", how,
		"took", time.Since(start).Round(time.Millisecond).String(), "drain", errString(err))
	select {
	case err := <-serveErr:
		return fmt.Errorf("grpc: %w", err)
	default:
		return nil
	}
}

func errString(err error) string {
	if err == nil {
		return "complete"
	}
	return err.Error()
}

// demo implements the Demo service.
type demo struct {
	pid, gen int
	tick     time.Duration
	// draining returns a channel that is closed when the process drains.
	draining func(ctx context.Context) <-chan struct{}
}

// Info answers which process serves the call.
func (d *demo) Info(context.Context, *demopb.InfoRequest) (*demopb.InfoReply, error) {
	return &demopb.InfoReply{PID: d.pid, Generation: d.gen}, nil
}

// Count sends in.N messages, one per tick. It runs to its end during a drain (each
// message then says Draining), unless the client goes away or the drain deadline
// cancels it.
func (d *demo) Count(in *demopb.CountRequest, stream grpc.ServerStreamingServer[demopb.CountReply]) error {
	if in.N < 0 || in.N > 100000 {
		return status.Error(codes.InvalidArgument, "n must be between 0 and 100000")
	}
	drain := d.draining(stream.Context())
	t := time.NewTicker(d.tick)
	defer t.Stop()
	for i := 1; i <= in.N; i++ {
		select {
		case <-t.C:
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
		draining := false
		select {
		case <-drain:
			draining = true
		default:
		}
		m := &demopb.CountReply{Seq: i, PID: d.pid, Generation: d.gen, Draining: draining}
		if err := stream.Send(m); err != nil {
			return fmt.Errorf("sending message %d: %w", i, err)
		}
	}
	return nil
}
