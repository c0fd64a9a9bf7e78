package graceful

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/pidfile"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// This file holds the whole upgrade state machine of one process. One goroutine
// (run) owns the state; everything else reaches it as an event on u.events: API
// calls, signals, what the new generation says or does, timers, ends of drains.
// Nothing on that goroutine waits: a wait (for a process to start, a message to be
// sent, systemd to confirm, a drain to end) runs beside it and comes back as an event.
//
//	                 Ready                 upgrade¹              "ready" from the child
//	  starting ─────────────► serving ────────────► upgrading ─────────────────────► handing-over
//	     │                    ▲  ▲ │                  │  (spawn, wait for "ready"          │ (MAINPID= READY=1,
//	     │                    │  │ │                  │   up to UpgradeTimeout)            │  BARRIER=1, "main")
//	     │   child failed²    │  │ │   ◄──────────────┘                                    │
//	     │   ─────────────────┘  │ │   ◄───────────────────────────────────────────────────┤ confirmation failed
//	     │                       │ │                                                       ▼
//	     │      successor died,  │ │                 stop³                              draining ──┐
//	     │      resumable⁴ ──────┘ └──────────────────────► stopping                        │      │ successor died, not
//	     │                                                     │                            │      │ resumable⁴: start the
//	     └─────────── stop³ ────────────────────────────────►  │                            │      │ last good build (a
//	                                                           ▼                            ▼      │ replacement, at most 3)
//	                                                         exited ◄──── every drain ended ┘ ◄────┘
//
//	¹ SIGUSR2, Upgrade, or `handover reload` on the control socket. Refused (logged,
//	  returned) unless serving; refused as PID 1 of a PID namespace without a service
//	  manager, under a `handover run` master, and on systems other than Linux.
//	² The new generation exited, reported an error, closed the channel, sent
//	  something unexpected, was not ready within UpgradeTimeout, could not be
//	  started, or the handover could not be confirmed: it is killed (and reaped when
//	  it is our child), systemd hears READY=1 again, and whoever asked hears why.
//	³ SIGTERM, SIGINT or Stop. An upgrade in progress is abandoned. In draining, a
//	  stop makes the drain final (listeners closed; no resuming). A second stop
//	  signal exits at once.
//	⁴ No service manager, and the successor exited without saying "done" (it had
//	  not handed over in turn or stopped). Resumable: every listener is served by a
//	  Server or a Drainer of this Upgrader, none was closed, no datagram socket is
//	  held, and the application never took Exit; then the drains are taken back and
//	  this process is the current generation again. Otherwise the last good build
//	  (this process's own executable) is started on the sockets kept open.
//
// An upgrade: resolve the executable; start it with the process's sockets at fd 3...,
// LISTEN_FDS/LISTEN_FDNAMES, the marker and one end of a handover channel (as a
// sibling under a service manager, so that the service manager is its parent); wait
// for "ready"; tell the service manager MAINPID=child READY=1 and wait for BARRIER=1;
// tell the child "main"; only then stop accepting and drain. Without a service
// manager the drain stops accepting but keeps the sockets, and the successor is
// watched until the drain ends.

// Timeouts of the state machine.
const (
	defaultUpgradeTimeout = 30 * time.Second
	defaultDrainTimeout   = 30 * time.Second
	// barrierTimeout bounds the wait for systemd to confirm MAINPID= (BARRIER=1).
	barrierTimeout = 5 * time.Second
	// sendTimeout bounds a write on the handover channel.
	sendTimeout = 5 * time.Second
	// lastWordsWait is how long a dead child's last message ("error ...") may still
	// be on its way after its exit (or its channel's close) is seen.
	lastWordsWait = 200 * time.Millisecond
	// killWait bounds the wait for a killed sibling (systemd's child) to die before
	// this process exits: systemd would otherwise find it in the unit and kill it.
	killWait = time.Second
	// statusEvery is how often systemd's STATUS= is refreshed.
	statusEvery = 2 * time.Second
	// maxReplacements bounds how many last-good-build replacements a draining
	// process starts for successors that died.
	maxReplacements = 3
	// initTimeout bounds how long a new generation waits for its parent's initial
	// batch of messages.
	initTimeout = 5 * time.Second
	// defaultMaxDraining is Config.MaxDraining's default.
	defaultMaxDraining = 3
)

// ErrUpgradeInProgress is returned by Upgrade when an upgrade is already under way.
var ErrUpgradeInProgress = errors.New("graceful: an upgrade is already in progress")

var (
	errFinishNow = errors.New("graceful: drain ended early: too many generations drain")
	errNotReady  = errors.New("graceful: not ready yet: call Ready (Serve does) before upgrading")
	errStopping  = errors.New("graceful: the process is stopping")
	errAbandoned = errors.New("upgrade abandoned: the process is stopping")
)

// Config configures the process's Upgrader. The zero Config is usable.
type Config struct {
	// Logger receives the Upgrader's logs; every line carries "gen", "pid" and
	// "event" (a stable name: start, ready, upgrade_start, handed_over, drain_start,
	// drained, ...). nil means slog.Default().
	Logger *slog.Logger
	// PIDFile, if set, is written (atomically, mode 0644, never through a symlink)
	// with the PID of the current generation once it is ready, and removed when the
	// current generation stops.
	PIDFile string
	// UpgradeTimeout bounds how long a new generation may take to become ready.
	// Zero means 30 seconds.
	UpgradeTimeout time.Duration
	// DrainTimeout is the drain deadline, after which connections still open are
	// force-closed (a Server may set its own). Zero means 30 seconds.
	DrainTimeout time.Duration
	// Executable is the program an upgrade starts. It is resolved at upgrade time,
	// so replacing the file, or retargeting a symlink to it, upgrades to the new
	// build. Empty means the path this process was started as (argv[0], made
	// absolute but with symlinks left unresolved).
	Executable string
	// Args are the new generation's arguments (without argv[0]); nil means this
	// process's own.
	Args []string
	// ControlSocket is the path of a unix socket on which `handover reload` and
	// `handover status` reach the service. It is used only when no socket named
	// "handover-control" was passed (from a socket unit, FileDescriptorName=, or the
	// previous generation); then the first generation binds it with mode 0600,
	// replacing a stale socket file left by a killed generation. Only peers running
	// as the service's user or root are answered. Empty means no control socket
	// unless one is passed. Linux only: elsewhere it is ignored (logged).
	ControlSocket string
	// FDStore, under systemd, hands the process's sockets to systemd's file
	// descriptor store once it is ready (needs FileDescriptorStoreMax= in the unit),
	// so that sockets the service bound itself survive `systemctl restart` and
	// crashes: systemd passes them back through LISTEN_FDS. The TLS session-ticket
	// keys go there too (FDNAME=handover-tls-keys, see KeepTLSSessions), and, on a
	// clean stop, the application's state (FDNAME=handover-state, see SaveState),
	// which the next start takes out. (Under a `handover run` master the keys
	// always go to the master's fd store, whatever FDStore says.)
	FDStore bool
	// MaxDraining bounds how many generations may drain at once: when an upgrade
	// would make one more than that, the oldest draining generation stops waiting
	// for its connections and force-closes them (as at its deadline). A deploy is
	// not refused because of a long-lived connection (tableflip refuses upgrades
	// while a generation drains: its issue #52); those connections would be cut at
	// their deadline anyway, the oldest first. Zero means 3.
	MaxDraining int

	// TicketKeyFile names a file of TLS session-ticket keys shared by a fleet (see
	// KeepTLSSessions): one key per line, 64 hex digits (32 bytes, e.g. `openssl rand
	// -hex 32`), the first line's key making new tickets, every key accepted; blank
	// lines and lines starting with # are skipped. It must be a regular file that
	// others cannot access (mode 0600 or 0640): New fails otherwise, as it does when
	// the file is missing or malformed. Every generation reads it as it starts, so an
	// upgrade installs a rotated file; the keys are not rotated otherwise. Empty
	// means keys of the line's own: made by the first generation, rotated, and handed
	// from generation to generation.
	TicketKeyFile string
	// TicketKeyRotation is how long a session-ticket key of the line's own makes new
	// tickets before a new one replaces it. Zero means 24 hours (crypto/tls's own).
	TicketKeyRotation time.Duration
	// TicketKeyLifetime is how long a key of the line's own is kept, from its
	// creation, to accept tickets made with it; it must exceed TicketKeyRotation.
	// Zero means 7 days (crypto/tls's own).
	TicketKeyLifetime time.Duration

	// SaveState, if set, returns the application's state for the next generation:
	// an opaque blob of at most MaxStateSize bytes, tagged with StateVersion. It is
	// called beside the Upgrader's loop (never on a request's goroutine), with
	// final false when an upgrade starts (the blob reaches the new generation
	// before it is ready), and with final true once this process has handed over
	// and stopped accepting (a second, last blob, for state that changed while
	// both generations ran), and, with FDStore under systemd, when it stops (the
	// blob waits in systemd's fd store for the next start). An error, or a blob
	// over MaxStateSize, is logged (event=state_failed) and the upgrade goes on
	// without state. See LoadState for the order.
	SaveState func(final bool) ([]byte, error)
	// LoadState, if set, receives the state the previous generation saved, with
	// the version it was tagged with. The order, in the new generation:
	//
	//  1. In New, before it returns (so before Ready): the blob the old generation
	//     saved when the upgrade started (final false), or, after `systemctl
	//     restart` with FDStore, the blob the stopped process left in systemd's
	//     fd store (final true: nothing follows). Requests are not served yet.
	//  2. After Ready, once the old generation has stopped accepting: its last
	//     blob (final true), in a goroutine of its own, concurrently with the
	//     requests this process already serves.
	//
	// LoadState decides whether it understands version: an error refuses the
	// blob, which is logged (event=state_refused) and ignored; the process starts
	// cold and the upgrade goes on. No call at all means no state came (the first
	// generation, a cold start, or the old generation could not save it).
	LoadState func(version string, data []byte, final bool) error
	// StateVersion tags the blobs SaveState returns (at most 255 printable
	// characters), for a later build's LoadState to recognize the format.
	StateVersion string

	start    startFunc     // seam for tests; nil means startProcess
	killWait time.Duration // seam for tests; 0 means killWait
}

// state is where a process is in its life; see the diagram above.
type state int

const (
	starting state = iota
	serving
	upgrading
	handingOver
	draining
	stopping
	exited
)

// String returns the state's name as Status shows it.
func (s state) String() string {
	return [...]string{"starting", "serving", "upgrading", "upgrading", "draining", "stopping", "exited"}[s]
}

// Upgrader runs one process's part in a line of generations: it hands out listeners
// (inherited or bound), tells its parent or the service manager when the process is
// ready, upgrades on SIGUSR2, Upgrade or `handover reload`, drains every Server and
// Drainer of the process when a new generation has taken over or the process is
// asked to stop (SIGTERM, SIGINT, Stop), and says through Wait when the process may
// exit.
//
// A process has one Upgrader: New makes it, and a Server or ListenAndServe uses it
// (or makes one with the zero Config if New was not called).
type Upgrader struct {
	cfg      Config
	log      *slog.Logger
	set      *fds.Set
	exe      string
	gen      int
	notifier *sdnotify.Notifier
	watchdog *sdnotify.Watchdog
	start    startFunc
	sigs     chan os.Signal

	events chan any      // everything run reacts to (unbuffered: see call)
	done   chan struct{} // closed when every drain has ended (Wait)

	mu       sync.Mutex
	exit     chan struct{} // closed when draining starts; see Exit
	exitUsed bool          // the application took Exit
	waitErr  error         // what Wait returns

	readyMu  sync.Mutex // held by Ready
	readyErr error
	readied  bool
	parent   *handoff.Channel // to the parent that started us, until Ready; guarded by mu
	pipeSig  chan os.Signal   // SIGPIPE, while fd 2 is the parent's pipe
	ctl      net.Listener     // the control socket, served once ready

	// Owned by the run goroutine.
	st       state
	next     *nextGen // the new generation being started, or the successor watched while draining
	upstream *handoff.Channel
	targets  []*target // every Server and Drainer, drained together
	drainErr error
	lastErr  string
	nextPID  int   // the generation we handed over to
	hard     bool  // the drain is final: listeners closed, no resuming
	terms    int   // stop signals received
	dying    []int // killed children not yet seen dead (siblings under systemd)
	spawning int   // new generations being started beside the loop
	sending  int   // messages on their way to the previous generation ("done", "current")
	reserve  *fds.Child
	replaced int
	main     bool // the process systemd supervises (its notifications are accepted)
	lastStat string
	wdStop   chan struct{}
	deferred bool // a SIGUSR2 came before this new generation was ready
	history  history
	above    int  // older generations still draining, as the upstream said
	farewell bool // the drained/upstream messages to the successor are sent
	drain    drainStats
	drainAt  time.Time

	ext extra // TLS session-ticket keys and application state (extra.go)
}

// nextGen is a new generation: being started, then (without a service manager) the
// successor this process watches while it drains.
type nextGen struct {
	trigger string
	started time.Time
	waiters []func(upgradeResult)
	child   child
	ch      *handoff.Channel
	out     *proc.Tail // its standard error, until the handover
	timer   *time.Timer
	said    string // its last "error" message
	ready   int    // PID it reported ready with
	handed  bool   // it took over
	retired bool   // it said "done" (and has not said "current" since)
	exited  bool
	reading bool // its channel reader still runs
	outOpen bool // its stderr pipe is not at EOF yet
	// failAfter is set when it died before it was ready: the failure is reported once
	// its last words are read (or lastWordsWait passed).
	failAfter   string
	replacement bool // the last good build, started for a successor that died
	released    bool // supervised by the service manager: its exit is not ours to see
	settled     bool // it exited after retiring; its channel may live on (see onSuccessorExit)
}

type upgradeResult struct {
	pid   int
	err   error
	moved int // set when this process has handed over to that PID
}

// Events. Each is posted to u.events by a goroutine beside run.
type (
	callEvent    struct{ f func() }
	spawnedEvent struct {
		n     *nextGen
		child child
		ch    *handoff.Channel
		out   *proc.Tail
		err   error
	}
	childMsgEvent struct {
		n   *nextGen
		m   handoff.Message
		err error // the channel ended: io.EOF or an error
	}
	childExitEvent    struct{ n *nextGen }
	upgradeTimeoutEvt struct{ n *nextGen }
	lastWordsEvent    struct{ n *nextGen }
	stderrEndedEvent  struct{ n *nextGen }
	handoverEvent     struct {
		n            *nextGen
		err, barrier error
	}
	upstreamEndedEvent struct{ ch *handoff.Channel }
	upstreamMsgEvent   struct {
		ch *handoff.Channel
		m  handoff.Message
	}
	drainEndedEvent struct {
		t     *target
		epoch int
		err   error
		stats drainStats
	}
	deadChildEvent struct {
		pid  int
		then func() // run on the loop once the child is seen dead, or nil
	}
	tickEvent             struct{}
	sentEvent             struct{}
	successorSettledEvent struct{ n *nextGen }
)

var (
	singletonMu sync.Mutex
	singleton   *Upgrader
)

// New makes the process's Upgrader, reading what was inherited (systemd's
// LISTEN_FDS, a `handover run` master's, or the previous generation's sockets) and
// installing handlers for SIGUSR2 (upgrade), SIGTERM and SIGINT (stop; a second one
// exits at once) and SIGHUP (logged and ignored, so that a stray HUP does not kill
// the server). Servers, ListenAndServe and Drainers of the process use it. It fails
// if the inherited environment is invalid, if the PID file cannot be written, or if
// the process already has an Upgrader.
//
// A program calls New before anything else of this package when it wants a
// Config: a PID file, a control socket, other timeouts. Then it takes its
// listeners (Listen), serves them, calls Ready (Serve does) and returns from main
// after Wait.
func New(cfg Config) (*Upgrader, error) {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		return nil, errors.New("graceful: this process already has an Upgrader (New was called, or a Server made one): call New once, first")
	}
	return newSingleton(cfg)
}

// processUpgrader returns the process's Upgrader, or nil.
func processUpgrader() *Upgrader {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	return singleton
}

// defaultUpgrader returns the process's Upgrader, making it with a zero Config on
// first use.
func defaultUpgrader() (*Upgrader, error) {
	singletonMu.Lock()
	defer singletonMu.Unlock()
	if singleton != nil {
		return singleton, nil
	}
	return newSingleton(Config{})
}

// newSingleton makes the process's Upgrader; singletonMu is held.
func newSingleton(cfg Config) (*Upgrader, error) {
	u, err := newUpgrader(cfg)
	if err != nil {
		if u != nil && u.parent != nil {
			u.parent.Send(handoff.Message{Verb: handoff.Error, Text: err.Error()}, time.Second)
			u.parent.Close()
		}
		return nil, err
	}
	singleton = u
	return u, nil
}

func newUpgrader(cfg Config) (*Upgrader, error) {
	u := &Upgrader{
		cfg:    cfg,
		start:  cfg.start,
		sigs:   make(chan os.Signal, 32),
		events: make(chan any),
		done:   make(chan struct{}),
		exit:   make(chan struct{}),
		gen:    1,
	}
	if u.start == nil {
		u.start = startProcess
	}
	if u.cfg.killWait <= 0 {
		u.cfg.killWait = killWait
	}
	if u.cfg.UpgradeTimeout <= 0 {
		u.cfg.UpgradeTimeout = defaultUpgradeTimeout
	}
	if u.cfg.DrainTimeout <= 0 {
		u.cfg.DrainTimeout = defaultDrainTimeout
	}
	if u.cfg.MaxDraining <= 0 {
		u.cfg.MaxDraining = defaultMaxDraining
	}
	u.history.Outcomes = map[string]int{}
	base := cfg.Logger
	if base == nil {
		base = slog.Default()
	}
	set, err := fds.Inherit()
	u.set = set
	u.gen = set.Generation()
	if m := set.Marker(); m != nil {
		if f := set.Channel(); f != nil {
			u.parent, _ = handoff.NewChannel(f)
		}
	}
	u.log = base.With("gen", u.gen, "pid", os.Getpid())
	u.main = u.parent == nil
	u.holdStderr()
	if u.parent != nil {
		if err := u.readInit(u.parent); err != nil {
			return u, err
		}
	}
	if err != nil {
		return u, fmt.Errorf("inherited sockets: %w", err)
	}
	if why := set.Ignored(); why != "" {
		u.log.Warn("not adopting inherited descriptors", "event", "inherit_ignored", "reason", why)
	}
	if u.exe = cfg.Executable; u.exe == "" {
		if u.exe, err = proc.Find(os.Args[0]); err != nil {
			return u, err
		}
	}
	if u.cfg.Args == nil {
		u.cfg.Args = os.Args[1:]
	}
	if cfg.PIDFile != "" {
		if err := pidfile.Check(cfg.PIDFile); err != nil {
			return u, err
		}
	}
	if u.notifier, err = sdnotify.FromEnv(); err != nil {
		return u, err
	}
	ours := []int{os.Getpid()}
	if m := set.Marker(); m != nil {
		ours = append(ours, m.PID)
	}
	u.watchdog, err = sdnotify.WatchdogFromEnv(ours...)
	if err != nil {
		return u, err
	}
	if err := u.newExtra(); err != nil {
		return u, err
	}
	if u.ctl, err = u.openControl(); err != nil {
		return u, err
	}
	notifySignals(u.sigs)
	from := "nothing inherited"
	if set.Source() != fds.Bound {
		from = fmt.Sprintf("%d descriptors from %s", len(set.Files()), set.Source())
	}
	u.log.Info("starting", "event", "start", "executable", u.exe, "inherited", from, "notify", u.notifier != nil, "master", set.Master())
	go u.run()
	return u, nil
}

// Listen returns a listener by name: inherited from systemd, a `handover run` master
// or the previous generation if one matches (by name, else by network and address),
// else bound to network and address (see package activation). The listener is
// passed on to the next generation. Take every listener before serving any of them:
// once the process is ready (Ready, which Serve calls), inherited sockets nobody
// claimed are closed.
func (u *Upgrader) Listen(name, network, address string) (net.Listener, error) {
	ln, err := u.set.Listen(name, network, address)
	if err != nil {
		u.reportStartError(err)
	}
	return ln, err
}

// ListenPacket is Listen for datagram sockets ("udp", "udp4", "udp6", "unixgram").
// A process that holds one cannot take back a drain (see Upgrader): it must stop
// reading from it itself when Exit is closed.
func (u *Upgrader) ListenPacket(name, network, address string) (net.PacketConn, error) {
	pc, err := u.set.ListenPacket(name, network, address)
	if err != nil {
		u.reportStartError(err)
	}
	return pc, err
}

// reportStartError tells the parent generation, if any, why this one cannot start.
func (u *Upgrader) reportStartError(err error) {
	u.mu.Lock()
	p := u.parent
	u.mu.Unlock()
	if p != nil {
		p.Send(handoff.Message{Verb: handoff.Error, Text: err.Error()}, time.Second)
	}
}

// Ready says the process is serving on its listeners; Serve calls it. Inherited
// descriptors nobody claimed are closed. A first generation writes the PID file and
// tells the service manager READY=1. A later generation tells its parent, which
// tells the service manager that this process is now the main one and stops
// accepting; then it writes the PID file. Ready returns an error if the parent
// abandoned the upgrade (it is about to kill this process). Later calls return what
// the first returned.
func (u *Upgrader) Ready() error {
	u.readyMu.Lock()
	defer u.readyMu.Unlock()
	if u.readied {
		return u.readyErr
	}
	u.readied = true
	for _, f := range u.set.CloseUnclaimed() {
		u.log.Warn("closing an inherited descriptor nothing claimed", "event", "fd_unclaimed", "fd", f.Fd, "name", f.Name, "from", f.Source.String(), "kind", f.Kind.String())
	}
	u.mu.Lock()
	p := u.parent
	u.parent = nil
	u.mu.Unlock()
	var upstream *handoff.Channel
	var said []handoff.Message
	if p != nil {
		var err error
		upstream, said, err = u.confirmWithParent(p)
		u.restoreStderr()
		if err != nil {
			closeMessages(said)
			u.readyErr = err
			return err
		}
	}
	child := p != nil
	u.call(func() {
		u.becomeReady(upstream, child)
		for _, m := range said {
			u.onUpstreamMessage(m)
		}
	})
	return nil
}

// confirmWithParent tells the parent this process is ready and waits for its answer
// (on the caller's goroutine). It returns the channel to keep as upstream, or nil,
// and what else the parent said meanwhile (the history with this upgrade in it),
// for the loop.
func (u *Upgrader) confirmWithParent(p *handoff.Channel) (*handoff.Channel, []handoff.Message, error) {
	if err := p.Send(handoff.Message{Verb: handoff.Ready, PID: os.Getpid()}, sendTimeout); err != nil {
		p.Close()
		u.log.Warn("could not tell the parent generation we are ready; carrying on as the current generation", "event", "parent_lost", "err", err)
		return nil, nil, nil
	}
	var said []handoff.Message
	for {
		m, err := p.Receive()
		switch {
		case err == nil && m.Verb == handoff.Main:
			return p, said, nil
		case err == nil && m.Verb == handoff.Abort:
			p.Close()
			return nil, said, fmt.Errorf("graceful: the parent generation abandoned the upgrade: %s", m.Text)
		case err != nil:
			p.Close()
			u.log.Warn("the parent generation went away before confirming the handover; carrying on as the current generation", "event", "parent_lost", "err", err)
			return nil, said, nil
		case m.Verb == handoff.History:
			// Replaces the initial batch's: this upgrade is in it. Handled by
			// onUpstreamMessage on the loop.
			said = append(said, m)
		default:
			said = append(said, m)
		}
	}
}

// becomeReady runs on the loop once Ready has done its part. child is true for a
// generation started by a parent.
func (u *Upgrader) becomeReady(upstream *handoff.Channel, child bool) {
	if u.st != starting {
		if upstream != nil {
			upstream.Close()
		}
		return
	}
	u.st = serving
	u.main = true
	if upstream != nil {
		u.listenUpstream(upstream)
	}
	u.writePIDFile()
	if !child {
		u.notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	}
	u.startWatchdog()
	u.storeFDs()
	u.notifyStatus()
	if u.ctl != nil {
		// Answered from now on: until this process is ready, the previous generation
		// answers (both accept on the one socket).
		u.serveControl(u.ctl)
	}
	u.onReadyExtra()
	u.log.Info("ready", "event", "ready", "listeners", describeHeld(u.set.Held()))
	if u.deferred {
		u.deferred = false
		u.beginUpgrade("SIGUSR2", nil)
	}
}

// Exit returns a channel that is closed when the process stops accepting and
// drains: a new generation has taken over, or the process was asked to stop. A
// process whose listeners are all served by Servers and Drainers of the Upgrader
// does not need it (they drain by themselves; Wait says when they are done). A
// process that takes Exit, to stop a server of its own kind (a grpc.Server, a
// datagram loop), cannot take back a drain: if the new generation dies while this
// one drains, this process starts its own build again instead (see Upgrader).
func (u *Upgrader) Exit() <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.exitUsed = true
	return u.exit
}

// Wait blocks until the process may exit: it has handed over to a new generation or
// was asked to stop, and every Server and Drainer of the process has drained (each
// within its deadline). It returns ErrDrainDeadline if some connections had to be
// force-closed. main returns after Wait, so that no connection is cut by the
// process's end.
func (u *Upgrader) Wait() error {
	<-u.done
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.waitErr
}

// Upgrade starts a new generation and waits until it has taken over (this process
// then drains) or failed (this process goes on serving; a failed new process has
// been killed and is dead by the time the failure is reported). It returns the new
// process's PID. ctx bounds only the wait: an upgrade that is under way continues.
// Upgrades are not supported on systems other than Linux: the error wraps
// errors.ErrUnsupported.
func (u *Upgrader) Upgrade(ctx context.Context) (int, error) {
	res := make(chan upgradeResult, 1)
	u.call(func() { u.beginUpgrade("API", func(r upgradeResult) { res <- r }) })
	select {
	case r := <-res:
		return r.pid, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Stop makes the process stop as on SIGTERM: it stops accepting and drains, and
// Wait returns once the drain is over. Under systemd it sends STOPPING=1. An upgrade
// in progress is abandoned.
func (u *Upgrader) Stop() {
	u.call(func() { u.stop("Stop called") })
}

// Status returns the process's status.
func (u *Upgrader) Status() Status {
	var s Status
	u.call(func() { s = u.status() })
	return s
}

func (u *Upgrader) status() Status {
	s := Status{PID: os.Getpid(), Generation: u.gen, State: u.st.String(), LastError: u.lastErr,
		Executable: u.exe, Systemd: u.notifier != nil, Listeners: u.set.Sockets()}
	for _, t := range u.targets {
		if !t.internal {
			s.Connections.Add(t.counts())
		}
	}
	if u.next != nil && !u.next.handed && u.next.child != nil {
		s.Upgrading = u.next.child.Pid()
	}
	s.OlderDraining = u.above
	s.Upgrades = u.history.shown()
	return s
}

// post hands an event to the loop. The loop runs as long as the process: after
// Wait has returned it still handles signals and watches the successor, for a
// process that goes on draining servers of its own (see Exit).
func (u *Upgrader) post(ev any) { u.events <- ev }

// call runs f on the loop and waits for it.
func (u *Upgrader) call(f func()) {
	ran := make(chan struct{})
	u.events <- callEvent{func() { f(); close(ran) }}
	<-ran
}

func (u *Upgrader) run() {
	if u.notifier != nil {
		go func() {
			t := time.NewTicker(statusEvery)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					u.post(tickEvent{})
				case <-u.done:
					return
				}
			}
		}()
	}
	for {
		var ev any
		select {
		case ev = <-u.events:
		case sig := <-u.sigs:
			u.onSignal(sig)
			continue
		}
		switch ev := ev.(type) {
		case callEvent:
			ev.f()
		case spawnedEvent:
			u.spawning--
			if ev.n == u.next {
				u.onSpawned(ev)
			} else if ev.err == nil {
				// Abandoned (by a stop) while it was being started.
				go func() {
					ev.ch.Send(handoff.Message{Verb: handoff.Abort, Text: errAbandoned.Error()}, lastWordsWait)
					ev.ch.Close()
				}()
				ev.child.Kill()
				u.awaitDeath(ev.child, nil)
			}
		case childMsgEvent:
			if ev.n == u.next {
				u.onChildMessage(ev)
			} else if ev.err == nil {
				closeFiles(ev.m.Files)
			}
		case childExitEvent:
			if ev.n == u.next {
				u.onChildExit(ev.n)
			}
		case lastWordsEvent:
			if ev.n == u.next && ev.n.failAfter != "" {
				u.failUpgrade("exited", errors.New(ev.n.failAfter))
			}
		case stderrEndedEvent:
			ev.n.outOpen = false
			if ev.n == u.next && ev.n.failAfter != "" && !ev.n.reading {
				u.failUpgrade("exited", errors.New(ev.n.failAfter))
			}
		case upgradeTimeoutEvt:
			if ev.n == u.next && !ev.n.handed {
				u.failUpgrade("timeout", fmt.Errorf("the new generation (PID %d) was not ready within %s", ev.n.child.Pid(), u.cfg.UpgradeTimeout))
			}
		case handoverEvent:
			if ev.n == u.next {
				u.onHandover(ev)
			}
		case upstreamEndedEvent:
			if ev.ch == u.upstream {
				u.upstream.Close()
				u.upstream = nil
				u.setAbove(0)
			}
		case upstreamMsgEvent:
			if ev.ch == u.upstream {
				u.onUpstreamMessage(ev.m)
			} else {
				closeFiles(ev.m.Files)
			}
		case drainEndedEvent:
			if ev.epoch == ev.t.epoch {
				u.onDrainEnded(ev.t, ev.err, ev.stats)
			}
		case deadChildEvent:
			if ev.then != nil {
				ev.then()
			}
			u.dying = removeInt(u.dying, ev.pid)
		case tickEvent:
			u.notifyStatus()
		case sentEvent:
			u.sending--
		case successorSettledEvent:
			if ev.n == u.next && ev.n.handed && ev.n.exited {
				u.onSuccessorExit(ev.n)
			}
		}
		if u.st != exited && u.finished() {
			if !u.farewell {
				u.sayFarewell() // its messages go out before the process may exit
			}
			if u.sending == 0 {
				u.finish()
			}
		}
	}
}

func (u *Upgrader) onSignal(sig os.Signal) {
	switch signalAction(sig) {
	case actUpgrade:
		if u.st == starting && u.set.Marker() != nil {
			// A new generation that is not confirmed yet: the PID file names it
			// already (the old one writes it as it hands over), so an operator's
			// SIGUSR2 can come now. It runs once this process is ready.
			if !u.deferred {
				u.deferred = true
				u.log.Info("upgrade requested before this generation is ready: it runs once it is", "event", "upgrade_deferred", "trigger", signalName(sig))
			}
			return
		}
		u.beginUpgrade(signalName(sig), nil)
	case actIgnore:
		u.log.Warn("signal ignored; send SIGUSR2 to upgrade, SIGTERM to stop", "event", "signal_ignored", "signal", signalName(sig))
	case actStop:
		u.terms++
		if u.terms > 1 {
			u.log.Warn("second stop signal: exiting now, without finishing the drain", "event", "exit_now", "signal", signalName(sig))
			exitBySignal(sig)
			return
		}
		u.stop(signalName(sig))
	}
}

// refusal says why an upgrade cannot start now, or returns nil.
func (u *Upgrader) refusal() (reason string, moved int, err error) {
	switch {
	case u.st == starting:
		return "not_ready", 0, errNotReady
	case u.st == upgrading || u.st == handingOver:
		return "in_progress", 0, ErrUpgradeInProgress
	case u.nextPID != 0 && (u.st == draining || u.st == exited):
		return "handed_over", u.nextPID, fmt.Errorf("graceful: this process has handed over to PID %d; ask that one", u.nextPID)
	case u.st == draining || u.st == stopping || u.st == exited:
		return "stopping", 0, errStopping
	}
	switch {
	case runtime.GOOS != "linux":
		return "unsupported", 0, fmt.Errorf("graceful: upgrading a process is not supported on %s (it serves, and drains on SIGINT/SIGTERM): %w", runtime.GOOS, errors.ErrUnsupported)
	case u.set.Master() != 0:
		return "master", 0, fmt.Errorf("graceful: this process runs under a `handover run` master (PID %d), which runs the upgrades: send it SIGHUP or SIGUSR2, or run `handover reload`", u.set.Master())
	case os.Getpid() == 1 && u.notifier == nil:
		return "pid1", 0, errors.New("graceful: this process is PID 1 of its PID namespace (a container started without an init): when it hands over and exits, the kernel ends the namespace and the new generation with it; run the server under `handover run`, which keeps one PID while generations change (an init such as tini does not help: it exits with its first child)")
	}
	return "", 0, nil
}

// beginUpgrade starts an upgrade, or reports why it cannot. reply, if not nil, is
// called on the loop with the outcome.
func (u *Upgrader) beginUpgrade(trigger string, reply func(upgradeResult)) {
	if reason, moved, err := u.refusal(); err != nil {
		attrs := []any{"event", "upgrade_refused", "reason", reason, "trigger", trigger}
		if u.next != nil && !u.next.handed && u.next.child != nil {
			attrs = append(attrs, "child", u.next.child.Pid())
		}
		if moved != 0 {
			attrs = append(attrs, "current", moved)
		}
		u.log.Warn("upgrade refused: "+err.Error(), attrs...)
		if reply != nil {
			reply(upgradeResult{err: err, moved: moved})
		}
		return
	}
	u.log.Info("upgrade starting", "event", "upgrade_start", "trigger", trigger, "executable", u.exe)
	u.notify("RELOADING=1\n" + sdnotify.MonotonicUsec() + "\nSTATUS=upgrading: starting a new generation")
	u.st = upgrading
	u.spawn(&nextGen{trigger: trigger, started: time.Now()}, u.exe, reply)
}

// spawn starts n from path, beside the loop; the outcome comes back as a
// spawnedEvent. A replacement uses the sockets kept in u.reserve.
func (u *Upgrader) spawn(n *nextGen, path string, reply func(upgradeResult)) {
	if reply != nil {
		n.waiters = append(n.waiters, reply)
	}
	u.next = n
	u.spawning++
	spec := u.childSpec(path)
	reserve := u.reserve
	batch := u.initBatch()
	go func() {
		batch := append(batch, u.initExtra()...) // beside the loop: it may run SaveState
		c, ch, out, err := spawnChild(u.set, reserve, spec, u.start, batch)
		u.post(spawnedEvent{n: n, child: c, ch: ch, out: out, err: err})
	}()
}

func (u *Upgrader) onSpawned(ev spawnedEvent) {
	n := ev.n
	if ev.err != nil {
		u.failUpgrade("start", ev.err)
		return
	}
	n.child, n.ch, n.out, n.reading = ev.child, ev.ch, ev.out, true
	if n.out != nil {
		n.outOpen = true
		go func() {
			<-n.out.Done()
			u.post(stderrEndedEvent{n})
		}()
	}
	n.timer = time.AfterFunc(u.cfg.UpgradeTimeout, func() { u.post(upgradeTimeoutEvt{n}) })
	go func() {
		for {
			m, err := n.ch.Receive()
			u.post(childMsgEvent{n: n, m: m, err: err})
			if err != nil {
				return
			}
		}
	}()
	go func() {
		<-n.child.Exited()
		u.post(childExitEvent{n})
	}()
	u.log.Info("new generation started", "event", "child_started", "child", n.child.Pid(), "sibling", u.notifier != nil, "replacement", n.replacement)
}

func (u *Upgrader) onChildMessage(ev childMsgEvent) {
	n := u.next
	if ev.err != nil {
		n.reading = false
		if n.settled {
			n.ch.Close() // nobody holds the other end any more
			u.next = nil
			return
		}
		if n.handed && n.exited && u.next == n {
			u.onSuccessorExit(n) // its exit was waiting for this end of the channel
			return
		}
		switch {
		case n.failAfter != "" && !n.outOpen:
			u.failUpgrade("exited", errors.New(n.failAfter))
		case n.failAfter != "":
			// Its stderr is still being read: stderrEndedEvent or lastWordsEvent.
		case !n.handed && !n.exited:
			// A child that dies closes the channel a moment before its exit is seen:
			// give the exit a moment, so that the error says what happened.
			time.AfterFunc(lastWordsWait, func() {
				u.post(childMsgEvent{n: n, m: handoff.Message{Verb: "closed"}})
			})
		}
		return
	}
	m := ev.m
	closeFiles(m.Files)
	switch {
	case m.Verb == "closed": // posted above, lastWordsWait after the channel closed
		if !n.handed && !n.exited {
			u.failUpgrade("channel_closed", fmt.Errorf("the new generation (PID %d) closed the handover channel before it was ready", n.child.Pid()))
		}
	case m.Verb == handoff.Error:
		n.said = m.Text
		u.log.Error("the new generation reports an error", "event", "child_error", "child", n.child.Pid(), "err", m.Text)
	case m.Verb == handoff.Ready && !n.handed && n.ready == 0:
		u.handOver(n, m.PID)
	case m.Verb == handoff.Done && n.handed:
		n.retired = true
	case m.Verb == handoff.Current && n.handed:
		n.retired = false
	case m.Verb == handoff.Finish && n.handed:
		if u.upstream != nil {
			u.tellUpstream(handoff.Finish) // an older generation drains: the oldest finishes
		} else {
			u.finishNow()
		}
	default:
		if !n.handed {
			u.failUpgrade("protocol", fmt.Errorf("the new generation (PID %d) sent an unexpected message %q", n.child.Pid(), m.String()))
		}
	}
}

func (u *Upgrader) onChildExit(n *nextGen) {
	n.exited = true
	if !n.handed {
		why := fmt.Sprintf("the new generation (PID %d) exited before it was ready", n.child.Pid())
		if n.reading || n.outOpen {
			// Its last words ("error ...", a panic on stderr) may still be on their
			// way through the channel and the pipe, which its exit has closed.
			n.failAfter = why
			time.AfterFunc(lastWordsWait, func() { u.post(lastWordsEvent{n}) })
			return
		}
		u.failUpgrade("exited", errors.New(why))
		return
	}
	if n.reading {
		// A "done" it sent just before exiting may still be on its way: judge the
		// exit once the channel is read to its end (or lastWordsWait passed).
		time.AfterFunc(lastWordsWait, func() { u.post(successorSettledEvent{n}) })
		return
	}
	u.onSuccessorExit(n)
}

// handOver starts the handover to n, which said it is ready as pid: systemd must
// learn the new main PID before this process stops, or it stops the unit with it.
func (u *Upgrader) handOver(n *nextGen, pid int) {
	if pid != n.child.Pid() {
		u.log.Warn("the new generation reports a different PID than the one started (a wrapper?)", "event", "child_pid_differs", "started", n.child.Pid(), "ready", pid)
	}
	n.ready = pid
	if u.st == upgrading {
		u.st = handingOver
	}
	// The history the new generation keeps, with this upgrade in it.
	h := u.history.clone()
	h.add(u.record(n, "ok", "", nil))
	hist := h.encode()
	notifier, ch := u.notifier, n.ch
	go func() {
		var ev = handoverEvent{n: n}
		if notifier != nil {
			if err := notifier.Send("MAINPID=" + strconv.Itoa(pid) + "\nREADY=1\nSTATUS=handing over to PID " + strconv.Itoa(pid)); err != nil {
				ev.err = fmt.Errorf("telling systemd MAINPID=%d: %w", pid, err)
				u.post(ev)
				return
			}
			ev.barrier = notifier.Barrier(barrierTimeout)
		}
		ch.Send(handoff.Message{Verb: handoff.History, Text: hist}, sendTimeout)
		if err := ch.Send(handoff.Message{Verb: handoff.Main}, sendTimeout); err != nil && notifier == nil {
			ev.err = fmt.Errorf("the new generation (PID %d) went away right after it was ready: %v", pid, err)
		}
		u.post(ev)
	}()
}

func (u *Upgrader) onHandover(ev handoverEvent) {
	n := ev.n
	if ev.err != nil {
		cause := "confirm"
		if u.notifier != nil {
			cause = "notify"
		}
		u.failUpgrade(cause, ev.err)
		return
	}
	if ev.barrier != nil {
		u.log.Warn("systemd did not confirm MAINPID in time; handing over anyway", "event", "barrier_timeout", "err", ev.barrier)
	}
	n.timer.Stop()
	n.handed = true
	u.nextPID = n.ready
	u.lastErr = ""
	u.history.add(u.record(n, "ok", "", nil))
	if u.cfg.PIDFile != "" {
		// The new generation writes it too, once it hears "main"; written here as
		// well, the file names it by the time whoever asked for the upgrade hears
		// the outcome.
		if err := pidfile.Write(u.cfg.PIDFile, n.ready); err != nil {
			u.log.Error("writing the PID file", "event", "pidfile_failed", "err", err)
		}
	}
	u.main = false
	u.set.KeepFiles()
	u.stopWatchdog()
	u.log.Info("handed over", "event", "handed_over", "to", n.ready, "took", time.Since(n.started).Round(time.Microsecond).String(), "replacement", n.replacement)
	for _, w := range n.waiters {
		w(upgradeResult{pid: n.ready})
	}
	n.waiters = nil
	if u.notifier != nil {
		// systemd supervises the new main process from now on; the channel stays,
		// for what this process says as it drains.
		n.child.Release()
		n.released = true
	} else if u.reserve == nil {
		// Keep the sockets open while draining, whatever the application does with
		// its listeners: a successor that dies may need them.
		if r, err := u.set.ForChild(); err != nil {
			u.log.Warn("could not keep the sockets open while draining", "event", "reserve_failed", "err", err)
		} else {
			u.reserve = r
		}
	}
	if n.replacement {
		return // this process was draining already, and goes on
	}
	u.st = draining
	u.retire()
	u.closeExit()
	u.startDrains(u.notifier != nil)
	u.tellSuccessor(handoff.Message{Verb: handoff.Above, N: u.above + 1})
	u.onHandedOverExtra()
	if draining := u.above + 1; draining > u.cfg.MaxDraining {
		u.log.Warn("more generations drain than MaxDraining: the oldest finishes now", "event", "too_many_draining", "draining", draining, "max", u.cfg.MaxDraining)
		if u.upstream != nil {
			u.tellUpstream(handoff.Finish)
		}
	}
}

// onSuccessorExit handles the exit of the generation this process handed over to,
// while this one drains, or after (see finish) (no service manager).
func (u *Upgrader) onSuccessorExit(n *nextGen) {
	status := n.child.ExitStatus()
	if n.retired {
		// It had handed over in turn (or stopped), and may have passed its end of
		// the channel on to its own successor, which then talks to us: keep it until
		// nobody holds the other end.
		if !n.settled {
			n.settled = true
			u.log.Info("the new generation exited after handing over or stopping; nothing to do", "event", "successor_retired", "child", n.child.Pid(), "status", status)
		}
		if !n.reading { // its channel is at EOF already
			n.ch.Close()
			u.next = nil
		}
		return
	}
	n.ch.Close()
	u.next = nil
	attrs := []any{"event", "successor_died", "child", n.child.Pid(), "status", status}
	switch {
	case u.hard:
		u.log.Error("the new generation died while this process was draining; it is stopping, so nothing is done", append(attrs, "action", "none")...)
	case u.st == draining && u.resumable():
		u.log.Error("the new generation died while this process was draining; serving again", append(attrs, "action", "resume")...)
		u.resume(n)
	case u.reserve == nil || u.replaced >= maxReplacements:
		u.log.Error("the new generation died after taking over; this process cannot resume, and no replacement is left", append(attrs, "action", "none", "replacements", u.replaced)...)
	default:
		u.replaced++
		u.log.Error("the new generation died after taking over; starting this process's own build on the sockets kept open", append(attrs, "action", "replace", "attempt", u.replaced)...)
		u.spawn(&nextGen{trigger: "replacement", started: time.Now(), replacement: true}, selfExecutable, nil)
	}
}

// resumable reports whether every socket the process holds is served by a target
// that can take its drain back.
func (u *Upgrader) resumable() bool {
	u.mu.Lock()
	used := u.exitUsed
	u.mu.Unlock()
	if used {
		return false
	}
	lns, packets := u.set.Listeners()
	if packets {
		return false
	}
	for _, ln := range lns {
		t := u.targetOf(ln)
		if t == nil || !t.resumable() {
			return false
		}
	}
	return true
}

func (u *Upgrader) targetOf(ln net.Listener) *target {
	for _, t := range u.targets {
		if t.serves(ln) {
			return t
		}
	}
	return nil
}

// resume takes the drains back after the successor n died: this process is the
// current generation again.
func (u *Upgrader) resume(n *nextGen) {
	u.history.died(os.Getpid(), n.ready, n.child.ExitStatus())
	u.st = serving
	u.nextPID = 0
	for _, t := range u.targets {
		if t.cancel != nil {
			t.cancel(errResumed)
			t.cancel = nil
		}
		t.epoch++ // a drain that ended just now is not news any more
		t.ended = false
		t.resume()
	}
	u.mu.Lock()
	u.exit = make(chan struct{})
	u.mu.Unlock()
	u.main = true
	u.writePIDFile()
	u.tellUpstream(handoff.Current)
	u.log.Warn("serving again: the new generation died after taking over", "event", "resumed", "dead", n.child.Pid(), "status", n.child.ExitStatus())
}

// failUpgrade abandons the upgrade in progress: the child is killed, and this
// process goes on serving. The failure is reported (logged, recorded, answered to
// whoever asked for the upgrade) once the killed child is seen dead, at most
// killWait later, so that a reported failure never leaves the failed build running
// or unreaped.
func (u *Upgrader) failUpgrade(cause string, err error) {
	n := u.next
	u.next = nil
	if n.timer != nil {
		n.timer.Stop()
	}
	if u.st == upgrading || u.st == handingOver {
		u.st = serving
	}
	if n.child != nil && n.ch != nil {
		ch, text := n.ch, err.Error()
		go func() {
			ch.Send(handoff.Message{Verb: handoff.Abort, Text: text}, lastWordsWait)
			ch.Close()
		}()
	}
	if n.child != nil && !n.exited {
		n.child.Kill()
		u.awaitDeath(n.child, func() { u.reportFailure(n, cause, err) })
		return
	}
	u.reportFailure(n, cause, err)
}

// reportFailure logs and records the failed upgrade n, and answers its waiters.
func (u *Upgrader) reportFailure(n *nextGen, cause string, err error) {
	attrs := []any{"event", "upgrade_failed", "cause", cause}
	if n.child != nil {
		if st := n.child.ExitStatus(); st != "" && n.exited {
			err = fmt.Errorf("%w (%s)", err, st)
		}
		if n.said != "" {
			err = fmt.Errorf("%w: %s", err, n.said)
		}
		if last := n.out.String(); last != "" {
			err = fmt.Errorf("%w\nits last lines on stderr:\n  %s", err, strings.ReplaceAll(last, "\n", "\n  "))
		}
		attrs = append(attrs, "err", err, "child", n.child.Pid())
		if st := n.child.ExitStatus(); st != "" {
			attrs = append(attrs, "status", st)
		}
	} else {
		attrs = append(attrs, "err", err)
	}
	outcome := "failed"
	if cause == "abandoned" {
		outcome = "abandoned"
	}
	u.history.add(u.record(n, outcome, cause, err))
	switch {
	case n.replacement:
		u.log.Error("replacement failed", attrs...)
	case cause == "abandoned":
		u.lastErr = err.Error()
		u.log.Warn("upgrade abandoned: the process is stopping", attrs...)
	default:
		u.lastErr = err.Error()
		u.log.Error("upgrade failed; still serving", attrs...)
		if u.st == serving {
			u.notify("READY=1\nSTATUS=" + u.statusLine())
		}
	}
	for _, w := range n.waiters {
		w(upgradeResult{err: err})
	}
}

// awaitDeath keeps the process from finishing until the killed child c is seen
// dead (at most killWait): a sibling would otherwise outlive it, and systemd would
// kill it itself. then, if not nil, runs on the loop at that moment.
func (u *Upgrader) awaitDeath(c child, then func()) {
	pid := c.Pid()
	u.dying = append(u.dying, pid)
	go func() {
		select {
		case <-c.Exited():
		case <-time.After(u.cfg.killWait):
		}
		c.Release()
		u.post(deadChildEvent{pid, then})
	}()
}

// stop drains for good.
func (u *Upgrader) stop(why string) {
	switch u.st {
	case stopping, exited:
		return
	case draining:
		// This process drains already; the stop only makes the drain final.
		u.log.Info("stop requested while draining after a handover: the drain goes on, and is final", "event", "stop_ignored", "why", why)
		if !u.hard {
			u.hard = true
			for _, t := range u.targets {
				t.closeListeners()
			}
		}
		return
	case upgrading, handingOver:
		u.st = stopping
		u.failUpgrade("abandoned", errAbandoned)
	}
	u.st = stopping
	u.retire()
	u.log.Info("stopping", "event", "stop", "why", why)
	u.onStopExtra()
	if u.main {
		u.notify("STOPPING=1\nSTATUS=stopping: draining connections")
	}
	u.stopWatchdog()
	if u.cfg.PIDFile != "" {
		pidfile.Remove(u.cfg.PIDFile, os.Getpid())
	}
	u.closeExit()
	u.startDrains(true)
}

func (u *Upgrader) closeExit() {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.exit:
	default:
		close(u.exit)
	}
}

// retire tells the generation that handed over to this one, if it still listens,
// that this process is no longer the current generation. The channel stays open:
// "current" follows if this process resumes.
func (u *Upgrader) retire() {
	u.tellUpstream(handoff.Done)
}

// tellUpstream sends verb to the previous generation, if it still listens, beside
// the loop; the process does not finish before it is sent (its exit would beat the
// message, and the previous generation would take it for a crash).
func (u *Upgrader) tellUpstream(verb string) {
	ch := u.upstream
	if ch == nil {
		return
	}
	u.sending++
	go func() {
		ch.Send(handoff.Message{Verb: verb}, sendTimeout)
		u.post(sentEvent{})
	}()
}

// startDrains drains every target, each within its deadline. hard closes the
// listeners at once; otherwise they only stop accepting, and the drain can be taken
// back until it ends.
func (u *Upgrader) startDrains(hard bool) {
	u.hard = u.hard || hard
	u.drain = drainStats{}
	u.drainAt = time.Now()
	for _, t := range u.targets {
		u.startDrain(t)
	}
}

func (u *Upgrader) startDrain(t *target) {
	if t.cancel != nil || t.ended {
		return
	}
	d := t.timeout
	if d <= 0 {
		d = u.cfg.DrainTimeout
	}
	ctx, cancelDeadline := context.WithTimeout(context.Background(), d)
	ctx, cancel := context.WithCancelCause(ctx)
	t.cancel = cancel
	t.epoch++
	epoch := t.epoch
	hard := u.hard
	log := u.log.With("addr", t.addr())
	if !t.internal {
		log.Info("draining", "event", "drain_start", "connections", t.counts().Total(), "deadline", d.String())
	}
	c0, f0, r0 := t.counts(), t.d.forced.Load(), t.d.requests.Load()
	go func() {
		defer cancelDeadline()
		start := time.Now()
		err := t.drain(ctx, hard)
		c1 := t.counts()
		forced := int(t.d.forced.Load() - f0)
		stats := drainStats{
			Forced:        forced,
			Closed:        c0.Total() + int(c1.Accepted-c0.Accepted) - forced - c1.Total(),
			RequestsAfter: t.d.requests.Load() - r0,
		}
		took := time.Since(start).Round(time.Millisecond).String()
		switch {
		case t.internal:
		case errors.Is(err, ErrDrainDeadline):
			log.Warn("drain deadline reached; force-closed the remaining connections", "event", "drain_deadline", "took", took)
		case err == nil:
			log.Info("drained", "event", "drained", "took", took)
		}
		u.post(drainEndedEvent{t: t, epoch: epoch, err: err, stats: stats})
	}()
}

func (u *Upgrader) onDrainEnded(t *target, err error, d drainStats) {
	if errors.Is(err, errResumed) {
		return
	}
	t.cancel = nil
	t.ended = true
	if errors.Is(err, ErrDrainDeadline) {
		u.drainErr = err
	}
	if !t.internal {
		u.drain.Closed += d.Closed
		u.drain.Forced += d.Forced
		u.drain.RequestsAfter += d.RequestsAfter
	}
}

// finished reports whether the process is done: it drains (after a handover or a
// stop), every drain has ended, no replacement is starting, and no killed child is
// still alive.
func (u *Upgrader) finished() bool {
	if u.st != draining && u.st != stopping {
		return false
	}
	if len(u.dying) > 0 || u.spawning > 0 || u.sending > 0 || u.next != nil && !u.next.handed {
		return false
	}
	for _, t := range u.targets {
		if !t.ended {
			return false
		}
	}
	return true
}

// finish ends the drains: every listener is closed for good, and Wait returns. The
// loop goes on (signals, the successor) for as long as the process lives: one that
// drains servers of its own after Exit may outlive Wait, and keeps the sockets it
// reserved for a successor that dies meanwhile.
func (u *Upgrader) finish() {
	u.st = exited
	for _, t := range u.targets {
		t.closeListeners()
	}
	u.stopWatchdog()
	u.mu.Lock()
	u.waitErr = u.drainErr
	u.mu.Unlock()
	u.log.Info("drained; the process may exit", "event", "done")
	close(u.done)
}

// adopt makes t one of the process's drain targets. A target adopted once the
// process drains starts draining at once.
func (u *Upgrader) adopt(t *target) {
	u.call(func() {
		u.targets = append(u.targets, t)
		if u.st == draining || u.st == stopping {
			u.startDrain(t)
		}
	})
}

// readInit reads the parent's initial batch, up to "end" (see handoff.Message).
func (u *Upgrader) readInit(p *handoff.Channel) error {
	p.SetDeadline(time.Now().Add(initTimeout))
	defer p.SetDeadline(time.Time{})
	for {
		m, err := p.Receive()
		if err != nil {
			return fmt.Errorf("the parent generation's first messages: %w", err)
		}
		switch m.Verb {
		case handoff.End:
			return nil
		case handoff.History:
			if h, err := decodeHistory(m.Text); err != nil {
				u.log.Warn("the history of upgrades is lost", "event", "history_lost", "err", err)
			} else {
				u.history = h
			}
		case handoff.Above:
			u.above = m.N
		default:
			if !u.onInitMessage(m) {
				closeFiles(m.Files)
				u.log.Warn("ignoring an unexpected message from the parent generation", "event", "protocol", "verb", m.Verb)
			}
		}
	}
}

// initBatch is what a new generation gets before it starts (see handoff.Message),
// with initExtra's messages, which spawn adds beside the loop.
func (u *Upgrader) initBatch() []handoff.Message {
	return []handoff.Message{
		{Verb: handoff.History, Text: u.history.encode()},
		{Verb: handoff.Above, N: u.above + 1},
	}
}

// listenUpstream makes ch the channel to the previous generation and reads it.
func (u *Upgrader) listenUpstream(ch *handoff.Channel) {
	if u.upstream != nil && u.upstream != ch {
		u.upstream.Close()
	}
	u.upstream = ch
	go func() {
		for {
			m, err := ch.Receive()
			if err != nil {
				u.post(upstreamEndedEvent{ch})
				return
			}
			u.post(upstreamMsgEvent{ch, m})
		}
	}()
}

// onUpstreamMessage handles what an older generation says after the handover.
func (u *Upgrader) onUpstreamMessage(m handoff.Message) {
	switch m.Verb {
	case handoff.Above:
		u.setAbove(m.N)
	case handoff.Upstream:
		// The previous generation is done: its own channel to an older, still
		// draining generation is ours now.
		if len(m.Files) != 1 {
			closeFiles(m.Files)
			return
		}
		ch, err := handoff.NewChannel(m.Files[0])
		if err != nil {
			u.log.Warn("the channel to an older generation is lost", "event", "protocol", "err", err)
			return
		}
		u.listenUpstream(ch)
		u.setAbove(m.N)
	case handoff.Drained:
		var d drainStats
		if json.Unmarshal([]byte(m.Text), &d) == nil {
			u.history.drained(d)
		}
	case handoff.History:
		if h, err := decodeHistory(m.Text); err == nil {
			u.history = h
		}
	default:
		if !u.onUpstreamExtra(m) {
			closeFiles(m.Files)
		}
	}
}

// setAbove records how many older generations drain, and tells the successor (to
// which this one, draining, is one more).
func (u *Upgrader) setAbove(n int) {
	u.above = n
	if u.st == draining {
		u.tellSuccessor(handoff.Message{Verb: handoff.Above, N: n + 1})
	}
}

// tellSuccessor sends m to the generation this one handed over to, beside the loop;
// the process does not finish before it is sent.
func (u *Upgrader) tellSuccessor(m handoff.Message) {
	n := u.next
	if n == nil || !n.handed || n.ch == nil {
		closeFiles(m.Files)
		return
	}
	u.sending++
	go func() {
		n.ch.Send(m, sendTimeout)
		closeFiles(m.Files)
		u.post(sentEvent{})
	}()
}

// finishNow ends this generation's drain at once, as at its deadline: too many
// generations drain, and this is the oldest.
func (u *Upgrader) finishNow() {
	if u.st != draining && u.st != stopping {
		return
	}
	u.log.Warn("finishing the drain now: too many generations drain, and this is the oldest", "event", "drain_finish_now")
	for _, t := range u.targets {
		if t.cancel != nil {
			t.cancel(errFinishNow)
		}
	}
}

// sayFarewell, once this generation has drained, tells its successor how the drain
// went and passes on its channel to an older generation still draining.
func (u *Upgrader) sayFarewell() {
	u.farewell = true
	if u.nextPID == 0 {
		return // stopped, not handed over
	}
	d := u.drain
	d.From, d.To = os.Getpid(), u.nextPID
	d.Seconds = time.Since(u.drainAt).Seconds()
	u.history.drained(d)
	if b, err := json.Marshal(d); err == nil {
		u.tellSuccessor(handoff.Message{Verb: handoff.Drained, Text: string(b)})
	}
	if u.upstream == nil {
		u.tellSuccessor(handoff.Message{Verb: handoff.Above, N: 0})
		return
	}
	up := u.upstream
	u.upstream = nil // from now on the successor reads it, not us
	f, err := up.File()
	up.Close()
	if err != nil {
		u.tellSuccessor(handoff.Message{Verb: handoff.Above, N: 0})
		return
	}
	u.tellSuccessor(handoff.Message{Verb: handoff.Upstream, N: u.above, Files: []*os.File{f}})
}
