package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a7250cfa/handover/internal/control"
	"github.com/seed-a7250cfa/handover/internal/proc"
)

// ask sends one request and reads the answer.
func ask(path, req string, timeout time.Duration) (control.Response, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return control.Response{}, explainDial(path, err)
	}
	defer c.Close()
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

// upgradeStep runs cmd, which asks for req (see steps), and waits for the outcome.
func upgradeStep(cmd, req, path string, timeout time.Duration, stdout, stderr io.Writer) int {
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		resp, err := ask(path, req, time.Until(deadline))
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
