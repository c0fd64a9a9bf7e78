package fds

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Listen returns a listener for name: the inherited socket with that name, else the
// inherited socket bound to network and address, else (systemd only) the single
// unnamed stream socket passed, else a socket it binds to address itself. network is
// "tcp", "tcp4", "tcp6", "unix" or "unixpacket". name may be empty. A candidate that
// cannot serve network is an error naming the descriptor, not a reason to bind.
//
// Binding a unix socket replaces a stale socket file (one nobody accepts on: connect
// is refused), left by a process that was killed; a live socket or a file that is
// not a socket is an error.
func (s *Set) Listen(name, network, address string) (net.Listener, error) {
	if packetNetwork(network) {
		return nil, fmt.Errorf("listen %s %s: %s is a datagram network; use ListenPacket", network, address, network)
	}
	h, err := s.claim(name, want{network: network, address: address})
	if err != nil {
		return nil, err
	}
	return h.ln, nil
}

// ListenPacket is Listen for datagram sockets: network is "udp", "udp4", "udp6" or
// "unixgram".
func (s *Set) ListenPacket(name, network, address string) (net.PacketConn, error) {
	if !packetNetwork(network) {
		return nil, fmt.Errorf("listen packet %s %s: %s is not a datagram network; use Listen", network, address, network)
	}
	h, err := s.claim(name, want{network: network, address: address, packet: true})
	if err != nil {
		return nil, err
	}
	return h.pc, nil
}

// packetNetwork reports whether network is a datagram network.
func packetNetwork(network string) bool {
	return strings.HasPrefix(network, "udp") || network == "unixgram"
}

// claim serves a request: the inherited descriptor pick finds, or a socket bound
// now. Either is held from then on.
func (s *Set) claim(name string, w want) (*held, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, fmt.Errorf("inherited sockets: %w", s.err)
	}
	f, err := s.pick(name, w)
	if err != nil {
		return nil, err
	}
	h := &held{name: name, source: Bound, owned: true}
	if f == nil {
		if h.ln, h.pc, err = listen(w); err != nil {
			return nil, err
		}
		s.held = append(s.held, h)
		return h, nil
	}
	h.source, h.owned = f.Source, f.Owned
	if w.packet {
		h.pc, err = net.FilePacketConn(f.file)
	} else {
		h.ln, err = net.FileListener(f.file)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", f.label(), err)
	}
	f.file.Close()
	f.claimed = true
	if ul, ok := h.ln.(*net.UnixListener); ok {
		// Only the line of processes that created the file may remove it.
		ul.SetUnlinkOnClose(f.Owned)
	}
	s.held = append(s.held, h)
	return h, nil
}

// listen binds a new socket for w: a listener, or a packet conn for a datagram
// network. A stale unix socket file in the way is removed first.
func listen(w want) (net.Listener, net.PacketConn, error) {
	if w.network == "unix" || w.network == "unixpacket" {
		if err := RemoveStaleSocket(w.address); err != nil {
			return nil, nil, err
		}
	}
	var lc net.ListenConfig
	if w.packet {
		pc, err := lc.ListenPacket(context.Background(), w.network, w.address)
		return nil, pc, err
	}
	ln, err := lc.Listen(context.Background(), w.network, w.address)
	return ln, nil, err
}

// pick finds the inherited descriptor for a request, or nil to bind.
func (s *Set) pick(name string, w want) (*File, error) {
	if name != "" && !handoff.ValidName(name) {
		return nil, fmt.Errorf("listener name %q is not valid: use at most 255 printable ASCII characters without ':'", name)
	}
	if _, _, err := w.spec(); err != nil {
		return nil, err
	}
	for _, f := range s.files {
		if f.dropped && (name != "" && f.Name == name || w.matches(f.Kind)) {
			return nil, fmt.Errorf("listener %q (%s %s): %s was closed when the process became ready, because nothing had claimed it yet; take every listener (Listen) before serving on any of them or calling Ready", name, w.network, w.address, f.label())
		}
	}
	if name != "" {
		if f, err := s.byName(name, w); f != nil || err != nil {
			return f, err
		}
	}
	// By network and address.
	for _, f := range s.files {
		if !f.claimed && w.matches(f.Kind) {
			return f, nil
		}
	}
	return s.unnamed(name, w)
}

// byName finds the descriptor passed under name. systemd gives every descriptor of a
// socket unit the unit's one FileDescriptorName=, so several may share a name
// (ListenStream=53 and ListenDatagram=53 both named "dns"): it takes the unclaimed
// one that can serve, preferring the one bound to the address asked for. Named
// descriptors none of which can serve are an error; none named, nil.
func (s *Set) byName(name string, w want) (*File, error) {
	var named, usable []*File
	for _, f := range s.files {
		if f.Name != name {
			continue
		}
		named = append(named, f)
		if !f.claimed && w.check(f.Kind) == nil {
			usable = append(usable, f)
		}
	}
	for _, f := range usable {
		if w.matches(f.Kind) {
			return f, nil
		}
	}
	if len(usable) > 0 {
		return usable[0], nil
	}
	if len(named) == 0 {
		return nil, nil
	}
	var why []string
	for _, f := range named {
		if f.claimed {
			why = append(why, fmt.Sprintf("%s was already claimed by another listener", f.label()))
		} else {
			why = append(why, fmt.Sprintf("%s cannot be used: %v", f.label(), w.check(f.Kind)))
		}
	}
	return nil, fmt.Errorf("listener %q: %s", name, strings.Join(why, "; "))
}

// unnamed finds the single socket systemd (or a master) passed without a name of
// its own (systemd-socket-activate without --fdname, or a unit without
// FileDescriptorName=, which systemd names after the unit), also as the previous
// generation passes it on: its address is the socket unit's, not the program's, so
// it cannot be matched by address. Several that could serve are an error; so is the
// only descriptor passed, when it cannot.
func (s *Set) unnamed(name string, w want) (*File, error) {
	var unnamed, usable []*File
	for _, f := range s.files {
		external := f.Source == Systemd || f.Source == Master || f.Source == Parent && !f.Owned
		if !f.claimed && external && (name == "" || f.Name == "" || strings.HasSuffix(f.Name, ".socket")) {
			unnamed = append(unnamed, f)
			if w.check(f.Kind) == nil {
				usable = append(usable, f)
			}
		}
	}
	switch {
	case len(usable) == 1:
		return usable[0], nil
	case len(usable) > 1:
		var labels []string
		for _, f := range usable {
			labels = append(labels, f.label())
		}
		return nil, fmt.Errorf("listener %q (%s %s): several passed sockets could serve it (%s); give them names with FileDescriptorName= and ask for one", name, w.network, w.address, strings.Join(labels, ", "))
	case len(unnamed) == 1 && len(s.files) == 1:
		// The only descriptor passed cannot serve: say so rather than bind.
		f := unnamed[0]
		return nil, fmt.Errorf("listener %q: %s cannot be used: %v", name, f.label(), w.check(f.Kind))
	}
	return nil, nil
}
