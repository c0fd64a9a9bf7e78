package quictest

import (
	"os/exec"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"strconv"
	"syscall"
	"testing"
)

const handoverPkg = "github.com/seed-a7250cfa/handover/cmd/handover"

// TestHTTP3ConnectionsSurviveMasterUpgrades: the clients of
// TestHTTP3ConnectionsSurviveUpgrades through 10 upgrades run by a `handover run`
// master (SIGHUP), which holds the TCP and the UDP socket and starts every
// generation itself: the generations find each other through the master's fd
// store, and settle the UDP socket between themselves.
func TestHTTP3ConnectionsSurviveMasterUpgrades(t *testing.T) {
	s := newServer(t)
	port := strconv.Itoa(s.addr.Port)
	args := append([]string{"run", "-listen", "http=127.0.0.1:" + port, "-listen", "quic=udp:127.0.0.1:" + port,
		"-drain-timeout", "25s", "--", proc.Binary(t, demoPkg)}, s.args()...)
	master := exec.Command(proc.Binary(t, handoverPkg), args...)
	master.Stdout, master.Stderr = s.log, s.log
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	mpid := master.Process.Pid
	s.note(mpid)
	pid := s.waitPID(0)
	upgrades(t, s, pid, func(pid int) int {
		if err := syscall.Kill(mpid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		return s.waitPID(pid)
	}, func() error {
		if err := syscall.Kill(mpid, syscall.SIGTERM); err != nil {
			return err
		}
		_, err := reap(mpid)
		return err
	})
}
