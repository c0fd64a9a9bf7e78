package main

// The TLS benchmark (go run . -tls): full versus resumed TLS handshakes in the
// window after each upgrade, and the server CPU time they cost, for handover and
// the peers that upgrade by signal (tableflip, gracehttp), each serving HTTPS with
// the same certificate (an ECDSA P-256 key, or RSA 2048 with -tls-key rsa) and
// crypto/tls's defaults.
//
// Clients: -tls-clients (64) Go TLS 1.3 clients, each with a session cache of its
// own, each connecting again and again: dial, handshake (presenting its latest
// ticket), GET / with Connection: close, then -tls-pause before the next. Every
// handshake is recorded: resumed or full (ConnectionState().DidResume), its time,
// and the PID that answered.
//
// Per approach: the server starts; a calibration of -tls-calibration with clients
// that present no ticket (every handshake full); then the clients above, a warm-up
// of 2s, a steady window of -tls-window without upgrades, and -tls-upgrades
// upgrades (the approach's signal to the serving process), each followed by a
// window of -tls-window. Server CPU time is the utime+stime of every server
// process (/proc/PID/stat while it runs, its rusage once the bench reaps it: the
// bench is a child subreaper, every generation ends up its child), summed over
// the window.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/tests/bench/internal/runinfo"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// tlsApproach is one server of the TLS benchmark, upgraded by a signal.
type tlsApproach struct {
	Name, Label, Server, Restart string
	bin                          string
	sig                          syscall.Signal
	extra                        []string
}

var tlsApproaches = []tlsApproach{
	{Name: "handover", Label: "handover: SIGUSR2", bin: "handover-demo", sig: syscall.SIGUSR2, extra: demoFlags,
		Server:  "cmd/handover-demo -tls-cert … -tls-key … (graceful.Server.ServeTLS: the line's session-ticket keys)",
		Restart: "kill -USR2 <pid>"},
	{Name: "tableflip", Label: "tableflip v1.2.3", bin: "tableflip", sig: syscall.SIGHUP,
		Server:  "servers/tableflip -tls-cert … -tls-key … (tls.NewListener, crypto/tls's own keys)",
		Restart: "kill -HUP <pid>"},
	{Name: "gracehttp", Label: "facebookgo/grace gracehttp", bin: "gracehttp", sig: syscall.SIGUSR2,
		Server:  "servers/gracehttp -tls-cert … -tls-key … (http.Server.TLSConfig, crypto/tls's own keys)",
		Restart: "kill -USR2 <pid>"},
}

// TLSReport is everything the TLS benchmark measured (tls.json).
type TLSReport struct {
	Tool       string              `json:"tool"`
	Command    string              `json:"command"`
	Started    string              `json:"started"`
	Finished   string              `json:"finished"`
	Machine    Machine             `json:"machine"`
	Key        string              `json:"key"` // the certificate's key: ecdsa (P-256) or rsa (2048)
	Clients    int                 `json:"clients"`
	PauseMS    float64             `json:"pause_ms"`
	WindowS    float64             `json:"window_s"`
	Upgrades   int                 `json:"upgrades"`
	Approaches []TLSApproachResult `json:"approaches"`
}

// TLSApproachResult is one approach's windows.
type TLSApproachResult struct {
	Name    string      `json:"name"`
	Label   string      `json:"label"`
	Server  string      `json:"server"`
	Restart string      `json:"restart"`
	Windows []TLSWindow `json:"windows"`
	Error   string      `json:"error,omitempty"`
}

// TLSWindow is what happened in one window: the calibration (no tickets), the
// steady window, or the window after an upgrade.
type TLSWindow struct {
	Kind       string  `json:"kind"` // calibration, steady, upgrade
	Index      int     `json:"index,omitempty"`
	Seconds    float64 `json:"seconds"`
	Handshakes int     `json:"handshakes"`
	Full       int     `json:"full"`
	Resumed    int     `json:"resumed"`
	Failed     int     `json:"failed"`
	// ServerCPU is the server processes' CPU time in the window, in seconds.
	ServerCPU float64 `json:"server_cpu_s"`
	// Client-side handshake times, median, in ms.
	FullMS    float64 `json:"full_handshake_ms_p50,omitempty"`
	ResumedMS float64 `json:"resumed_handshake_ms_p50,omitempty"`
	PIDs      []int   `json:"pids"`
	// After an upgrade: the clients whose first connection to a new process (not
	// the one signalled) came in the window, and how many of those resumed.
	FirstToNew        int `json:"first_to_new,omitempty"`
	FirstToNewResumed int `json:"first_to_new_resumed,omitempty"`
	// LoadAvg is /proc/loadavg at the end of the window: other work on the
	// machine (its 1-minute figure counts the bench's own clients too).
	LoadAvg string `json:"loadavg"`
}

// hsRecord is one connection of a client.
type hsRecord struct {
	client  int
	at      time.Time
	took    time.Duration
	resumed bool
	pid     int
	err     bool
}

// recorder collects the clients' records.
type recorder struct {
	mu   sync.Mutex
	recs []hsRecord
}

func (r *recorder) add(h hsRecord) {
	r.mu.Lock()
	r.recs = append(r.recs, h)
	r.mu.Unlock()
}

func (r *recorder) between(from, to time.Time) []hsRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []hsRecord
	for _, h := range r.recs {
		if !h.at.Before(from) && h.at.Before(to) {
			out = append(out, h)
		}
	}
	return out
}

// newestPID is the PID that answered for the first time last: the current
// generation (an old one may still answer a connection it accepted before).
func (r *recorder) newestPID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[int]bool{}
	pid := 0
	for _, h := range r.recs {
		if !h.err && !seen[h.pid] {
			seen[h.pid] = true
			pid = h.pid
		}
	}
	return pid
}

// tlsClients runs n clients against addr until ctx ends. With tickets false they
// present none (every handshake is full).
func tlsClients(ctx context.Context, n int, addr string, pool *x509.CertPool, tickets bool, pause time.Duration, rec *recorder) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}
		if tickets {
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
		} else {
			cfg.SessionTicketsDisabled = true
		}
		wg.Add(1)
		client := i
		go func() {
			defer wg.Done()
			// Spread the clients' first connections over one pause.
			t := time.NewTimer(time.Duration(mrand.Int64N(int64(pause) + 1)))
			for {
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				h := tlsOnce(addr, cfg)
				h.client = client
				rec.add(h)
				t.Reset(pause)
			}
		}()
	}
	return &wg
}

// tlsOnce makes one connection: handshake, GET /, Connection: close.
func tlsOnce(addr string, cfg *tls.Config) hsRecord {
	h := hsRecord{at: time.Now(), err: true}
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return h
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(nc, cfg)
	start := time.Now()
	if err := c.Handshake(); err != nil {
		return h
	}
	h.took = time.Since(start)
	resp, err := rawhttp.NewConn(c).Do("GET", "/", rawhttp.CloseHeader(), 10*time.Second)
	if err != nil || resp.Status != 200 {
		return h
	}
	h.resumed, h.pid, h.err = c.ConnectionState().DidResume, resp.PID(), false
	return h
}

// cpuMeter sums the CPU time of a server's processes, alive or reaped.
type cpuMeter struct {
	mu     sync.Mutex
	pids   map[int]bool
	final  map[int]float64 // reaped: from rusage
	stop   chan struct{}
	done   chan struct{}
	source func() []int // PIDs to know of (the answering ones)
}

func newCPUMeter(first int, source func() []int) *cpuMeter {
	m := &cpuMeter{pids: map[int]bool{first: true}, final: map[int]float64{}, stop: make(chan struct{}), done: make(chan struct{}), source: source}
	go m.reap()
	return m
}

// reap learns new PIDs and reaps, by PID, those that exited and are children of
// the bench (every generation is, once its parent has exited), keeping their
// rusage.
func (m *cpuMeter) reap() {
	defer close(m.done)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		m.learn()
		m.mu.Lock()
		for pid := range m.pids {
			if _, ok := m.final[pid]; ok {
				continue
			}
			var ws unix.WaitStatus
			var ru unix.Rusage
			if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, &ru); err == nil && got == pid {
				m.final[pid] = tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
			}
		}
		m.mu.Unlock()
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

func (m *cpuMeter) learn() {
	pids := m.source()
	m.mu.Lock()
	for _, p := range pids {
		m.pids[p] = true
	}
	m.mu.Unlock()
}

func tvSeconds(tv unix.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// total is the CPU time, in seconds, of every process known so far.
func (m *cpuMeter) total() float64 {
	m.learn()
	m.mu.Lock()
	defer m.mu.Unlock()
	sum := 0.0
	for pid := range m.pids {
		if f, ok := m.final[pid]; ok {
			sum += f
			continue
		}
		sum += procCPU(pid)
	}
	return sum
}

// unreaped lists the known processes the meter has not reaped.
func (m *cpuMeter) unreaped() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []int
	for pid := range m.pids {
		if _, ok := m.final[pid]; !ok {
			out = append(out, pid)
		}
	}
	return out
}

func (m *cpuMeter) close() {
	close(m.stop)
	<-m.done
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat (100 on
// every Linux architecture Go supports).
const clockTicks = 100

// procCPU is pid's utime+stime in seconds, from /proc/PID/stat (0 if gone).
func procCPU(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / clockTicks
}

// tlsCert writes a self-signed certificate for 127.0.0.1 into dir, with an ECDSA
// P-256 key (kind "ecdsa") or an RSA 2048 one ("rsa").
func tlsCert(dir, kind string) (certFile, keyFile string, pool *x509.CertPool, err error) {
	var key crypto.Signer
	switch kind {
	case "ecdsa":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		err = fmt.Errorf("-tls-key %q: want ecdsa or rsa", kind)
	}
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "handover bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "", "", nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, err
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool, nil
}

func keyName(k string) string {
	switch k {
	case "rsa":
		return "RSA 2048"
	case "ecdsa":
		return "ECDSA P-256"
	}
	return k
}

// runTLS runs the TLS benchmark and writes tls.json and tls.md into o.out.
func runTLS(ctx context.Context, o options) error {
	e, cleanup, err := setUp(o, "handover-bench-tls-", "")
	if err != nil {
		return err
	}
	defer cleanup()
	bin, work := e.bin, e.work
	cert, key, pool, err := tlsCert(work, o.tlsKey)
	if err != nil {
		return err
	}
	rep := &TLSReport{Tool: "tests/bench -tls", Command: runinfo.CommandLine("."), Started: time.Now().UTC().Format(time.RFC3339),
		Machine: machineInfo(sdns.Version{}, bin), Key: o.tlsKey, Clients: o.tlsClients, PauseMS: float64(o.tlsPause) / 1e6,
		WindowS: o.tlsWindow.Seconds(), Upgrades: o.tlsUpgrades}
	for _, name := range splitList(o.tlsApproaches) {
		i := slices.IndexFunc(tlsApproaches, func(a tlsApproach) bool { return a.Name == name })
		if i < 0 {
			return fmt.Errorf("-tls-approaches: unknown approach %q", name)
		}
		if ctx.Err() != nil {
			break
		}
		a := tlsApproaches[i]
		logf("=== %s", a.Label)
		res := runTLSApproach(ctx, o, a, bin, work, cert, key, pool)
		logf("%s: %s", a.Name, tlsOneLine(res))
		rep.Approaches = append(rep.Approaches, res)
	}
	rep.Finished = time.Now().UTC().Format(time.RFC3339)
	md := tlsMarkdown(rep)
	if err := writeReport(o.out, "tls", rep, md); err != nil {
		return err
	}
	fmt.Print(md)
	logf("wrote %s and %s", filepath.Join(o.out, "tls.json"), filepath.Join(o.out, "tls.md"))
	return ctx.Err()
}

// runTLSApproach runs one approach: start, calibration, steady window, upgrades, stop.
func runTLSApproach(ctx context.Context, o options, a tlsApproach, bin, work, cert, key string, pool *x509.CertPool) (res TLSApproachResult) {
	res = TLSApproachResult{Name: a.Name, Label: a.Label, Server: a.Server, Restart: a.Restart}
	addr, err := freePort()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	logPath := filepath.Join(work, a.Name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer lf.Close()
	cmd := exec.Command(filepath.Join(bin, a.bin), append([]string{"-listen", addr, "-tls-cert", cert, "-tls-key", key}, a.extra...)...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = work
	if err := cmd.Start(); err != nil {
		res.Error = err.Error()
		return res
	}
	first := cmd.Process.Pid
	cmd.Process.Release() // reaped by PID (cpuMeter)
	rec := &recorder{}
	meter := newCPUMeter(first, func() []int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		seen := map[int]bool{}
		var out []int
		for _, h := range rec.recs {
			if !h.err && !seen[h.pid] {
				seen[h.pid] = true
				out = append(out, h.pid)
			}
		}
		return out
	})
	defer func() {
		if err := stopTLSServer(meter, o.exitTimeout); err != nil && res.Error == "" {
			res.Error = err.Error()
		}
		meter.close()
		if res.Error != "" {
			b, _ := os.ReadFile(logPath)
			logf("%s: %s\n%s", a.Name, res.Error, tail(string(b), 20))
		}
	}()
	// Wait for the server to answer over TLS.
	probe := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}
	if err := proc.WaitFor(func() bool { return !tlsOnce(addr, probe).err || !proc.Alive(first) }, 20*time.Second, "the server to answer"); err != nil || !proc.Alive(first) {
		res.Error = fmt.Sprintf("the server did not answer: %v", err)
		return res
	}
	window := func(kind string, index int, from time.Time, d time.Duration, old int) bool {
		c0 := meter.total()
		if !sleepCtx(ctx, time.Until(from.Add(d))) {
			return false
		}
		c1 := meter.total()
		w := summarize(rec.between(from, from.Add(d)), old)
		w.Kind, w.Index, w.Seconds, w.ServerCPU, w.LoadAvg = kind, index, d.Seconds(), c1-c0, runinfo.LoadAvg()
		res.Windows = append(res.Windows, w)
		logf("%s %s %d: %d handshakes, %d full, %d resumed, %d failed, server CPU %.3fs, PIDs %v", a.Name, kind, index, w.Handshakes, w.Full, w.Resumed, w.Failed, w.ServerCPU, w.PIDs)
		return true
	}
	// Calibration: no tickets, every handshake full.
	cctx, cancel := context.WithCancel(ctx)
	wg := tlsClients(cctx, o.tlsClients, addr, pool, false, o.tlsPause, rec)
	sleepCtx(ctx, time.Second)
	ok := window("calibration", 0, time.Now(), o.tlsCalibration, 0)
	cancel()
	wg.Wait()
	if !ok {
		return res
	}
	// The clients with tickets: warm-up, a steady window, then the upgrades.
	cctx, cancel = context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	wg = tlsClients(cctx, o.tlsClients, addr, pool, true, o.tlsPause, rec)
	if !sleepCtx(ctx, 2*time.Second) || !window("steady", 0, time.Now(), o.tlsWindow, 0) {
		return res
	}
	for i := 1; i <= o.tlsUpgrades; i++ {
		cur := rec.newestPID()
		signal := time.Now()
		if err := syscall.Kill(cur, a.sig); err != nil {
			res.Error = fmt.Sprintf("upgrade %d: kill -%d %d: %v", i, a.sig, cur, err)
			return res
		}
		if !window("upgrade", i, signal, o.tlsWindow, cur) {
			return res
		}
		if got := rec.newestPID(); got == cur {
			res.Error = fmt.Sprintf("upgrade %d: PID %d still answers %v later", i, cur, o.tlsWindow)
			return res
		}
	}
	return res
}

// stopTLSServer sends SIGTERM to every server process still running and waits until
// the meter has reaped them all (SIGKILL after timeout).
func stopTLSServer(m *cpuMeter, timeout time.Duration) error {
	for _, p := range m.unreaped() {
		syscall.Kill(p, syscall.SIGTERM)
	}
	if err := proc.WaitFor(func() bool { return len(m.unreaped()) == 0 }, timeout, "the server processes to exit"); err != nil {
		for _, p := range m.unreaped() {
			syscall.Kill(p, syscall.SIGKILL)
		}
		proc.WaitFor(func() bool { return len(m.unreaped()) == 0 }, 5*time.Second, "the killed server processes")
		return fmt.Errorf("%w: %v left", err, m.unreaped())
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// summarize counts the handshakes of a window; old, if not 0, is the process that
// was signalled (see TLSWindow.FirstToNew).
func summarize(recs []hsRecord, old int) TLSWindow {
	var w TLSWindow
	var full, resumed []time.Duration
	seen := map[int]bool{}
	firstNew := map[int]bool{}
	for _, h := range recs {
		if h.err {
			w.Failed++
			continue
		}
		if old != 0 && h.pid != old && !firstNew[h.client] {
			firstNew[h.client] = true
			w.FirstToNew++
			if h.resumed {
				w.FirstToNewResumed++
			}
		}
		w.Handshakes++
		if h.resumed {
			w.Resumed++
			resumed = append(resumed, h.took)
		} else {
			w.Full++
			full = append(full, h.took)
		}
		if !seen[h.pid] {
			seen[h.pid] = true
			w.PIDs = append(w.PIDs, h.pid)
		}
	}
	w.FullMS, w.ResumedMS = medianMS(full), medianMS(resumed)
	return w
}

func medianMS(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[len(ds)/2]) / 1e6
}

// tlsSummary is an approach's figures as the tables show them.
type tlsSummary struct {
	upgrades                     int
	full, resumed, failed, total int
	firstNew, firstNewResumed    int
	cpuMedian                    float64
	steady                       TLSWindow
	perFullMS, perResumedMS      float64
	fullP50MS, resumedP50MS      float64
	minRate, maxRate             float64
}

func summarizeApproach(r TLSApproachResult) tlsSummary {
	var s tlsSummary
	var cpus, rates []float64
	var fullMS, resMS []float64
	for _, w := range r.Windows {
		switch w.Kind {
		case "calibration":
			if w.Handshakes > 0 {
				s.perFullMS = 1000 * w.ServerCPU / float64(w.Handshakes)
			}
		case "steady":
			s.steady = w
			if w.Handshakes > 0 {
				s.perResumedMS = 1000 * w.ServerCPU / float64(w.Handshakes)
			}
		case "upgrade":
			s.upgrades++
			s.full += w.Full
			s.resumed += w.Resumed
			s.failed += w.Failed
			s.total += w.Handshakes
			s.firstNew += w.FirstToNew
			s.firstNewResumed += w.FirstToNewResumed
			cpus = append(cpus, w.ServerCPU)
			if w.Handshakes > 0 {
				rates = append(rates, 100*float64(w.Resumed)/float64(w.Handshakes))
			}
			if w.FullMS > 0 {
				fullMS = append(fullMS, w.FullMS)
			}
			if w.ResumedMS > 0 {
				resMS = append(resMS, w.ResumedMS)
			}
		}
	}
	if len(cpus) > 0 {
		s.cpuMedian = medianF(cpus)
	}
	if len(rates) > 0 {
		s.minRate, s.maxRate = slices.Min(rates), slices.Max(rates)
	}
	s.fullP50MS, s.resumedP50MS = medianF(fullMS), medianF(resMS)
	return s
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func tlsOneLine(r TLSApproachResult) string {
	if r.Error != "" {
		return "error: " + r.Error
	}
	s := summarizeApproach(r)
	return fmt.Sprintf("%d upgrades: first connections to the new process %d of %d resumed; %d handshakes in the windows, %d full, %d resumed (%.1f%%), %d failed; server CPU per window %.2fs (median), steady %.2fs",
		s.upgrades, s.firstNewResumed, s.firstNew, s.total, s.full, s.resumed, pctOf(s.resumed, s.total), s.failed, s.cpuMedian, s.steady.ServerCPU)
}

func pctOf(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// tlsMarkdown is the report's tables.
func tlsMarkdown(rep *TLSReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "TLS resumption after upgrades: %d clients, each reconnecting %v after its previous connection closed, presenting its latest ticket; %v windows; certificate key %s; `%s`\n\n",
		rep.Clients, time.Duration(rep.PauseMS*1e6), time.Duration(rep.WindowS*1e9), keyName(rep.Key), rep.Command)
	b.WriteString("| approach | upgrades | each client's first connection to the new process: resumed | handshakes in the windows after upgrades | full | resumed | resumption rate (lowest window) | failed | server CPU per window, median | steady window: handshakes, resumed, server CPU | server CPU per handshake: full / resumed | extra server CPU per upgrade: full handshakes × the difference |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Approaches {
		if r.Error != "" {
			fmt.Fprintf(&b, "| %s | error: %s |||||||||||\n", r.Label, r.Error)
			continue
		}
		s := summarizeApproach(r)
		extra := 0.0
		if s.upgrades > 0 {
			extra = float64(s.full) / float64(s.upgrades) * (s.perFullMS - s.perResumedMS)
		}
		fmt.Fprintf(&b, "| %s | %d | %d of %d | %d | %d | %d | %.2f%% (%.2f%%) | %d | %.2f s | %d, %.2f%%, %.2f s | %.2f / %.2f ms | %.0f ms |\n",
			r.Label, s.upgrades, s.firstNewResumed, s.firstNew, s.total, s.full, s.resumed, pctOf(s.resumed, s.total), s.minRate, s.failed, s.cpuMedian,
			s.steady.Handshakes, pctOf(s.steady.Resumed, s.steady.Handshakes), s.steady.ServerCPU, s.perFullMS, s.perResumedMS, extra)
	}
	b.WriteString("\nEach window, in order (calibration: clients without tickets; steady: no upgrade; upgrade N: the window from the Nth signal):\n\n")
	b.WriteString("| approach | window | handshakes | full | resumed | failed | first connections to the new process: resumed | server CPU | client handshake p50 full / resumed | PIDs answering | load average after |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rep.Approaches {
		for _, w := range r.Windows {
			name, first := w.Kind, ""
			if w.Kind == "upgrade" {
				name = fmt.Sprintf("upgrade %d", w.Index)
				first = fmt.Sprintf("%d of %d", w.FirstToNewResumed, w.FirstToNew)
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %s | %.2f s | %.2f / %.2f ms | %d | %s |\n",
				r.Name, name, w.Handshakes, w.Full, w.Resumed, w.Failed, first, w.ServerCPU, w.FullMS, w.ResumedMS, len(w.PIDs), w.LoadAvg)
		}
	}
	return b.String()
}
