//go:build linux

package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/wire"
)

// controlSlack is added to the longest an upgrade may take (Config.UpgradeTimeout
// and Settle) for the answer to `handover reload`.
const controlSlack = time.Minute

// errExiting is the answer of a master whose loop has ended.
var errExiting = errors.New("handover run is exiting")

// openControl returns the control socket: the one a socket unit passed, else one
// bound at path (nil when there is neither).
func openControl(socks *sockets, path string) (net.Listener, error) {
	if socks.control != nil {
		ln, err := net.FileListener(socks.control)
		if err != nil {
			return nil, fmt.Errorf("control socket from systemd: %w", err)
		}
		return ln, nil
	}
	if path == "" {
		return nil, nil
	}
	return listenControl(path)
}

// listenControl binds the control socket at path (mode 0600, set without following a
// symlink: fds.SetSocketMode), replacing a stale one.
func listenControl(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("control socket %s: directory %s does not exist (create it first)", path, dir)
	}
	if err := fds.RemoveStaleSocket(path); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := fds.SetSocketMode(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// controlServer answers `handover reload` and `handover status` (control.Server)
// through the master's loop.
type controlServer struct {
	post func(event) bool
	done <-chan struct{} // closed when the loop has ended
	wait time.Duration   // the longest an upgrade's outcome is awaited
}

func (s controlServer) Status() (wire.Status, error) {
	ch := make(chan wire.Status, 1)
	if !s.post(statusRequest{reply: ch}) {
		return wire.Status{}, errExiting
	}
	select {
	case st := <-ch:
		return st, nil
	case <-s.done:
		return wire.Status{}, errExiting
	}
}

// Upgrade runs req (control.Upgrade, Prepare, Commit or Abort) through the loop and
// waits for its outcome.
func (s controlServer) Upgrade(req string) control.Outcome {
	gone := control.Outcome{Err: errExiting, Stopping: true}
	ch := make(chan control.Outcome, 1)
	if !s.post(upgradeRequest{trigger: "control socket", req: req, reply: ch}) {
		return gone
	}
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case o := <-ch:
		return o
	case <-t.C:
		return control.Outcome{Err: errors.New("no outcome from the master in time")}
	case <-s.done:
		return gone
	}
}
