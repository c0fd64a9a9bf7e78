package fds

import (
	"os"
	"strings"
	"syscall"
)

// Conn is a connected socket the process inherited, claimed by ClaimConns.
type Conn struct {
	// Name is its LISTEN_FDNAMES entry.
	Name string
	// File is the descriptor; the caller owns it.
	File *os.File
}

// ClaimConns claims every inherited descriptor that is a stream socket but not a
// listening one (a connection a service manager kept in its fd store) and whose name
// starts with prefix, and returns them, oldest first. A claimed descriptor is not
// closed by CloseUnclaimed, and is not passed to the next generation.
func (s *Set) ClaimConns(prefix string) []Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Conn
	for _, f := range s.files {
		k := f.Kind
		if f.claimed || f.file == nil || !k.Socket || k.Type != syscall.SOCK_STREAM || k.Listening || !strings.HasPrefix(f.Name, prefix) {
			continue
		}
		f.claimed = true
		out = append(out, Conn{Name: f.Name, File: f.file})
		f.file = nil
	}
	return out
}
