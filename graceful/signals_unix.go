//go:build unix

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

// notifySignals routes the signals the Upgrader handles to c.
func notifySignals(c chan<- os.Signal) {
	signal.Notify(c, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
}

func signalAction(sig os.Signal) action {
	switch sig {
	case syscall.SIGUSR2:
		return actUpgrade
	case syscall.SIGTERM, syscall.SIGINT:
		return actStop
	case syscall.SIGHUP:
		return actIgnore
	}
	return actNone
}

// exitBySignal ends the process as sig would have without a handler.
func exitBySignal(sig os.Signal) {
	signal.Reset(sig)
	syscall.Kill(os.Getpid(), sig.(syscall.Signal))
}

// signalName names sig as operators write it: "SIGUSR2".
func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGUSR2:
		return "SIGUSR2"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return sig.String()
}
