package control

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"
)

// Limits of a control socket's connections. A connection costs the server a
// descriptor for as long as it is open: the cap and the short wait for the request
// line bound what idle or slow clients can take (a process short of descriptors
// fails its upgrades).
const (
	// MaxConns is how many connections a control socket serves at once. One more is
	// answered at once with an error (busy) and closed, without reading its request.
	MaxConns = 16
	// ReadTimeout bounds how long a client may take to send its request line.
	ReadTimeout = 2 * time.Second
	// writeTimeout bounds the write of an answer.
	writeTimeout = 2 * time.Second
	// acceptRetryMin and acceptRetryMax bound the pause after a failed accept (the
	// process is out of descriptors): it starts at the minimum and doubles at each
	// failure in a row, as net/http's Server.Serve does.
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// readTimeout is ReadTimeout; tests shorten it.
var readTimeout = ReadTimeout

// Accept answers every connection of ln, the control socket, each in a goroutine of
// its own (Serve), until ln is closed. At most MaxConns are served at once; a
// connection beyond them is answered at once with an error saying so (event
// control_busy) and closed. An accept that fails otherwise (the process is out of
// descriptors) is logged (event control_accept_failed) and tried again after a
// pause that grows from 5 ms to 1 s while it keeps failing: the control socket
// answers again once descriptors are free.
func Accept(ln net.Listener, log *slog.Logger, s Server) {
	slots := make(chan struct{}, MaxConns)
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			pause = retryPause(pause)
			log.Warn("control socket: accept failed; retrying", "event", "control_accept_failed", "err", err, "retry_in", pause.String())
			time.Sleep(pause)
			continue
		}
		pause = 0
		select {
		case slots <- struct{}{}:
			go func() {
				defer func() { <-slots }()
				Serve(c, log, s)
			}()
		default:
			log.Warn("control socket: too many connections; refused one", "event", "control_busy", "max", MaxConns)
			reply(c, Response{Error: fmt.Sprintf("busy: %d control connections are open at once (the most served); try again", MaxConns)})
			c.Close()
		}
	}
}

// retryPause returns the pause after a failed accept that follows one of last (0:
// the first failure).
func retryPause(last time.Duration) time.Duration {
	if last == 0 {
		return acceptRetryMin
	}
	return min(2*last, acceptRetryMax)
}

// reply writes r to c, within writeTimeout.
func reply(c net.Conn, r Response) {
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	c.Write(Encode(r))
}

// Serve answers one connection c of a control socket, then closes it. A peer that
// runs neither as this process's user nor as root is refused, and log says so
// (event control_refused). Otherwise the request line is read: a client that sends
// none, or none ended by a newline, within ReadTimeout (2 s) or before it closes its
// end is answered with an error (event control_bad_request), and nothing runs. An
// upgrade (or prepare, commit, abort) whose client has gone (closed its end; it can
// no longer read the outcome) by the time its request is read is not run (event
// control_abandoned): a
// `handover reload` that gave up while the request waited in the socket's queue
// does not upgrade the service later, unasked. Otherwise s's answer (Answer) is
// written.
func Serve(c net.Conn, log *slog.Logger, s Server) {
	defer c.Close()
	uid, ok, err := PeerAllowed(c)
	if err != nil || !ok {
		log.Warn("control socket: refused a peer", "event", "control_refused", "uid", uid, "err", err)
		reply(c, Response{Error: fmt.Sprintf("permission denied: uid %d may not control this service (only uid %d or root)", uid, os.Geteuid())})
		return
	}
	c.SetReadDeadline(time.Now().Add(readTimeout))
	req, err := ReadRequest(c)
	if err != nil {
		why := err.Error()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			why = fmt.Sprintf("no whole request line within %s", readTimeout)
		}
		log.Warn("control socket: bad request", "event", "control_bad_request", "err", why)
		reply(c, Response{Error: fmt.Sprintf("bad request: %s; a request is one line (%s) ended by a newline", why, requests)})
		return
	}
	c.SetReadDeadline(time.Time{})
	if req != Status && peerGone(c) {
		log.Warn("control socket: the client of an upgrade request has gone; not upgrading", "event", "control_abandoned", "uid", uid, "request", req)
		return
	}
	reply(c, Answer(req, s))
}
