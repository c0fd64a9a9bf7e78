// Command handover-demo is a small HTTP server that upgrades itself without dropping
// a connection: send it SIGUSR2 (or run it under systemd and `systemctl reload` it)
// and a new process takes over its socket while this one finishes its requests.
//
// Flags and endpoints are a contract used by the README, the deploy files and the
// tests:
//
//	-listen ADDR            address to bind when no socket is passed (default 127.0.0.1:8080;
//	                        "unix:/path" for a unix socket)
//	-pidfile PATH           write the current generation's PID here
//	-drain-timeout D        force-close connections still open D after draining starts
//	-upgrade-timeout D      give up on a new generation not ready within D
//	-prepare-timeout D      abort a prepared generation (handover prepare) not committed
//	                        within D (default 5m)
//	-message TEXT           included in every answer, to show which build answers
//	-control PATH           serve `handover reload`/`handover status` on this unix socket
//	                        (unless a socket named handover-control is passed)
//	-fdstore                under systemd, keep the sockets in systemd's fd store (and the
//	                        idle connections, as the service restarts)
//	-fdstore-conns          with -fdstore, keep every connection there while it is open, so
//	                        that idle ones survive a crash (Config.FDStoreConns)
//	-no-conn-handover       close idle keep-alive connections at a drain instead of handing
//	                        them to the new generation (Server.DisableConnHandover)
//	-tls-cert F -tls-key F  serve HTTPS (HTTP/1.1 and HTTP/2) with this certificate
//	-h2c                    also accept HTTP/2 without TLS (prior knowledge)
//	-max-draining N         at most N generations drain at once (default 3)
//	-protocols LIST         the protocols to serve (http.Server.Protocols), comma-separated:
//	                        h1 (HTTP/1), h2 (HTTP/2 over TLS), h2c (HTTP/2 without TLS,
//	                        prior knowledge); default net/http's (h1,h2); -h2c adds h2c
//	-tls-keys FILE          TLS session-ticket keys shared by a fleet (Config.TicketKeyFile)
//	-ticket-rotation D      replace the line's own session-ticket key every D (default 24h)
//	-ticket-lifetime D      accept tickets of a key until D after its creation (default 168h)
//	-state-pad N            add N bytes to the state handed to the next generation (to
//	                        try the size limit, graceful.MaxStateSize, or what a large
//	                        state costs)
//	-probation D            how long a new generation is on probation, during which this
//	                        one stands by once drained (Config.Probation: 0 means the
//	                        library's 10s, a negative value none)
//
//	GET /            200, header X-Pid, body "pid=P gen=G served=N message=M"
//	GET /slow?ms=N   the same after N milliseconds
//	GET /stream?n=N  N lines, one a second (interval=MS to change the pace)
//	GET /ws          hijacked, websocket-like line echo; says "bye" when draining
//	GET /events?n=N  server-sent events, one a second (interval=MS); when the server
//	                 drains it sends "event: bye" and ends the stream cleanly
//	GET /metrics     the Upgrader's counters, Prometheus text format
//	PUT /kv/KEY      store the body (at most 4 KiB) under KEY (at most 128 bytes):
//	                 201, header X-Pid
//	GET /kv/KEY      200 and the value, or 404
//	GET /kv          200 and every key, one a line
//
// The state (served=N and the keys) passes from generation to generation with
// Config.SaveState and LoadState: when an upgrade starts, and again once the old
// generation has answered its last request (its drain ended), and, with -fdstore
// under systemd, through systemd's fd store across `systemctl restart`. served=N
// counts every request the line of generations has answered: each generation counts
// its own, under its PID and start time, and a hand-off merges the counts generation
// by generation (the larger wins), so that the last hand-off, which comes while the new generation serves,
// adds what the old one answered since the first without counting anything twice.
// A key that came with a hand-off is added if this generation does not have it: a
// PUT answered by either generation is in the new one's state once the old one's
// last hand-off is loaded. The state is tagged with the build's state version ("2";
// a build made with -ldflags "-X main.stateVersion=V" refuses the state of another
// version and starts cold). Its format: the -state-pad zero bytes, then a line of
// JSON (a JSON decoder reads every byte of a string at some 50 MB/s: padding
// inside the JSON would cost more than the hand-off itself).
//
// Under socket activation it serves on the passed socket named "http", or on the only
// stream socket passed when none is named; if what was passed cannot serve, it exits
// with status 1 and a message naming the descriptor.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to bind when no socket is passed (unix:/path for a unix socket)")
	pidfile := flag.String("pidfile", "", "write the current generation's PID to this file")
	drain := flag.Duration("drain-timeout", 30*time.Second, "force-close connections still open this long after draining starts")
	upgrade := flag.Duration("upgrade-timeout", 30*time.Second, "give up on a new generation that is not ready within this time")
	prepare := flag.Duration("prepare-timeout", 5*time.Minute, "abort a prepared generation (handover prepare) that is not committed within this time")
	grace := flag.Duration("keepalive-grace", time.Second, "how long idle keep-alive connections may send one more request while draining")
	message := flag.String("message", "hello", "text included in every answer, to show which build answers")
	controlPath := flag.String("control", "", "path of the control socket for `handover reload` and `handover status`")
	fdstore := flag.Bool("fdstore", false, "under systemd, hand the sockets to systemd's fd store (needs FileDescriptorStoreMax=)")
	fdstoreConns := flag.Bool("fdstore-conns", false, "with -fdstore, keep every connection in the fd store while it is open (idle ones survive a crash)")
	noHandover := flag.Bool("no-conn-handover", false, "close idle keep-alive connections at a drain instead of handing them to the new generation")
	certFile := flag.String("tls-cert", "", "serve HTTPS with this certificate (PEM; with -tls-key)")
	keyFile := flag.String("tls-key", "", "the private key of -tls-cert (PEM)")
	h2c := flag.Bool("h2c", false, "also accept HTTP/2 without TLS (prior knowledge)")
	maxDraining := flag.Int("max-draining", 3, "at most this many generations drain at once; past it the oldest force-closes its connections")
	protoList := flag.String("protocols", "", "the protocols to serve, comma-separated: h1, h2 (over TLS), h2c (without TLS); default h1,h2 (plus h2c with -h2c)")
	ticketKeys := flag.String("tls-keys", "", "TLS session-ticket keys shared by a fleet: one per line, 64 hex digits (mode 0600)")
	rotation := flag.Duration("ticket-rotation", 0, "replace the line's own session-ticket key this often (0: 24h)")
	lifetime := flag.Duration("ticket-lifetime", 0, "accept tickets of a key for this long after its creation (0: 168h)")
	statePad := flag.Int("state-pad", 0, "add this many bytes to the state handed to the next generation")
	probation := flag.Duration("probation", 0, "how long a new generation is on probation, this one standing by once drained (0: the library's 10s; negative: none)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "handover-demo: unexpected argument %q (flags only; see -help)\n", flag.Arg(0))
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := graceful.Config{
		Logger:         log,
		PIDFile:        *pidfile,
		UpgradeTimeout: *upgrade,
		PrepareTimeout: *prepare,
		DrainTimeout:   *drain,
		ControlSocket:  *controlPath,
		FDStore:        *fdstore,
		FDStoreConns:   *fdstoreConns,
		MaxDraining:    *maxDraining,
		Probation:      *probation,

		TicketKeyFile:     *ticketKeys,
		TicketKeyRotation: *rotation,
		TicketKeyLifetime: *lifetime,
	}
	if (*certFile == "") != (*keyFile == "") {
		fmt.Fprintln(os.Stderr, "handover-demo: -tls-cert and -tls-key go together")
		os.Exit(2)
	}
	protocols, err := parseProtocols(*protoList, *h2c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "handover-demo: %v\n", err)
		os.Exit(2)
	}
	o := options{listen: *listen, grace: *grace, message: *message, cert: *certFile, key: *keyFile, protocols: protocols, statePad: *statePad, noHandover: *noHandover}
	if err := run(cfg, o); err != nil {
		fmt.Fprintf(os.Stderr, "handover-demo: %v\n", err)
		os.Exit(1)
	}
}

// options are the demo's own flags.
type options struct {
	listen, message, cert, key string
	grace                      time.Duration
	protocols                  *http.Protocols // nil: net/http's default
	statePad                   int
	noHandover                 bool
}

// parseProtocols turns -protocols and -h2c into http.Server.Protocols; nil (net/http's
// default, HTTP/1 and HTTP/2 over TLS) when neither is set.
func parseProtocols(list string, h2c bool) (*http.Protocols, error) {
	if list == "" && !h2c {
		return nil, nil
	}
	if list == "" {
		list = "h1,h2"
	}
	p := new(http.Protocols)
	for _, name := range strings.Split(list, ",") {
		switch strings.TrimSpace(name) {
		case "h1":
			p.SetHTTP1(true)
		case "h2":
			p.SetHTTP2(true)
		case "h2c":
			p.SetUnencryptedHTTP2(true)
		default:
			return nil, fmt.Errorf("-protocols %q: unknown protocol %q (want h1, h2 or h2c)", list, name)
		}
	}
	if h2c {
		p.SetUnencryptedHTTP2(true)
	}
	return p, nil
}

func run(cfg graceful.Config, o options) error {
	log := cfg.Logger
	listen, message := o.listen, o.message
	d := &demo{pid: os.Getpid(), message: message, pad: o.statePad}
	d.id = fmt.Sprintf("%d-%d", d.pid, time.Now().UnixNano())
	// A state of that size, in memory from the start as an application's would be
	// (its pages written, not left to fault in at the first hand-off).
	d.padded = make([]byte, d.pad, d.pad+4<<10)
	for i := 0; i < len(d.padded); i += os.Getpagesize() {
		d.padded[i] = 0
	}
	cfg.SaveState, cfg.LoadState, cfg.StateVersion = d.saveState, d.loadState, stateVersion
	u, err := graceful.New(cfg)
	if err != nil {
		return err
	}
	d.gen = u.Status().Generation
	network, address := "tcp", listen
	if p, ok := strings.CutPrefix(listen, "unix:"); ok {
		network, address = "unix", p
	}
	ln, err := u.Listen("http", network, address)
	if err != nil {
		return fmt.Errorf("listener http: %w", err)
	}
	d.metrics = u.Metrics()
	srv := &graceful.Server{
		Server: http.Server{
			Handler:           d.routes(),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		Name:                "http",
		KeepAliveGrace:      o.grace,
		DisableConnHandover: o.noHandover,
	}
	srv.Protocols = o.protocols
	// Serve calls u.Ready once it serves, and returns once the server has drained
	// (a new generation took over, or SIGTERM).
	if o.cert != "" {
		err = srv.ServeTLS(ln, o.cert, o.key)
	} else {
		err = srv.Serve(ln)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	err = u.Wait()
	log.Info("exiting", "event", "exit", "gen", d.gen, "pid", d.pid, "drain", errString(err))
	return nil
}

func errString(err error) string {
	if err == nil {
		return "complete"
	}
	return err.Error()
}

type demo struct {
	metrics http.Handler // the Upgrader's, in Prometheus text format
	pid     int
	gen     int
	message string
	pad     int

	id        string       // this generation's name in the counts: its PID and start time
	own       atomic.Int64 // requests this generation answered
	inherited atomic.Int64 // the sum of counts
	mu        sync.Mutex
	counts    map[string]int64  // requests the other generations of the line answered, by id
	kv        map[string]string // PUT /kv/KEY
	padded    []byte            // -state-pad zero bytes, then room for the line of JSON
}

// stateVersion tags the demo's state; a build with another refuses it.
var stateVersion = "2"

// demoState is what a generation hands to the next, as a line of JSON; the
// padding follows it.
type demoState struct {
	Served map[string]int64  `json:"served"` // requests answered, by the generation (id) that answered them
	KV     map[string]string `json:"kv,omitempty"`
}

// saveState is Config.SaveState.
func (d *demo) saveState(final bool) ([]byte, error) {
	d.mu.Lock()
	s := demoState{Served: map[string]int64{d.id: d.own.Load()}, KV: maps.Clone(d.kv)}
	for id, n := range d.counts {
		s.Served[id] = n
	}
	d.mu.Unlock()
	line, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	// The padding first, the line after it: the padding is allocated (and its
	// pages touched) once, not at every call; the blob is used before the next
	// call (the Upgrader never runs two SaveStates at once).
	if cap(d.padded) < d.pad+len(line) {
		d.padded = make([]byte, d.pad, d.pad+len(line)+4<<10)
	}
	return append(d.padded[:d.pad], line...), nil
}

// loadState is Config.LoadState: it merges what came (see the package doc), the
// first hand-off and the last alike.
func (d *demo) loadState(version string, data []byte, final bool) error {
	if version != stateVersion {
		return fmt.Errorf("state version %q: this build reads version %q", version, stateVersion)
	}
	// The line of JSON follows the padding (zero bytes, which JSON text never has).
	line := data[bytes.LastIndexByte(data, 0)+1:]
	var s demoState
	if err := json.Unmarshal(line, &s); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.counts == nil {
		d.counts = map[string]int64{}
	}
	for id, n := range s.Served {
		if id != d.id && n > d.counts[id] {
			d.inherited.Add(n - d.counts[id])
			d.counts[id] = n
		}
	}
	if d.kv == nil {
		d.kv = map[string]string{}
	}
	for k, v := range s.KV {
		if _, ok := d.kv[k]; !ok {
			d.kv[k] = v
		}
	}
	return nil
}

// count wraps the routes: every request counts once.
func (d *demo) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.own.Add(1)
		h.ServeHTTP(w, r)
	})
}

func (d *demo) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.hello)
	mux.HandleFunc("GET /slow", d.slow)
	mux.HandleFunc("GET /stream", d.stream)
	mux.HandleFunc("GET /ws", d.ws)
	mux.HandleFunc("GET /events", d.events)
	mux.Handle("GET /metrics", d.metrics)
	mux.HandleFunc("PUT /kv/{key}", d.put)
	mux.HandleFunc("GET /kv/{key}", d.get)
	mux.HandleFunc("GET /kv", d.keys)
	return d.count(mux)
}

func (d *demo) line() string {
	return fmt.Sprintf("pid=%d gen=%d served=%d message=%s", d.pid, d.gen, d.own.Load()+d.inherited.Load(), d.message)
}

// put stores a value: PUT /kv/KEY.
func (d *demo) put(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	v, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<10))
	if err != nil || len(key) > 128 {
		http.Error(w, "a key of at most 128 bytes, a value of at most 4 KiB", http.StatusBadRequest)
		return
	}
	d.mu.Lock()
	if d.kv == nil {
		d.kv = map[string]string{}
	}
	d.kv[key] = string(v)
	d.mu.Unlock()
	w.Header().Set("X-Pid", strconv.Itoa(d.pid))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "stored %s\n", key)
}

// get answers a value: GET /kv/KEY.
func (d *demo) get(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	v, ok := d.kv[r.PathValue("key")]
	d.mu.Unlock()
	w.Header().Set("X-Pid", strconv.Itoa(d.pid))
	if !ok {
		http.NotFound(w, r)
		return
	}
	io.WriteString(w, v)
}

// keys lists the keys, one a line: GET /kv.
func (d *demo) keys(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	keys := slices.Sorted(maps.Keys(d.kv))
	d.mu.Unlock()
	w.Header().Set("X-Pid", strconv.Itoa(d.pid))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, k := range keys {
		fmt.Fprintln(w, k)
	}
}

func (d *demo) hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Pid", strconv.Itoa(d.pid))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, d.line())
}

func intParam(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > max {
		return 0, fmt.Errorf("%s=%q: want a whole number from 0 to %d", name, v, max)
	}
	return n, nil
}

func (d *demo) slow(w http.ResponseWriter, r *http.Request) {
	ms, err := intParam(r, "ms", 1000, 600000)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	d.hello(w, r)
}

func (d *demo) stream(w http.ResponseWriter, r *http.Request) {
	n, err := intParam(r, "n", 10, 3600)
	if err == nil {
		var iv int
		iv, err = intParam(r, "interval", 1000, 60000)
		if err == nil {
			d.streamLines(w, r, n, time.Duration(iv)*time.Millisecond)
			return
		}
	}
	http.Error(w, err.Error(), http.StatusBadRequest)
}

func (d *demo) streamLines(w http.ResponseWriter, r *http.Request, n int, every time.Duration) {
	w.Header().Set("X-Pid", strconv.Itoa(d.pid))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rc := http.NewResponseController(w)
	t := time.NewTicker(every)
	defer t.Stop()
	for i := 1; i <= n; i++ {
		fmt.Fprintf(w, "%d/%d %s\n", i, n, d.line())
		rc.Flush()
		if i == n {
			return
		}
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
}

// events streams server-sent events. When the server drains it sends a last
// "bye" event and ends the response cleanly, so that an EventSource client
// reconnects (to the new generation) instead of seeing a broken stream.
func (d *demo) events(w http.ResponseWriter, r *http.Request) {
	n, err := intParam(r, "n", 60, 3600)
	iv := 0
	if err == nil {
		iv, err = intParam(r, "interval", 1000, 60000)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Pid", strconv.Itoa(d.pid))
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	t := time.NewTicker(time.Duration(iv) * time.Millisecond)
	defer t.Stop()
	draining := graceful.Draining(r.Context())
	for i := 1; i <= n; i++ {
		fmt.Fprintf(w, "id: %d\ndata: %s\n\n", i, d.line())
		rc.Flush()
		if i == n {
			return
		}
		select {
		case <-t.C:
		case <-draining:
			fmt.Fprintf(w, "event: bye\nretry: 100\ndata: %s is draining; reconnect\n\n", d.line())
			return
		case <-r.Context().Done():
			return
		}
	}
}

// ws hijacks the connection and echoes lines back, websocket style: a long-lived
// connection net/http no longer tracks. When the server drains it says "bye" and
// closes, as an application should; the drain deadline closes it otherwise.
func (d *demo) ws(w http.ResponseWriter, r *http.Request) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: line-echo\r\nConnection: Upgrade\r\nX-Pid: %d\r\n\r\n", d.pid)
	fmt.Fprintf(brw, "hello %s\n", d.line())
	brw.Flush()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(brw)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	draining := graceful.Draining(r.Context())
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return
			}
			fmt.Fprintf(brw, "echo %s\n", l)
			brw.Flush()
		case <-draining:
			fmt.Fprintf(brw, "bye %s\n", d.line())
			brw.Flush()
			conn.Close()
			for range lines {
			}
			return
		}
	}
}
