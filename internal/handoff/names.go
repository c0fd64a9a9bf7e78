package handoff

import (
	"errors"
	"fmt"
	"runtime"
)

// The names that travel between handover's processes, each defined here once: the
// environment variables and descriptor names that the library, handover run's
// master and the processes they start read and write. (NOTIFY_SOCKET and the
// watchdog variables, the service manager's, are in internal/sdnotify.)

// Environment variables of the socket-passing protocol. The LISTEN_* variables are
// systemd's (sd_listen_fds(3)); the HANDOVER_* ones are handover's own.
const (
	ListenPIDEnv     = "LISTEN_PID"
	ListenFDsEnv     = "LISTEN_FDS"
	ListenFDNamesEnv = "LISTEN_FDNAMES"

	// MarkerEnv is set by a handover parent for the child it starts. A parent cannot
	// set LISTEN_PID to a PID it does not know before fork, so it names itself and the
	// PID the child's parent will have instead; the child adopts LISTEN_FDS only when
	// its real parent matches. Format: "pid=P,ppid=Q,chan=FD,gen=N[,err=FD][,own=I+J]"
	// (see Marker).
	MarkerEnv = "HANDOVER_PARENT"

	// MasterEnv is set by `handover run` for the child it starts, to its own PID.
	// The child adopts LISTEN_FDS as from systemd (the master sets LISTEN_PID through
	// a re-exec shim, or starts a program that carries DirectMark directly, with
	// DirectEnv) and, when its real parent is that PID, leaves upgrades to the
	// master.
	MasterEnv = "HANDOVER_MASTER"

	// GenerationEnv is set by `handover run` for the child it starts: the child's
	// generation (1 for the first child, n+1 for the one that replaces n).
	GenerationEnv = "HANDOVER_GENERATION"

	// DirectEnv is set by `handover run` when it starts a program that carries
	// DirectMark directly, without LISTEN_PID: to the version of the direct start
	// (DirectVersion), which the program checks against its own.
	DirectEnv = "HANDOVER_DIRECT"
)

// ListenFDsStart is the first passed file descriptor (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// MaxListenFDs bounds LISTEN_FDS. systemd itself refuses more than this many fds in
// a socket unit plus fd store; a larger number is a corrupt environment, not a
// request.
const MaxListenFDs = 4096

// ControlName is the name of the control socket among the passed descriptors (a
// socket unit's FileDescriptorName=handover-control, or the one the first
// generation bound): a library process serves `handover reload` and `handover
// status` on it and passes it on to every new generation; under handover run it
// is the master's own, never passed to the child.
const ControlName = "handover-control"

// Names of a two-phase upgrade (prepare, then commit) under handover run. The master
// passes a child it prepares the read end of a pipe among the passed descriptors,
// named PrepareName, and on it writes CommitLine when the operator commits. A child
// built with handover's library says with NotifyField in its sd_notify READY=1
// that it can be prepared (CanPrepare: it does not accept before it is told to) or,
// when it was passed the pipe, that it is ready and waits (Prepared). A program
// that says neither (one in another language) accepts as soon as it starts: the
// master does not prepare it.
const (
	PrepareName = "handover-prepare"
	CommitLine  = "commit\n"
	NotifyField = "X_HANDOVER"
	CanPrepare  = "can-prepare"
	Prepared    = "prepared"
)

// StateName names the application's state (graceful.Config.SaveState) in an fd
// store: systemd's, or a `handover run` master's, which takes it from a child that
// drains too (see package master).
const StateName = "handover-state"

// LinkName names, in a `handover run` master's fd store, the link a serving child
// built with handover's library keeps there: one end of a SOCK_SEQPACKET socket
// pair, on which a new child's handover channel comes ("next": sent by the master
// as it starts the child, see NextMark, or by the child), so that the application's
// state and the idle connections reach it as they reach a child the old generation
// started itself.
const LinkName = "handover-link"

// NextMark is in every program built with this module whose library takes a
// handover channel a `handover run` master opened for it: when it starts a new
// child whose file holds these bytes (its .noptrdata section, as DirectMark), the
// master sends "next" on the serving child's link (LinkName) itself, with one end
// of a new socket pair (OfferNext), and passes the child the other end, named
// NextName, in place of the link. The serving child writes its initial batch while
// the new child starts, as a parent generation does. A program without the mark (an
// older build, which sends "next" itself) gets the link. The first bytes are
// random, as DirectMark's; the rest is the name.
var NextMark = [...]byte{
	0x93, 0x0e, 0xb1, 0x6a, 0xd5, 0x2c, 0x7f, 0x48, 0xe0, 0x19, 0xc6, 0x8b, 0x34, 0xfa, 0x57, 0xa1,
	'h', 'a', 'n', 'd', 'o', 'v', 'e', 'r', '-', 'n', 'e', 'x', 't',
}

// NextName names, among a child's passed descriptors, the handover channel the
// master opened for it (see NextMark). Reading it from the mark keeps the mark in
// every program that reads it.
func NextName() string { return string(NextMark[16:]) }

// ErrUnsupported is returned where passing sockets to another process is not
// implemented: on every system but Linux.
var ErrUnsupported = fmt.Errorf("handing sockets to a new process is not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// DirectMark is in every program built with this module's socket inheritance
// (internal/fds reads it: DirectVersion): such a program adopts the sockets of a
// `handover run` master that starts it directly, without the re-exec shim that sets
// LISTEN_PID, when DirectEnv holds its version and its real parent is the master
// (MasterEnv). The master looks for these bytes in the program's file (its
// .noptrdata section) before starting it, and starts any other program through the
// shim, as systemd's protocol wants: a program in another language, or one built
// with an older version of this module, which does not carry the mark. The first
// bytes are random, so that no other program carries the mark by chance; the last
// one is the version, which a change of the protocol changes.
var DirectMark = [...]byte{
	0x5f, 0xc3, 0x1e, 0x9a, 0x47, 0xd2, 0x08, 0xb6, 0x71, 0xe4, 0x2d, 0x93, 0xaa, 0x36, 0xcf, 0x58,
	'h', 'a', 'n', 'd', 'o', 'v', 'e', 'r', ' ', 'd', 'i', 'r', 'e', 'c', 't', ' ', 's', 't', 'a', 'r', 't', ' ', '1',
}

// DirectVersion is the version of the direct start that DirectMark names: its last
// byte. Reading it from the mark keeps the mark in every program that reads it.
func DirectVersion() string { return string(DirectMark[len(DirectMark)-1:]) }
