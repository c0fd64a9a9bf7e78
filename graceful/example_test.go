package graceful_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/seed-a7250cfa/handover/graceful"
)

// A Drainer on its own, for a listener that is not the Upgrader's: Drain stops
// accepting at once and waits for the connections it tracks, force-closing what is
// left at the deadline.
func ExampleDrainer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var d graceful.Drainer
	ln = d.Listener(ln)
	served := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo %s", line)
		close(served)
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "hello")
	<-served
	reply, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(reply)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println("drain:", d.Drain(ctx), d.Counts().Total(), "open")
	_, err = ln.Accept()
	fmt.Println("accept after the drain:", errors.Is(err, net.ErrClosed))
	// Output:
	// echo hello
	// drain: <nil> 0 open
	// accept after the drain: true
}

// Handlers of long-lived responses watch Draining to end them politely: here a
// stream of events says "bye" when the server drains, instead of being cut at the
// drain deadline.
func ExampleDraining() {
	events := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				fmt.Fprint(w, "data: tick\n\n")
				rc.Flush()
			case <-graceful.Draining(r.Context()):
				fmt.Fprint(w, "event: bye\ndata: reconnect\n\n")
				return
			case <-r.Context().Done():
				return
			}
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &graceful.Server{Server: http.Server{Handler: events}}
	go srv.Serve(ln)

	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	br.ReadString('\n') // the first tick: the stream is running
	go srv.Shutdown(context.Background())
	rest, _ := io.ReadAll(br)
	fmt.Println(strings.HasSuffix(string(rest), "event: bye\ndata: reconnect\n\n"))
	// Output: true
}

// Shutdown drains one Server now (the process's Upgrader drains them all when a new
// generation takes over or on SIGTERM): requests in flight are answered, and Serve
// returns http.ErrServerClosed once the Server has drained.
func ExampleServer_Shutdown() {
	slow := make(chan struct{})
	srv := &graceful.Server{Server: http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(slow)
		time.Sleep(50 * time.Millisecond) // a request in flight when the drain starts
		fmt.Fprintln(w, "answered")
	})}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-slow
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println("shutdown:", srv.Shutdown(ctx))
	fmt.Print(<-got)
	fmt.Println("serve:", <-served)
	// Output:
	// shutdown: <nil>
	// answered
	// serve: http: Server closed
}
