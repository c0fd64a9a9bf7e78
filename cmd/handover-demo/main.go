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
//	                        try the size limit, graceful.MaxStateSize)
//
//	GET /            200, header X-Pid, body "pid=P gen=G served=N message=M"
//	GET /slow?ms=N   the same after N milliseconds
//	GET /stream?n=N  N lines, one a second (interval=MS to change the pace)
//	GET /ws          hijacked, websocket-like line echo; says "bye" when draining
//	GET /events?n=N  server-sent events, one a second (interval=MS); when the server
//	                 drains it sends "event: bye" and ends the stream cleanly
//	GET /metrics     the Upgrader's counters, Prometheus text format
//
// served=N counts the requests the line of generations has served: each generation
// hands its count to the next (Config.SaveState and LoadState: when an upgrade
// starts, and again once the old generation stops accepting), and, with -fdstore
// under systemd, through systemd's fd store across `systemctl restart`. Requests an
// old generation answers after that last hand-off (in its drain) are not counted.
// The state is tagged with the build's state version ("1"; a build made with
// -ldflags "-X main.stateVersion=V" refuses the state of another version and starts
// its count at zero).
//
// Under socket activation it serves on the passed socket named "http", or on the only
// stream socket passed when none is named; if what was passed cannot serve, it exits
// with status 1 and a message naming the descriptor.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
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
		DrainTimeout:   *drain,
		ControlSocket:  *controlPath,
		FDStore:        *fdstore,
		FDStoreConns:   *fdstoreConns,
		MaxDraining:    *maxDraining,

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

	served atomic.Int64 // requests the line served
	mu     sync.Mutex
	loaded int64 // the count the previous generation handed over first
}

// stateVersion tags the demo's state; a build with another refuses it.
var stateVersion = "1"

// demoState is what a generation hands to the next.
type demoState struct {
	Served int64  `json:"served"`
	Pad    string `json:"pad,omitempty"`
}

// saveState is Config.SaveState.
func (d *demo) saveState(final bool) ([]byte, error) {
	return json.Marshal(demoState{Served: d.served.Load(), Pad: strings.Repeat("x", d.pad)})
}

// loadState is Config.LoadState. The first hand-off sets the count; the final one
// adds what the old generation served since.
func (d *demo) loadState(version string, data []byte, final bool) error {
	if version != stateVersion {
		return fmt.Errorf("state version %q: this build reads version %q", version, stateVersion)
	}
	var s demoState
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if delta := s.Served - d.loaded; delta > 0 {
		d.served.Add(delta)
	}
	d.loaded = s.Served
	return nil
}

// count wraps the routes: every request counts once.
func (d *demo) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.served.Add(1)
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
	return d.count(mux)
}

func (d *demo) line() string {
	return fmt.Sprintf("pid=%d gen=%d served=%d message=%s", d.pid, d.gen, d.served.Load(), d.message)
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
