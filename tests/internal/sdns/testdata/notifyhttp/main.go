// Command notifyhttp is a tiny socket-activated service for the sdns tests:
// it serves HTTP on the one listening socket systemd passes (fd 3, checked
// against LISTEN_PID and LISTEN_FDS), answers every request with "pid=N"
// (its PID as the service manager sees it), and sends READY=1 to
// $NOTIFY_SOCKET once it serves. It exits 0 on SIGTERM.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("notifyhttp: ")
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" {
		log.Fatalf("want one socket from systemd: LISTEN_PID=%q LISTEN_FDS=%q, my PID %d",
			os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getpid())
	}
	// FileListener dups the descriptor; f stays open so that fd 3 remains
	// the socket systemd passed (tests look at /proc/PID/fd/3).
	f := os.NewFile(3, "LISTEN_FD_3")
	ln, err := net.FileListener(f)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "pid=%d\n", os.Getpid())
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if err := notify("READY=1"); err != nil {
		log.Fatal(err)
	}
	log.Printf("ready, pid %d", os.Getpid())
	<-sig
	log.Printf("stopping")
	srv.Close()
}

// notify sends one sd_notify message.
func notify(msg string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return fmt.Errorf("NOTIFY_SOCKET not set")
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(msg))
	return err
}
