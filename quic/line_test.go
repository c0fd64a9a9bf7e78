//go:build linux

package handoverquic

import (
	"crypto/rand"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

// testLine is an in-process line of generations: the lineage that graceful's
// carrier implements between processes, here between Sockets of one test process.
// Each generation gets its own descriptor of the shared UDP socket (a dup, as a
// process inherits it) and copies of the older generations' inbox send ends (as
// SCM_RIGHTS would carry them); only the generation itself holds its inbox's
// receive end. Nothing else is shared: the Sockets talk through the descriptors.
type testLine struct {
	t     testing.TB
	sock  *net.UDPConn // the bound socket, held by the line as systemd holds it
	addr  *net.UDPAddr
	reset quic.StatelessResetKey
	token quic.TokenGeneratorKey
	drain time.Duration
	log   *slog.Logger

	mu   sync.Mutex
	gens []*testGen
}

// testGen is one generation's lineage.
type testGen struct {
	line  *testLine
	gen   uint64
	ev    chan event
	olds  []inbox // copies of the older generations' send ends, for older()
	sock  *Socket
	next  *testGen // the successor it hands off to
	prev  *testGen // the predecessor that handed off to it
	doneC chan struct{}

	mu     sync.Mutex
	passed []inbox // copies of what it passed on
	dead   bool
}

// newTestLine binds the shared socket on 127.0.0.1 at a port below the ephemeral
// range.
func newTestLine(t testing.TB, drain time.Duration) *testLine {
	t.Helper()
	l := &testLine{t: t, drain: drain, log: testLogger(t)}
	rand.Read(l.reset[:])
	rand.Read(l.token[:])
	l.sock = listenUDP(t)
	l.addr = l.sock.LocalAddr().(*net.UDPAddr)
	t.Cleanup(l.close)
	return l
}

// testLogger discards the Sockets' logs unless HANDOVER_QUIC_LOG is set.
func testLogger(testing.TB) *slog.Logger {
	if os.Getenv("HANDOVER_QUIC_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// listenUDP binds a UDP socket on 127.0.0.1 at a random port below the ephemeral
// range (see tests/demo_test.go: a port from ":0" may be taken by a client).
func listenUDP(t testing.TB) *net.UDPConn {
	t.Helper()
	var err error
	for range 200 {
		n, _ := rand.Int(rand.Reader, big.NewInt(12000))
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+int(n.Int64())))
		var c net.PacketConn
		if c, err = net.ListenPacket("udp", addr); err == nil {
			return c.(*net.UDPConn)
		}
	}
	t.Fatalf("no free UDP port in [20000, 32000) after 200 tries: %v", err)
	return nil
}

// start starts the next generation. The first serves at once; a later one waits
// for handOver.
func (l *testLine) start() *testGen {
	l.t.Helper()
	l.mu.Lock()
	g := &testGen{line: l, gen: uint64(len(l.gens) + 1), ev: make(chan event, 4), doneC: make(chan struct{})}
	for i := len(l.gens) - 1; i >= 0; i-- {
		if !l.gens[i].isDead() {
			g.prev = l.gens[i] // the newest live generation: the one that spawns g
			g.olds = g.prev.passedCopy(l.t)
			break
		}
	}
	l.gens = append(l.gens, g)
	l.mu.Unlock()
	// A dup, as the process would inherit it. Not l.sock.File(): net.FilePacketConn
	// calls that file's Fd, which puts the shared socket in blocking mode until it
	// has made its own descriptor non-blocking again; an older generation's read in
	// that moment blocks in the kernel, where no deadline reaches it (a test that
	// hung at a handover).
	f, err := handoff.DupFile(l.sock, "quic-test")
	if err != nil {
		l.t.Fatal(err)
	}
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		l.t.Fatal(err)
	}
	g.sock, err = newSocket(g, pc.(*net.UDPConn), l.log.With("gen", g.gen))
	if err != nil {
		l.t.Fatal(err)
	}
	return g
}

// handOver makes g's predecessor hand the socket over to g, as graceful does once
// g is ready: the predecessor stops reading and hands its routes to g (through
// g's inbox), which then reads.
func (l *testLine) handOver(g *testGen) {
	g.prev.next = g
	g.prev.ev <- event{kind: evHandedOver, deadline: time.Now().Add(l.drain)}
}

// crash kills g as a dying process would: its connections vanish without a word
// (the transport is closed first) and its descriptors close; then its
// predecessor, if still draining, takes the socket back.
func (l *testLine) crash(g *testGen) {
	g.mu.Lock()
	g.dead = true
	g.mu.Unlock()
	g.sock.tr.Close()
	g.sock.conn.Close()
	g.sock.Close()
	if p := g.prev; p != nil {
		select {
		case <-p.doneC:
		default:
			p.next = nil
			p.ev <- event{kind: evServe}
		}
	}
}

// close ends every generation and the line's descriptors.
func (l *testLine) close() {
	l.mu.Lock()
	gens := l.gens
	l.mu.Unlock()
	for _, g := range gens {
		g.sock.Close()
		g.mu.Lock()
		closeInboxes(g.passed)
		g.passed = nil
		g.mu.Unlock()
		closeInboxes(g.olds)
		g.olds = nil
	}
	l.sock.Close()
}

func (g *testGen) isDead() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dead
}

// passedCopy duplicates what g passed on, for its successor.
func (g *testGen) passedCopy(t testing.TB) []inbox {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]inbox, 0, len(g.passed))
	for _, in := range g.passed {
		out = append(out, inbox{gen: in.gen, send: dupFile(t, in.send)})
	}
	return out
}

// dupFile duplicates f's descriptor (without os.File.Fd, which would make the
// shared open file blocking).
func dupFile(t testing.TB, f *os.File) *os.File {
	raw, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nfd int
	var derr error
	if err := raw.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Fatal(derr)
	}
	return os.NewFile(uintptr(nfd), f.Name())
}

// The lineage.

func (g *testGen) generation() uint64 { return g.gen }

func (g *testGen) keys() (quic.StatelessResetKey, quic.TokenGeneratorKey) {
	return g.line.reset, g.line.token
}

func (g *testGen) older() []inbox { return g.olds }

func (g *testGen) pass(ins []inbox) {
	cp := make([]inbox, 0, len(ins))
	for _, in := range ins {
		cp = append(cp, inbox{gen: in.gen, send: dupFile(g.line.t, in.send)})
	}
	g.mu.Lock()
	old := g.passed
	g.passed = cp
	g.mu.Unlock()
	closeInboxes(old)
}

func (g *testGen) events() <-chan event { return g.ev }

func (g *testGen) drained() { close(g.doneC) }
