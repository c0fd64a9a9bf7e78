// Command suspicious is a Type=notify service (NotifyAccess=main) that does, once
// each, the things systemd complains about on its console, so that the sdns tests
// can check that Suspicious still matches how this systemd words its complaints:
//
//  1. a child process (not the main one) sends a notification: refused;
//  2. the main process names its own child as MAINPID=: accepted, with a warning
//     that the new main process is not systemd's child.
//
// Run as "suspicious child" it is the child of step 1: it sends STATUS= and waits a
// second, so that systemd still finds it when it reads the message.
package main

import (
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("suspicious: ")
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := notify("STATUS=from a child"); err != nil {
			log.Fatal(err)
		}
		time.Sleep(time.Second)
		return
	}
	child := exec.Command(os.Args[0], "child")
	child.Stderr = os.Stderr
	if err := child.Run(); err != nil {
		log.Fatal(err)
	}
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		log.Fatal(err)
	}
	if err := notify(fmt.Sprintf("MAINPID=%d\nREADY=1", sleeper.Process.Pid)); err != nil {
		log.Fatal(err)
	}
	sleeper.Wait()
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
