package fds

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// ForChild duplicates every socket the process holds for a child. The duplicates are
// taken through SyscallConn, never (*os.File).Fd on a net file, which would switch
// the shared socket to blocking mode under the running server. Sockets the
// application has closed are skipped.
func (s *Set) ForChild() (*Child, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &Child{}
	for _, h := range s.held {
		var sc syscall.Conn
		if h.ln != nil {
			sc, _ = h.ln.(syscall.Conn)
		} else {
			sc, _ = h.pc.(syscall.Conn)
		}
		if sc == nil {
			continue
		}
		f, err := handoff.DupFile(sc, h.name)
		if errors.Is(err, net.ErrClosed) {
			continue
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("duplicating listener %q for the new process: %w", h.name, err)
		}
		if h.owned {
			c.Owned = append(c.Owned, len(c.Files))
		}
		c.Files = append(c.Files, f)
		c.Names = append(c.Names, h.name)
	}
	return c, nil
}
