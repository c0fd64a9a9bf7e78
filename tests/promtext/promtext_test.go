//go:build linux

// Package promtext checks, with the Prometheus project's own parser, that what
// graceful.Upgrader.Metrics serves is Prometheus text format with the counters it
// documents. It is a module of its own so that the library does not depend on
// Prometheus, not even for its tests.
package promtext

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The demo's generations outlive their parents: the test process is their
// subreaper, and reaps each by PID.
func TestMain(m *testing.M) {
	if _, _, err := syscall.RawSyscall(syscall.SYS_PRCTL, 36 /* PR_SET_CHILD_SUBREAPER */, 1, 0); err != 0 {
		fmt.Fprintln(os.Stderr, "prctl(PR_SET_CHILD_SUBREAPER):", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's state
	}
}

func readPID(path string) int {
	b, _ := os.ReadFile(path)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func freeAddr(t *testing.T) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		// Below the ephemeral range, where no client holds the port.
		a := "127.0.0.1:" + strconv.Itoa(20000+rand.IntN(12000))
		if l, err := net.Listen("tcp", a); err == nil {
			l.Close()
			return a
		}
	}
	t.Fatal("no free port")
	return ""
}

// reap waits for pid, a child of the test (directly or as subreaper), to exit.
func reap(t *testing.T, pid int) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		<-done
		t.Errorf("process %d did not exit", pid)
	}
}

// TestMetricsParse: the demo after three upgrades and a failed one serves, on
// /metrics, text the Prometheus parser accepts, with the documented families, types
// and values: the generation, the upgrades by outcome, the handover and drain
// summaries (counts carried across the generations), the connections.
func TestMetricsParse(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "handover-demo")
	build := exec.Command("go", "build", "-o", bin, "./cmd/handover-demo")
	build.Dir = "../.." // the main module
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the demo: %v\n%s", err, out)
	}
	good, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	pidfile := filepath.Join(dir, "demo.pid")
	logf, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-listen", addr, "-pidfile", pidfile, "-drain-timeout", "10s", "-upgrade-timeout", "5s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pids := []int{cmd.Process.Pid}
	cmd.Process.Release()
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("log:\n%s", b)
		}
	})
	waitFor(t, "the PID file", func() bool { return readPID(pidfile) == pids[0] })

	deploy := func(b []byte) {
		tmp := bin + ".new"
		if err := os.WriteFile(tmp, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, bin); err != nil {
			t.Fatal(err)
		}
	}
	// A failed upgrade: a build that exits at once.
	deploy([]byte("#!/bin/sh\nexit 1\n"))
	syscall.Kill(pids[0], syscall.SIGUSR2)
	failed := func() bool {
		fams := scrape(t, addr)
		return value(fams, "handover_upgrades_total", "outcome", "failed") == 1
	}
	waitFor(t, "the failed upgrade to be counted", failed)
	deploy(good)
	for i := 0; i < 3; i++ {
		old := pids[len(pids)-1]
		syscall.Kill(old, syscall.SIGUSR2)
		waitFor(t, "a new generation", func() bool { p := readPID(pidfile); return p != 0 && p != old })
		pids = append(pids, readPID(pidfile))
		reap(t, old)
	}
	// The last drain is counted once its news reaches the current generation.
	var fams map[string]*dto.MetricFamily
	waitFor(t, "the third drain to be counted", func() bool {
		fams = scrape(t, addr)
		return count(fams, "handover_drain_seconds") == 3
	})
	checks := []struct {
		name string
		typ  dto.MetricType
		got  float64
		want float64
	}{
		{"handover_generation", dto.MetricType_GAUGE, value(fams, "handover_generation", "", ""), 4},
		{"handover_upgrades_total ok", dto.MetricType_COUNTER, value(fams, "handover_upgrades_total", "outcome", "ok"), 3},
		{"handover_upgrades_total failed", dto.MetricType_COUNTER, value(fams, "handover_upgrades_total", "outcome", "failed"), 1},
		{"handover_handover_seconds count", dto.MetricType_SUMMARY, float64(count(fams, "handover_handover_seconds")), 3},
		{"handover_drain_seconds count", dto.MetricType_SUMMARY, float64(count(fams, "handover_drain_seconds")), 3},
		{"handover_draining_generations", dto.MetricType_GAUGE, value(fams, "handover_draining_generations", "", ""), 0},
	}
	for _, c := range checks {
		name := strings.Fields(c.name)[0]
		f := fams[name]
		if f == nil {
			t.Errorf("%s: no such family", name)
			continue
		}
		if f.GetType() != c.typ || f.GetHelp() == "" {
			t.Errorf("%s: type %v, help %q; want %v and a help text", name, f.GetType(), f.GetHelp(), c.typ)
		}
		if c.got != c.want {
			t.Errorf("%s = %g, want %g", c.name, c.got, c.want)
		}
	}
	if f := fams["handover_connections"]; f == nil || len(f.Metric) != 4 {
		t.Errorf("handover_connections: %v; want one series per state", f)
	}
	if s := fams["handover_handover_seconds"].GetMetric()[0].GetSummary(); s.GetSampleSum() <= 0 || len(s.GetQuantile()) != 3 {
		t.Errorf("handover_handover_seconds: %v", s)
	}
	last := pids[len(pids)-1]
	syscall.Kill(last, syscall.SIGTERM)
	reap(t, last)
}

// scrape gets /metrics and parses it with the Prometheus text parser; a parse error
// fails the test.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("the Prometheus parser refuses /metrics: %v\n%s", err, body)
	}
	return fams
}

// value returns the value of the gauge or counter name with label key=val ("" for
// none), or -1.
func value(fams map[string]*dto.MetricFamily, name, key, val string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	for _, m := range f.Metric {
		match := key == ""
		for _, l := range m.Label {
			match = match || l.GetName() == key && l.GetValue() == val
		}
		if !match {
			continue
		}
		if m.Gauge != nil {
			return m.Gauge.GetValue()
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
	}
	return -1
}

// count returns a summary's sample count, or -1.
func count(fams map[string]*dto.MetricFamily, name string) int {
	f := fams[name]
	if f == nil || len(f.Metric) == 0 || f.Metric[0].Summary == nil {
		return -1
	}
	return int(f.Metric[0].Summary.GetSampleCount())
}
