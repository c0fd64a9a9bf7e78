// Package control is handover's control socket: its protocol, shared by the servers
// and the operator's tool (cmd/handover), and the one way the servers answer on it
// (Accept, Serve, Answer), for a process built with package graceful and for
// handover run's master alike: each is a Server.
//
// A client connects to the unix socket, writes one request line ("upgrade",
// "prepare", "commit", "abort" or "status", ended by a newline) and reads one
// response line: a JSON Response. The server answers only peers running as its own
// user or as root (SO_PEERCRED).
package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/wire"
)

// Requests.
const (
	// Upgrade asks the service to start a new generation and answers when it has
	// taken over or failed.
	Upgrade = "upgrade"
	// Prepare asks the service to start a new generation that does not accept
	// until Commit, and answers when it is ready and waiting (its PID) or failed.
	Prepare = "prepare"
	// Commit makes the prepared generation serve (the old one drains), and answers
	// once it has taken over.
	Commit = "commit"
	// Abort ends the prepared generation, or one being prepared, and answers once
	// it is dead.
	Abort = "abort"
	// Status asks for the service's status.
	Status = "status"
)

// MaxRequest and MaxResponse bound what either side reads.
const (
	MaxRequest  = 256
	MaxResponse = 1 << 20
)

// Response is the server's answer.
type Response struct {
	// OK is true when the request succeeded.
	OK bool `json:"ok"`
	// Error says why it did not.
	Error string `json:"error,omitempty"`
	// Moved is set when the process that answered has handed over to this PID: the
	// request should be sent again (a new connection reaches the current process).
	Moved int `json:"moved,omitempty"`
	// Stopping is set when the upgrade failed because the service is stopping (it was
	// abandoned, or refused).
	Stopping bool `json:"stopping,omitempty"`
	// PID and Generation name the process now serving (after an upgrade, the new one).
	PID        int `json:"pid,omitempty"`
	Generation int `json:"generation,omitempty"`
	// Status is the answer to a status request.
	Status *wire.Status `json:"status,omitempty"`
}

// Server is what a control socket answers for: a process built with package
// graceful, or handover run's master.
type Server interface {
	// Status returns the server's status, or why it cannot (it is exiting).
	Status() (wire.Status, error)
	// Upgrade runs req, one of Upgrade (an upgrade in one step), Prepare, Commit
	// and Abort (the steps of a two-phase upgrade), and returns its outcome: once
	// the new generation has taken over (Upgrade, Commit), is ready and waiting
	// (Prepare) or is dead (Abort), or the request failed or was refused.
	Upgrade(req string) Outcome
}

// Outcome is the outcome of an upgrade (or one of its steps) asked for on the
// control socket.
type Outcome struct {
	// PID and Generation name the new generation: the one now serving (Upgrade,
	// Commit), the one prepared (Prepare) or the one ended (Abort). They are set
	// when Err is nil.
	PID, Generation int
	// Err says why the upgrade failed, or was refused; nil when it succeeded.
	Err error
	// Moved is set when the process asked had already handed over to this PID:
	// the request should be sent again (a new connection reaches the current
	// process).
	Moved int
	// Stopping is set when the upgrade failed because the service is stopping (it
	// was abandoned, or refused).
	Stopping bool
}

// Answer answers request req (Status, or one of Upgrade's) for s.
func Answer(req string, s Server) Response {
	if req == Status {
		st, err := s.Status()
		if err != nil {
			return Response{Error: err.Error(), Stopping: true}
		}
		return Response{OK: true, PID: st.PID, Generation: st.Generation, Status: &st}
	}
	o := s.Upgrade(req)
	switch {
	case o.Err == nil:
		return Response{OK: true, PID: o.PID, Generation: o.Generation}
	case o.Moved != 0:
		return Response{Moved: o.Moved, Error: o.Err.Error()}
	}
	return Response{Error: o.Err.Error(), Stopping: o.Stopping}
}

// ParseRequest parses a request line (without its newline).
func ParseRequest(line string) (string, error) {
	switch line {
	case Upgrade, Prepare, Commit, Abort, Status:
		return line, nil
	}
	if len(line) > 32 {
		line = line[:32] + "..."
	}
	return "", fmt.Errorf("unknown request %q (want %s)", line, requests)
}

// requests lists the requests, for errors.
var requests = strings.Join([]string{Upgrade, Prepare, Commit, Abort, Status}, ", ")

// ReadRequest reads one request line of at most MaxRequest bytes. The line must end
// with a newline: bytes the peer sends without one, before it closes its end or
// stops sending, are not a request.
func ReadRequest(r io.Reader) (string, error) {
	line, err := readLine(bufio.NewReaderSize(r, 64), MaxRequest)
	if err != nil {
		return "", err
	}
	return ParseRequest(strings.TrimSuffix(line, "\r"))
}

// ReadResponse reads one response line.
func ReadResponse(r io.Reader) (Response, error) {
	var resp Response
	line, err := readLine(bufio.NewReader(r), MaxResponse)
	if err != nil {
		return resp, err
	}
	if err := json.Unmarshal([]byte(line), &resp); err != nil {
		return resp, fmt.Errorf("malformed response from the control socket: %v", err)
	}
	if !resp.OK && resp.Error == "" && resp.Moved == 0 {
		return resp, errors.New("malformed response from the control socket: neither ok nor an error")
	}
	return resp, nil
}

// Encode formats resp as one line.
func Encode(resp Response) []byte {
	b, _ := json.Marshal(resp)
	return append(b, '\n')
}

// errNoNewline is why a line a peer ended (closed its end) without a newline is
// refused: a request or an answer cut short is not taken for a whole one.
var errNoNewline = fmt.Errorf("%w: the line ends without a newline", io.ErrUnexpectedEOF)

// readLine reads one line ended by "\n" (or "\r\n") and returns it without its end.
// A line longer than max bytes is an error, found after reading at most max plus
// two of br's buffers; so is a line the reader ends (EOF, a deadline) before its
// newline.
func readLine(br *bufio.Reader, max int) (string, error) {
	var line []byte
	for {
		part, err := br.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > max+2 {
			return "", fmt.Errorf("line longer than %d bytes", max)
		}
		switch {
		case err == nil:
			line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
			if len(line) > max {
				return "", fmt.Errorf("line longer than %d bytes", max)
			}
			return string(line), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case len(line) > 0 && errors.Is(err, io.EOF):
			return "", errNoNewline
		case len(line) > 0:
			return "", fmt.Errorf("%d bytes without a newline, then: %w", len(line), err)
		}
		return "", err
	}
}
