//go:build !linux

package graceful

import "net"

// openControl: there is no control socket on this system (its peers cannot be
// checked); a configured one is ignored, and logged.
func (u *Upgrader) openControl() (net.Listener, error) {
	if u.cfg.ControlSocket != "" {
		u.log.Warn("control socket not supported on this system; ignored", "event", "control_unsupported", "path", u.cfg.ControlSocket)
	}
	return nil, nil
}

func (u *Upgrader) serveControl(net.Listener) *target { return nil }

func (m *machine) storeFDs() {}
