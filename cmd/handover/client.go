package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/proc"
)

// ask sends one request at the moment at (at once for a zero at) and reads the
// answer, within timeout of sending it.
func ask(path, req string, at time.Time, timeout time.Duration) (control.Response, error) {
	if !at.IsZero() {
		waitUntil(at.Add(-dialAhead))
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return control.Response{}, explainDial(path, err)
	}
	defer c.Close()
	waitUntil(at)
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		// The service answers a peer it refuses at once and closes without reading
		// the request: the answer may be waiting although the write failed.
		if resp, rerr := control.ReadResponse(c); rerr == nil {
			return resp, nil
		}
		return control.Response{}, fmt.Errorf("sending %q to %s: %w", req, path, err)
	}
	resp, err := control.ReadResponse(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return resp, errTimedOut
	}
	if errors.Is(err, io.EOF) {
		return resp, fmt.Errorf("%s closed the connection without answering (did the service stop?)", path)
	}
	return resp, err
}

func explainDial(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no control socket at %s: the service is not running, or it was started without this control socket", path)
	case errors.Is(err, syscall.ECONNREFUSED) && !isSocket(path):
		// (Linux refuses a connection to a file that is not a socket, too.)
		return fmt.Errorf("%s is not a socket: check -control", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing is listening on %s: the service is not running (the socket file is stale)", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: run as the service's user or as root", path)
	case errors.Is(err, syscall.ENOTSOCK), errors.Is(err, syscall.EPROTOTYPE):
		return fmt.Errorf("%s is not a control socket: check -control", path)
	}
	return fmt.Errorf("connecting to %s: %w", path, err)
}

// isSocket reports whether the file at path is a socket.
func isSocket(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().Type() == fs.ModeSocket
}

// errTimedOut is what ask returns when the answer did not come in time.
var errTimedOut = errors.New("timed out")

// steps are the commands that run an upgrade or one of its steps, and their
// requests.
var steps = map[string]string{"reload": control.Upgrade, "prepare": control.Prepare, "commit": control.Commit, "abort": control.Abort}

// what names what failed, in an error.
var what = map[string]string{"reload": "upgrade", "prepare": "prepare", "commit": "commit", "abort": "abort"}

// done says what a step did, on success.
var done = map[string]string{
	"reload":  "upgraded: PID %d, generation %d\n",
	"prepare": "prepared: PID %d, generation %d (ready, not accepting: handover commit makes it serve, handover abort ends it)\n",
	"commit":  "committed: PID %d, generation %d\n",
	"abort":   "aborted: PID %d, generation %d\n",
}

// upgradeStep runs cmd, which asks for req (see steps) at the moment at (at once
// for a zero at), and waits for the outcome.
func upgradeStep(cmd, req, path string, at time.Time, timeout time.Duration, stdout, stderr io.Writer) int {
	deadline := time.Now().Add(timeout)
	if at.After(time.Now()) {
		deadline = at.Add(timeout)
	}
	for attempt := 0; ; attempt++ {
		resp, err := ask(path, req, at, time.Until(deadline))
		if errors.Is(err, errTimedOut) {
			fmt.Fprintf(stderr, "handover %s: no outcome within %s: the %s may still be in progress (see handover status -control %s); raise -timeout above the service's upgrade timeout\n", cmd, timeout.Round(time.Millisecond), what[cmd], path)
			return 1
		}
		if err != nil {
			fmt.Fprintf(stderr, "handover %s: %v\n", cmd, err)
			return 1
		}
		if resp.Moved != 0 && attempt < 3 {
			// We reached a generation that had just handed over; the next
			// connection reaches the current one.
			continue
		}
		if !resp.OK {
			if resp.Stopping && os.Getenv("INVOCATION_ID") != "" {
				// The service is stopping, under systemd: the unit is going down,
				// and a failing ExecReload= would only mark it failed as well.
				fmt.Fprintf(stderr, "handover %s: no upgrade: %s\n", cmd, printableLines(resp.Error))
				return 0
			}
			fmt.Fprintf(stderr, "handover %s: %s failed: %s\n", cmd, what[cmd], printableLines(resp.Error))
			return 1
		}
		fmt.Fprintf(stdout, done[cmd], resp.PID, resp.Generation)
		return 0
	}
}

// printableLines is s with each line proc.Printable: what a service answers (its
// error, a failed process's stderr lines) cannot act on the operator's terminal,
// whatever version of handover the service runs.
func printableLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = proc.Printable(l)
	}
	return strings.Join(lines, "\n")
}

// dialAhead is how long before a -at moment the command connects; the request goes
// at the moment itself.
const dialAhead = 200 * time.Millisecond

// waitUntil returns at t, at once for a zero or past t. It sleeps until just before
// and spins the rest: late by microseconds, not by the millisecond or so the
// runtime's timers may add.
func waitUntil(t time.Time) {
	if t.IsZero() {
		return
	}
	if d := time.Until(t) - time.Millisecond; d > 0 {
		time.Sleep(d)
	}
	for time.Now().Before(t) {
	}
}

// maxAt bounds how far ahead -at may be: a prepared generation waits for its commit
// only so long (5 minutes by default).
const maxAt = time.Hour

// parseAt parses -at: an RFC 3339 time (2030-01-02T15:04:05.250Z) or, as date(1)
// takes it, @UNIX_SECONDS with an optional fraction (@1893596645.25). A moment more
// than an hour after now is refused; one already past is now.
func parseAt(s string, now time.Time) (time.Time, error) {
	var at time.Time
	if secs, ok := strings.CutPrefix(s, "@"); ok {
		f, err := strconv.ParseFloat(secs, 64)
		if err != nil || f <= 0 {
			return at, fmt.Errorf("-at %q: want @UNIX_SECONDS (e.g. @%d) or an RFC 3339 time (e.g. %s)", s, now.Unix()+10, now.Add(10*time.Second).UTC().Format(time.RFC3339))
		}
		at = time.Unix(0, int64(f*1e9))
	} else {
		var err error
		if at, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return at, fmt.Errorf("-at %q: want an RFC 3339 time (e.g. %s) or @UNIX_SECONDS", s, now.Add(10*time.Second).UTC().Format(time.RFC3339))
		}
	}
	if at.Sub(now) > maxAt {
		return at, fmt.Errorf("-at %s is %s from now: more than %s (a prepared generation waits for its commit only so long)", s, at.Sub(now).Round(time.Second), maxAt)
	}
	return at, nil
}
