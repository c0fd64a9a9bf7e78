package quictest

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// TestHTTP3SuccessorDiesPredecessorResumes: generation 2 takes over, then is
// killed (SIGKILL) while generation 1 still serves a download. Generation 1 takes
// the UDP socket back: the download completes from it, new connections reach it,
// and it upgrades again to a generation that serves.
func TestHTTP3SuccessorDiesPredecessorResumes(t *testing.T) {
	s := newServer(t)
	pid1 := s.start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const size, chunks = 4 << 20, 150 // 3 seconds
	dl := startDownload(ctx, t, s, size, chunks)
	time.Sleep(200 * time.Millisecond) // the download's connection is on generation 1
	pid2 := s.upgrade(pid1)
	s.waitServing(pid2)
	if gen, _, _ := resumed(ctx, t, s, nil, false); gen != 2 {
		t.Fatalf("a new connection reached generation %d, want 2", gen)
	}
	// Generation 2 is generation 1's child: generation 1 reaps it.
	if err := syscall.Kill(pid2, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := proc.WaitFor(func() bool { return len(s.events("resumed")) == 1 }, 10*time.Second, "generation 1 to resume"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if gen, _, _ := resumed(ctx, t, s, nil, false); gen != 1 {
			t.Fatalf("after the successor died, a new connection reached generation %d, want 1", gen)
		}
	}
	res := <-dl
	if res.err != nil || res.size != size || res.gen != 1 {
		t.Errorf("download: generation %d, %d of %d bytes, error %v; want all from generation 1", res.gen, res.size, size, res.err)
	}
	serves := 0
	for _, l := range s.events("quic_serve") {
		if l.Get("pid") == itoa(pid1) && l.Get("resumed") == "true" {
			serves++
		}
	}
	if serves != 1 {
		t.Errorf("generation 1 took the UDP socket back %d times, want 1", serves)
	}
	// It hands over again, to a generation that serves.
	pid3 := s.upgrade(pid1)
	s.waitServing(pid3)
	if gen, _, _ := resumed(ctx, t, s, nil, false); gen != 2 {
		t.Errorf("after the next upgrade (PID %d), a new connection reached generation %d, want 2", pid3, gen)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
