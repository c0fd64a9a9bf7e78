package quictest

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/seed-a7250cfa/handover/tests/quic/h3load"
)

// The long-lived HTTP/3 clients of the tests (package h3load, which the
// benchmark's HTTP/3 comparison runs too), against real server processes: the
// generation that answered comes in X-Gen.

// clientTransport is a client's own quic.Transport on its own UDP socket, closed
// at the end of the test.
func clientTransport(t testing.TB) *quic.Transport {
	tr, closeTr, err := h3load.Transport()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeTr)
	return tr
}

// dialH3 opens an HTTP/3 connection (with 0-RTT if early and the TLS config holds
// a ticket that allows it).
func dialH3(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, early bool) (*quic.Conn, *http3.ClientConn, error) {
	return h3load.Dial(ctx, tr, addr, tlsConf, early)
}

// get sends one GET and reads the whole answer. sent says whether the request
// left the client (its headers were written): a request that did not was never
// seen by a server.
func get(ctx context.Context, cc *http3.ClientConn, url string) (status int, gen int, body []byte, sent bool, err error) {
	return do(ctx, cc, http.MethodGet, url)
}

// do is get with another method (http3.MethodGet0RTT sends in 0-RTT).
func do(ctx context.Context, cc *http3.ClientConn, method, url string) (status int, gen int, body []byte, sent bool, err error) {
	a, err := h3load.Do(ctx, cc, method, url)
	return a.Status, a.Gen, a.Body, a.Sent, err
}

// runLoad starts n clients against addr, each sending at most max rounds of
// requests, one round every interval, until ctx ends: the even clients send one
// request a round, the odd ones inflight at once on their connection. wait returns
// the tally once they all stopped; the test's cleanup waits for them too.
func runLoad(ctx context.Context, t testing.TB, addr net.Addr, tlsConf *tls.Config, n, inflight, max int, interval time.Duration) (l *h3load.Load, wait func() h3load.Tally) {
	l, err := h3load.Run(ctx, h3load.Config{Addr: addr, TLS: tlsConf, Clients: n, Inflight: inflight, Rounds: max, Interval: interval})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Wait() })
	return l, l.Wait
}

// waitFor polls cond every 10 ms until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
