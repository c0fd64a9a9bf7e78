// Command lines serves a line protocol over raw TCP: each line a client sends is
// answered with the server's PID and the line. It upgrades on SIGUSR2 without losing
// a line: once draining, it answers the line it has read with "bye" appended and
// closes the connection, and the client reconnects, to the new generation.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:7000", "address to serve")
	flag.Parse()
	u, err := graceful.New(graceful.Config{})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen("lines", "tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	// The Drainer tracks every connection; since ln is the Upgrader's, the Upgrader
	// drains it when a new generation takes over (or on SIGTERM).
	var d graceful.Drainer
	ln = d.Listener(ln)
	go func() {
		var pause time.Duration
		for {
			c, err := ln.Accept() // waits while draining; closed once the drain is over
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				// Out of descriptors, say: try again, after a pause that grows from
				// 5 ms to 1 s, as net/http's Server does. (A loop that returned here
				// would stop serving for good while the process lives on.)
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				time.Sleep(pause)
				continue
			}
			pause = 0
			go serve(c, &d)
		}
	}()
	if err := u.Ready(); err != nil {
		log.Fatal(err)
	}
	u.Wait()
}

func serve(c net.Conn, d *graceful.Drainer) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		// Between lines the connection is idle: a drain closes it after a grace
		// period if the client sends nothing more.
		d.ConnState(c, http.StateIdle)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		d.ConnState(c, http.StateActive)
		select {
		case <-d.Draining():
			// Like HTTP's "Connection: close": this line is answered, the next
			// goes to a new connection.
			fmt.Fprintf(c, "%d %s bye\n", os.Getpid(), strings.TrimSpace(line))
			return
		default:
			fmt.Fprintf(c, "%d %s\n", os.Getpid(), strings.TrimSpace(line))
		}
	}
}
