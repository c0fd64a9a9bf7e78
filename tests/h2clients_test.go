package tests

// HTTP/2 clients that do not forgive, through upgrades (issue 17): h2load (nghttp2)
// counts a stream the server left unprocessed as failed, and curl reports one as
// "Error in the HTTP2 framing layer"; neither retries. A draining generation must
// tell every HTTP/2 connection to go away in RFC 9113's two steps (GOAWAY with
// stream 2^31-1, a PING, then the real last stream), so that the streams a client
// opened before it heard the first GOAWAY are all answered.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
)

// h2Upgrades is how many upgrades the HTTP/2 clients' load goes through.
const h2Upgrades = 10

// h2loadTally sums what h2load reported over its runs.
type h2loadTally struct {
	mu                                                          sync.Mutex
	runs, total, succeeded, failed, errored, timeout, status2xx int
	samples                                                     []string
}

var (
	h2loadRequests = regexp.MustCompile(`(?m)^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout$`)
	h2loadStatus   = regexp.MustCompile(`(?m)^status codes: (\d+) 2xx, \d+ 3xx, \d+ 4xx, \d+ 5xx$`)
)

// add adds one run's report (h2load's output) to the tally.
func (h *h2loadTally) add(out []byte, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.runs++
	m, s := h2loadRequests.FindSubmatch(out), h2loadStatus.FindSubmatch(out)
	if m == nil || s == nil {
		h.failed++ // counted as one failure: the run's report is missing
		if len(h.samples) < 5 {
			h.samples = append(h.samples, fmt.Sprintf("%v; no report in:\n%s", err, out))
		}
		return
	}
	n := func(b []byte) int { v, _ := strconv.Atoi(string(b)); return v }
	total, failed := n(m[1]), n(m[3])
	h.total += total
	h.succeeded += n(m[2])
	h.failed += failed
	h.errored += n(m[4])
	h.timeout += n(m[5])
	h.status2xx += n(s[1])
	if (failed > 0 || n(s[1]) != total) && len(h.samples) < 5 {
		h.samples = append(h.samples, string(m[0])+"; "+string(s[0]))
	}
}

func (h *h2loadTally) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("%d runs, %d requests, %d succeeded, %d failed, %d errored, %d timeout, %d 2xx", h.runs, h.total, h.succeeded, h.failed, h.errored, h.timeout, h.status2xx)
}

// ok reports whether every request of every run succeeded with 2xx.
func (h *h2loadTally) ok() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runs > 0 && h.failed == 0 && h.errored == 0 && h.timeout == 0 && h.succeeded == h.total && h.status2xx == h.total
}

// h2loadLoop runs h2load with args until stop is closed or maxRuns runs are done.
func h2loadLoop(ctx context.Context, h2load string, args []string, maxRuns int, stop <-chan struct{}, tally *h2loadTally) {
	for range maxRuns {
		select {
		case <-stop:
			return
		default:
		}
		out, err := exec.CommandContext(ctx, h2load, args...).CombinedOutput()
		tally.add(out, err)
	}
}

// curlTally counts what curl reported, one line per request (-w), plus its errors.
type curlTally struct {
	mu       sync.Mutex
	requests int
	failed   int // a status other than 200 (000: no response)
	framing  int // "Error in the HTTP2 framing layer" (curl's exit status 16)
	runs     int
	samples  []string
}

func (c *curlTally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("%d curl runs, %d requests, %d failed, %d with HTTP/2 framing errors", c.runs, c.requests, c.failed, c.framing)
}

// curlLoop runs curl, each run GET-ting urls one after the other on one HTTP/2
// connection, until stop is closed or maxRuns runs are done.
func curlLoop(ctx context.Context, curl string, args, urls []string, maxRuns int, stop <-chan struct{}, tally *curlTally) {
	argv := append(slices.Clone(args), "-sS", "--max-time", "10", "-w", "%{http_code}\\n")
	for _, u := range urls {
		argv = append(argv, "-o", "/dev/null", u)
	}
	for range maxRuns {
		select {
		case <-stop:
			return
		default:
		}
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, curl, argv...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		codes := strings.Fields(string(out))
		tally.mu.Lock()
		tally.runs++
		tally.requests += len(urls)
		bad := len(urls) - len(codes) // requests curl never got to
		for _, c := range codes {
			if c != "200" {
				bad++
			}
		}
		tally.failed += bad
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 16 || strings.Contains(stderr.String(), "HTTP2 framing layer") {
			tally.framing++
		}
		if (bad > 0 || err != nil) && len(tally.samples) < 10 {
			tally.samples = append(tally.samples, fmt.Sprintf("codes %v, %v: %s", codes, err, strings.TrimSpace(stderr.String())))
		}
		tally.mu.Unlock()
	}
}

// TestHTTP2ClientsThroughUpgrades: two h2load loops (each run 16 connections of 10
// concurrent streams) and four curl loops (5 requests per TLS connection) run against
// the demo through 10 upgrades (SIGUSR2), over TLS and over h2c (prior knowledge):
// no request fails, and curl never reports an HTTP/2 framing error. Every old
// generation exits.
func TestHTTP2ClientsThroughUpgrades(t *testing.T) {
	h2load := needTool(t, "h2load")
	curl := needTool(t, "curl")
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"h2c", false}, {"TLS", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			spec := demoSpec{dir: dir, drain: h2Drain, args: []string{"-protocols", "h1,h2,h2c"}}
			// curl 7.88 (Debian 12) fails the second request on a reused h2c
			// connection with prior knowledge ("Error in the HTTP2 framing layer"),
			// upgrade or not: over h2c each curl run makes one request.
			scheme, curlArgs, perConn := "http", []string{"--http2-prior-knowledge"}, 1
			if tc.tls {
				cert, key, _ := testcert.Files(t, dir)
				spec.args = append(spec.args, "-tls-cert", cert, "-tls-key", key)
				scheme, curlArgs, perConn = "https", []string{"--http2", "--insecure"}, 5
			}
			d := startDemoSpec(t, spec)
			url := scheme + "://" + d.addr + "/"

			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			stop := make(chan struct{})
			var wg sync.WaitGroup
			// h2load: 16 connections, each opening its 10 streams at once (-n is
			// 16 × 10: none is left to open after a GOAWAY, which h2load would count
			// as failed), run after run; two loops at a time.
			h2args := []string{"-n", "160", "-c", "16", "-m", "10", url}
			var h2 h2loadTally
			for range 2 {
				wg.Go(func() { h2loadLoop(ctx, h2load, h2args, 3000, stop, &h2) })
			}
			// curl: requests one after the other on one connection, run after run;
			// four loops at a time.
			var cu curlTally
			urls := slices.Repeat([]string{url}, perConn)
			for range 4 {
				wg.Go(func() { curlLoop(ctx, curl, curlArgs, urls, 3000, stop, &cu) })
			}
			for range h2Upgrades {
				pace(300 * time.Millisecond)
				d.upgrade()
			}
			pace(300 * time.Millisecond)
			close(stop)
			wg.Wait()
			t.Logf("h2load %s, through %d upgrades: %v", strings.Join(h2args, " "), h2Upgrades, &h2)
			t.Logf("curl %s, %d requests a connection, through %d upgrades: %v", strings.Join(curlArgs, " "), perConn, h2Upgrades, &cu)
			if !h2.ok() {
				t.Errorf("h2load: %v; want every request to succeed with 2xx; samples:\n%s", &h2, strings.Join(h2.samples, "\n"))
			}
			if cu.failed != 0 || cu.framing != 0 || cu.runs == 0 {
				t.Errorf("curl: %v; want none failed; samples:\n%s", &cu, strings.Join(cu.samples, "\n"))
			}
			d.stop()
			if n := strings.Count(d.log(), "http2:"); n > 0 {
				t.Logf("net/http's HTTP/2 server logged %d lines:\n%s", n, grepLines(d.log(), "http2:", 5))
			}
		})
	}
}

// grepLines returns at most n lines of text that contain substr.
func grepLines(text, substr string, n int) string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() && len(out) < n {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return strings.Join(out, "\n")
}
