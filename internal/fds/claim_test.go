//go:build linux

package fds

import (
	"testing"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"golang.org/x/sys/unix"
)

// TestClaimFiles: ClaimFiles takes the inherited non-socket descriptors of a name
// (once), leaves sockets of that name to Listen, and CloseUnclaimed does not close
// what it took.
func TestClaimFiles(t *testing.T) {
	mem1, err := handoff.SealedFile("keys", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	mem2, err := handoff.SealedFile("keys", []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := newSocket(t, "tcp4", "127.0.0.1:0", true)
	s := &Set{source: Systemd, files: []*File{
		{Fd: 3, Name: "keys", Source: Systemd, Kind: Kind{What: "regular file"}, file: mem1},
		{Fd: 4, Name: "keys", Source: Systemd, Kind: Kind{Socket: true, Type: unix.SOCK_STREAM, Family: unix.AF_INET, Listening: true}, file: sock},
		{Fd: 5, Name: "keys", Source: Systemd, Kind: Kind{What: "regular file"}, file: mem2},
	}}
	got := s.ClaimFiles("keys")
	if len(got) != 2 || got[0] != mem1 || got[1] != mem2 {
		t.Fatalf("ClaimFiles = %v; want the two memfds, in order", got)
	}
	if again := s.ClaimFiles("keys"); len(again) != 0 {
		t.Errorf("a second ClaimFiles took %v", again)
	}
	if none := s.ClaimFiles("other"); len(none) != 0 {
		t.Errorf("ClaimFiles of another name took %v", none)
	}
	closed := s.CloseUnclaimed()
	if len(closed) != 1 || closed[0].Fd != 4 {
		t.Errorf("CloseUnclaimed closed %+v; want only the socket (fd 4)", closed)
	}
	for _, f := range got {
		if b, err := handoff.ReadSealed(f, 10); err != nil || len(b) != 3 {
			t.Errorf("a claimed file after CloseUnclaimed: %q, %v", b, err)
		}
		f.Close()
	}
}
