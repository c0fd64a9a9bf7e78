// Command udponly is a process whose only socket is a packet socket, as the README
// and Upgrader.ListenPacket's doc describe it: no Server, no Serve, so it calls
// u.Ready itself once it reads from its socket. It takes its UDP socket like the demo
// (from the parent generation, or by binding -listen), writes -pidfile, and answers
// each datagram with "pid=P " followed by the datagram. When u.Exit is closed (a new
// generation took over) it stops reading, then returns after u.Wait.
//
// If the file -no-ready-file names exists as it starts, it neither reads nor calls
// Ready: a build that forgot to, which an upgrade must not take as ready.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "UDP address to bind when no socket is passed")
	pidfile := flag.String("pidfile", "", "PID file")
	drain := flag.Duration("drain-timeout", 10*time.Second, "drain deadline")
	probation := flag.Duration("probation", 0, "Config.Probation")
	upgradeTimeout := flag.Duration("upgrade-timeout", 0, "Config.UpgradeTimeout")
	noReadyFile := flag.String("no-ready-file", "", "if this file exists at start, never call Ready")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	u, err := graceful.New(graceful.Config{Logger: log, PIDFile: *pidfile, DrainTimeout: *drain,
		Probation: *probation, UpgradeTimeout: *upgradeTimeout})
	if err != nil {
		log.Error("new", "err", err)
		os.Exit(1)
	}
	pc, err := u.ListenPacket("udp", "udp", *listen)
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	if _, err := os.Stat(*noReadyFile); *noReadyFile != "" && err == nil {
		log.Info("not calling Ready", "pid", os.Getpid(), "no_ready", true)
		<-u.Exit()
		u.Wait()
		return
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "pid=%d %s", os.Getpid(), buf[:n]), from)
		}
	}()
	if err := u.Ready(); err != nil {
		log.Error("ready", "err", err)
		os.Exit(1)
	}
	<-u.Exit()
	// Stop reading: the next generation reads from the same socket. A read in
	// progress is interrupted by a deadline, not by closing the socket.
	pc.(*net.UDPConn).SetReadDeadline(time.Now())
	<-read
	u.Wait()
}
