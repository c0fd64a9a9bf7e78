// Package control is the protocol of handover's control socket, shared by the servers
// (package graceful, and handover run's master in internal/master: Serve) and the
// operator's tool (cmd/handover).
//
// A client connects to the unix socket, writes one request line ("upgrade" or
// "status") and reads one response line: a JSON Response. The server answers only
// peers running as its own user or as root (SO_PEERCRED).
package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Requests.
const (
	// Upgrade asks the service to start a new generation and answers when it has
	// taken over or failed.
	Upgrade = "upgrade"
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
	// Status is the answer to a status request: a graceful.Status in JSON (kept
	// raw here so that this package does not depend on graceful).
	Status json.RawMessage `json:"status,omitempty"`
}

// ParseRequest parses a request line (without its newline).
func ParseRequest(line string) (string, error) {
	switch line {
	case Upgrade, Status:
		return line, nil
	}
	if len(line) > 32 {
		line = line[:32] + "..."
	}
	return "", fmt.Errorf("unknown request %q (want %q or %q)", line, Upgrade, Status)
}

// ReadRequest reads one request line of at most MaxRequest bytes.
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

// StatusResponse is the answer to a status request from the process pid of
// generation gen: st (a graceful.Status) in JSON.
func StatusResponse(pid, gen int, st any) Response {
	b, err := json.Marshal(st)
	if err != nil {
		return Response{Error: "encoding the status: " + err.Error()}
	}
	return Response{OK: true, PID: pid, Generation: gen, Status: b}
}

// Encode formats resp as one line.
func Encode(resp Response) []byte {
	b, _ := json.Marshal(resp)
	return append(b, '\n')
}

func readLine(br *bufio.Reader, max int) (string, error) {
	var line []byte
	for {
		part, isPrefix, err := br.ReadLine()
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		line = append(line, part...)
		if len(line) > max {
			return "", fmt.Errorf("line longer than %d bytes", max)
		}
		if !isPrefix {
			return string(line), nil
		}
	}
}
