package tests

// graceful.Server.Serve on a listener of the application's that wraps the
// Upgrader's (issue 17): Serve must return http.ErrServerClosed once the old
// generation has drained, whatever the wrapping, so that the idiomatic
//
//	if err := srv.Serve(ln); err != http.ErrServerClosed { log.Fatal(err) }
//
// does not kill the old generation mid-drain. Before the fix Serve returned "accept
// …: use of closed network connection" as the drain began: in-flight requests were
// reset and the old generation exited 1.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
)

// wrappedUpgrades is how many upgrades each wrapping goes through.
const wrappedUpgrades = 5

// TestServeWrappedListener: tests/testdata/wrapped serves on the Upgrader's listener
// wrapped by tls.NewListener, by a struct that embeds it, and by a listener of its
// own that holds it in a field and rewords its errors; it log.Fatal-s on anything
// but http.ErrServerClosed. Under load (keep-alive and not, one request in ten
// taking 300 ms) through 5 upgrades, no request fails, and each old generation exits
// 0 after answering its requests. Over TLS, handlers see r.TLS with the handshake
// complete.
func TestServeWrappedListener(t *testing.T) {
	prog := proc.Binary(t, "./testdata/wrapped")
	for _, wrap := range []string{"tls", "embed", "custom"} {
		t.Run(wrap, func(t *testing.T) {
			dir := t.TempDir()
			spec := demoSpec{program: prog, dir: dir, args: []string{"-wrap", wrap}}
			var pool *x509.CertPool
			if wrap == "tls" {
				var cert, key string
				cert, key, pool = testcert.Files(t, dir)
				spec.args = append(spec.args, "-tls-cert", cert, "-tls-key", key)
			}
			d := startDemoSpec(t, spec)
			var stop func() (total, failed int, samples []string)
			if pool != nil {
				stop = startTLSLoad(t, d.addr, pool)
			} else {
				r, err := load.Start(load.Config{Addr: d.addr, Concurrency: 8, MaxRequests: 200000, Duration: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				stop = func() (int, int, []string) {
					res := r.Stop()
					t.Log(res.Summary())
					var samples []string
					for _, f := range res.FailureSamples(10) {
						samples = append(samples, f.String())
					}
					return res.Total(), res.FailureCount(), samples
				}
			}
			for range wrappedUpgrades {
				pace(400 * time.Millisecond)
				old, _ := d.upgrade()
				if ws, err := reapStatus(old, d.drain+5*time.Second); err != nil {
					t.Errorf("generation %d: %v", old, err)
				} else if !ws.Exited() || ws.ExitStatus() != 0 {
					t.Errorf("generation %d ended with %v, want exit status 0; log:\n%s", old, describeWait(ws), tail(d.log(), 20))
				}
			}
			pace(400 * time.Millisecond)
			total, failed, samples := stop()
			if total == 0 || failed > 0 {
				t.Errorf("%d requests, %d failed: %q", total, failed, samples)
			}
			d.stop()
		})
	}
}

// reapStatus waits until pid, a generation that is or will be a child of the test
// (directly, or once its parent has exited: the test is a subreaper), has exited,
// reaps it and returns how it ended.
func reapStatus(pid int, timeout time.Duration) (syscall.WaitStatus, error) {
	deadline := time.Now().Add(timeout)
	err := proc.WaitFor(func() bool { return proc.PPid(pid) == os.Getpid() || proc.State(pid) == "" }, timeout, fmt.Sprintf("pid %d to be the test's child", pid))
	if err != nil {
		return 0, err
	}
	return proc.Reap(pid, time.Until(deadline))
}

func describeWait(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// startTLSLoad runs 8 HTTPS clients against addr (certificates checked against
// pool) until the returned function is called, for a minute or 200,000 requests at
// most: half keep their connection across requests, half make one per request, and
// every tenth request takes 300 ms. Every response must be 200 and say its handler
// saw the completed TLS handshake (r.TLS). The function stops them and returns the
// number of requests, of failures, and samples of them.
func startTLSLoad(t testing.TB, addr string, pool *x509.CertPool) func() (int, int, []string) {
	if err := rawhttp.CheckLoopback(addr); err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}}
	var (
		total    atomic.Int64
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	deadline := time.Now().Add(time.Minute)
	for w := range 8 {
		keepAlive := w%2 == 0
		wg.Go(func() {
			var c *rawhttp.Conn
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for i := 1; time.Now().Before(deadline) && total.Add(1) <= 200000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := "/"
				if i%10 == 0 {
					path = "/slow?ms=300"
				}
				resp, err := tlsGet(&c, addr, cfg, path, keepAlive)
				if err == nil && (resp.Status != 200 || !strings.Contains(string(resp.Body), "tls=true")) {
					err = fmt.Errorf("status %d, body %q", resp.Status, resp.Body)
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s (keep-alive %v): %v", path, keepAlive, err))
					mu.Unlock()
				}
			}
		})
	}
	return func() (int, int, []string) {
		close(stop)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		n := min(int(total.Load()), 200000)
		t.Logf("HTTPS load: %d requests, %d failed", n, len(failures))
		return n, len(failures), failures[:min(len(failures), 10)]
	}
}

// tlsGet sends GET path on *c, dialling a new TLS connection first if there is none
// or it cannot be reused; without keepAlive it asks for the connection to be closed.
func tlsGet(c **rawhttp.Conn, addr string, cfg *tls.Config, path string, keepAlive bool) (*rawhttp.Response, error) {
	if *c != nil && !(*c).Reusable() {
		(*c).Close()
		*c = nil
	}
	if *c == nil {
		tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return nil, err
		}
		*c = rawhttp.NewConn(tc)
	}
	var h map[string][]string
	if !keepAlive {
		h = rawhttp.CloseHeader()
	}
	resp, err := (*c).Do("GET", path, h, 5*time.Second)
	if err != nil || !keepAlive {
		(*c).Close()
		*c = nil
	}
	return resp, err
}
