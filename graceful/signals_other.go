//go:build !unix

package graceful

import (
	"os"
	"os/signal"
	"syscall"
)

type action int

const (
	actNone action = iota
	actUpgrade
	actStop
	actIgnore
)

// notifySignals routes the signals the Upgrader handles to c: on this system, only
// the stop signals (there is no SIGUSR2, and no upgrade).
func notifySignals(c chan<- os.Signal) {
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
}

func signalAction(sig os.Signal) action {
	switch sig {
	case os.Interrupt, syscall.SIGTERM:
		return actStop
	}
	return actNone
}

// exitBySignal ends the process at once.
func exitBySignal(sig os.Signal) {
	os.Exit(1)
}

// signalName names sig as operators write it.
func signalName(sig os.Signal) string {
	if sig == os.Interrupt {
		return "SIGINT"
	}
	return "SIGTERM"
}
