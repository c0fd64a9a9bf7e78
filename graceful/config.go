package graceful

import (
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Timeouts and bounds of the machines.
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
	// stderrWait bounds how long a new generation that took over may take to put
	// its own standard error back; until then the old one relays it.
	stderrWait = time.Second
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
	// defaultProbation is Config.Probation's default: a handover run master's
	// probation, so that a build that dies moments after taking over is caught
	// the same way whichever way the process runs.
	defaultProbation = 10 * time.Second
	// defaultPrepareTimeout is Config.PrepareTimeout's default.
	defaultPrepareTimeout = 5 * time.Minute
)

// Config configures the process's Upgrader. The zero Config is usable.
type Config struct {
	// Logger receives the Upgrader's logs; every line carries "gen", "pid" and
	// "event" (a stable name: start, ready, upgrade_start, handed_over, drain_start,
	// drained, ...). nil means slog.Default(). A new generation's start-up lines
	// (tls_keys, state_loaded, start) are written as it starts serving, just
	// before its "ready" (at once if it fails to start), so that its first answer
	// does not wait for them; their values are those of the moment they describe.
	Logger *slog.Logger
	// PIDFile, if set, is written (atomically, mode 0644, never through a symlink)
	// with the PID of the current generation once it is ready, and removed when the
	// current generation stops.
	PIDFile string
	// UpgradeTimeout bounds how long a new generation may take to become ready.
	// Zero means 30 seconds.
	UpgradeTimeout time.Duration
	// PrepareTimeout bounds how long a prepared new generation (Upgrader.Prepare,
	// `handover prepare`) waits for its commit: past it, it is aborted (killed
	// without having served; logged: event=upgrade_aborted, cause=prepare_timeout)
	// and this process serves on. Zero means 5 minutes.
	PrepareTimeout time.Duration
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
	// always go to the master's fd store, whatever FDStore says.) As the main
	// process stops (`systemctl restart`), its idle keep-alive connections go there
	// too, and the next start serves them (see Server): FileDescriptorStoreMax= needs
	// room for them as well.
	FDStore bool
	// FDStoreConns, with FDStore, keeps every connection a Server may hand over in
	// systemd's fd store for as long as it is open, so that a crash of the process
	// (kill -9, a panic, the OOM killer) leaves the idle ones to the restarted
	// process, which serves them; a connection whose process died while it read or
	// answered a request is closed (its request is lost with the process). It costs
	// two notifications to systemd per connection (FDSTORE=1 when it is accepted,
	// FDSTOREREMOVE=1 when it closes), none per request, and FileDescriptorStoreMax=
	// must have room for every open connection (systemd refuses, and logs, what does
	// not fit; a connection refused is not kept). Linux only.
	FDStoreConns bool
	// MaxDraining bounds how many generations may drain at once: when an upgrade
	// would make one more than that, the oldest draining generation stops waiting
	// for its connections and force-closes them (as at its deadline). A deploy is
	// not refused because of a long-lived connection (tableflip refuses upgrades
	// while a generation drains: its issue #52); those connections would be cut at
	// their deadline anyway, the oldest first. Zero means 3.
	MaxDraining int
	// Probation is how long a new generation is on probation from the moment it
	// took over. Without a service manager, this process does not exit before the
	// probation is over, even once it has drained (a busy keep-alive server drains
	// in milliseconds): it stands by, its listeners stopped but open (connections
	// wait in their queues for whichever process accepts), the copies of its sockets
	// kept, and watches the new generation. If that dies (without having handed over
	// in turn or stopped), this process serves again, or, if it cannot, starts its
	// own build on the sockets (see Upgrader), as when the new generation dies while
	// this one drains. The probation ends early when the new generation hands over
	// in turn or stops, or when this process is asked to stop; Wait (and so
	// Server.Serve on the Upgrader's own listener) returns only then. A process that
	// can neither serve again nor start a replacement does not stand by. A new
	// generation that dies after its probation is not this process's business.
	// Status and the upgrade's record show the probation's end (probation_until).
	//
	// Zero means 10 seconds: a `handover run` master's probation, so that a build
	// that dies moments after it took over is met the same way whichever way the
	// process runs; a crash on the first real traffic comes within seconds. It
	// costs the old process's memory, held that long after its drain. Negative
	// means none: the process exits once drained.
	//
	// Under systemd it does not apply: the new process is the unit's main process,
	// which only systemd watches; if it dies, systemd stops the unit (SIGTERM to the
	// old process too, under KillMode=control-group) and restarts it with
	// Restart=on-failure, the socket unit or the fd store keeping the sockets (see
	// deploy/README.md).
	Probation time.Duration

	// TicketKeyFile names a file of TLS session-ticket keys shared by a fleet (see
	// KeepTLSSessions): one key per line, 64 hex digits (32 bytes, e.g. `openssl rand
	// -hex 32`), the first line's key making new tickets, every key accepted; blank
	// lines and lines starting with # are skipped. New fails, saying what to change,
	// when the file is missing or malformed, or when it is not such a file: it must be
	// a regular file (a FIFO, a directory, a device or a socket is refused), with no
	// access for others and no write access for its group (mode 0600, 0640 or 0400;
	// 0644, 0660 or 0604 are refused), owned by the process's effective user or by
	// root. The file is opened without blocking (O_NONBLOCK), so a FIFO at the path is
	// refused at once instead of holding up the start; a symlink is followed, and the
	// checks apply to the file it leads to, on the descriptor that is read (no race
	// between the check and the read). The owner is checked on Unix systems only (not
	// on Windows). Every generation reads it as it starts, so an upgrade installs a
	// rotated file; the keys are not rotated otherwise. Empty means keys of the
	// line's own: made by the first generation, rotated, and handed from generation
	// to generation.
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
	// called beside the Upgrader's loop (never on a request's goroutine), and may run
	// concurrently with requests. In the old generation, the calls are:
	//
	//  1. SaveState(false) when an upgrade starts: the blob reaches the new
	//     generation before it is ready (the upgrade waits for it).
	//  2. SaveState(true) after the handover, once this process's drain has ended:
	//     every request it answered, on connections it had accepted before it
	//     stopped accepting, has been answered (and a request force-closed at the
	//     drain deadline had no answer): the blob holds every change any answered
	//     request made here. If an older generation's last blob came meanwhile, it
	//     has been loaded first (LoadState returned), so this blob holds it too.
	//
	// With FDStore under systemd, a clean stop calls SaveState(true) once the stop's
	// drain has ended (the blob waits in systemd's fd store for the next start); a
	// process killed before then stores nothing. Under a `handover run` master the
	// old child's two blobs reach the new child as they do a generation this
	// process starts itself (the master starts it; the children talk over a link
	// kept in the master's fd store), and a child the master stops with no new
	// child to hand over to leaves SaveState(true) in the master's fd store for the
	// next child that starts without a state. What the application changes
	// without a request (a background job) after that call is not in any blob: stop
	// such work when Exit is closed. A server of its own kind that the application
	// stops on Exit (not a Server or a Drainer of the Upgrader) is not waited for:
	// wrap its listener in a Drainer.
	//
	// An error, a panic, a blob over MaxStateSize or no answer within UpgradeTimeout
	// is logged (event=state_failed) and the upgrade goes on without that blob;
	// state_saved logs the blob's size, how long SaveState took (save=) and the
	// whole (took=, with the header, the checksum and the sealed memfd: under 1 ms
	// per MiB in a running process, more where the memfd's pages are fresh memory;
	// see BENCHMARKS.md). The blob's bytes are written to the memfd as they are, not
	// copied; the slice stays the application's.
	SaveState func(final bool) ([]byte, error)
	// LoadState, if set, receives the state a previous generation saved, with the
	// version it was tagged with. The order, in the new generation:
	//
	//  1. In New, before it returns (so before Ready): the blob the old generation
	//     saved when the upgrade started (final false), or, after `systemctl
	//     restart` with FDStore, the blob the stopped process left in systemd's
	//     fd store (final true: nothing follows). Requests are not served yet.
	//  2. After Ready, once the old generation's drain has ended: its last blob
	//     (final true), in a goroutine of its own, concurrently with the requests
	//     this process already serves. It holds everything the old generation's
	//     answered requests changed, including what the first blob had: merge it
	//     into what this process has changed since (a counter by generation, keys
	//     added where missing, a version per key), do not replace the state with it.
	//  3. Rarely, more blobs with final true, each from an older generation whose
	//     drain outlasted its successor's (back-to-back upgrades): merge them the
	//     same way, in any order.
	//
	// data is valid only until LoadState returns (it reads as zeros then: it is
	// the sealed memfd, mapped, and wiped). LoadState
	// decides whether it understands version: an error refuses the blob, which is
	// logged (event=state_refused) and ignored; the process starts cold and the
	// upgrade goes on. No call at all means no state came (the first generation, a
	// cold start, or the old generation could not save it). state_loaded logs how
	// long reading and checking the blob took (read=: it is mapped, not copied;
	// about 1 ms per MiB) and LoadState itself (took=).
	LoadState func(version string, data []byte, final bool) error
	// StateVersion tags the blobs SaveState returns (at most 255 printable
	// characters), for a later build's LoadState to recognize the format.
	StateVersion string
}

// withDefaults returns cfg with its zero values replaced by the defaults.
func (cfg Config) withDefaults() Config {
	if cfg.UpgradeTimeout <= 0 {
		cfg.UpgradeTimeout = defaultUpgradeTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = defaultDrainTimeout
	}
	if cfg.PrepareTimeout <= 0 {
		cfg.PrepareTimeout = defaultPrepareTimeout
	}
	if cfg.MaxDraining <= 0 {
		cfg.MaxDraining = defaultMaxDraining
	}
	if cfg.Probation == 0 {
		cfg.Probation = defaultProbation
	}
	if cfg.TicketKeyRotation <= 0 {
		cfg.TicketKeyRotation = defaultTicketKeyRotation
	}
	if cfg.TicketKeyLifetime <= 0 {
		cfg.TicketKeyLifetime = defaultTicketKeyLifetime
	}
	if cfg.Args == nil {
		cfg.Args = os.Args[1:]
	}
	return cfg
}

// check says what is wrong with a Config (with its defaults), or returns nil.
func (cfg Config) check() error {
	if cfg.TicketKeyLifetime <= cfg.TicketKeyRotation {
		return fmt.Errorf("graceful: Config.TicketKeyLifetime (%s) must exceed TicketKeyRotation (%s)", cfg.TicketKeyLifetime, cfg.TicketKeyRotation)
	}
	return checkStateVersion(cfg.StateVersion)
}

// seams are how an Upgrader reaches the world outside the process: the real ones by
// default; unit tests pass fakes to newUpgrader (the machine's own seams, built
// from these, are in machine.go).
type seams struct {
	start    startFunc     // starts a new generation's process; nil means startProcess
	clock    clock         // timers and time; nil means the system clock
	killWait time.Duration // how long a killed new process may take to die; 0 means killWait
}
