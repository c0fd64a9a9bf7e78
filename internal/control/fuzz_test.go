package control

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/seed-a7250cfa/handover/internal/wire"
)

// The control socket is reachable by any local process that gets past its mode and
// peer check, and a client reads whatever the socket's owner writes: everything read
// here is untrusted. No input may panic or make a reader hang, and every bad one gets
// an error saying what was wrong. The seeds are in testdata/fuzz.

// FuzzParseRequest: exactly "upgrade", "prepare", "commit", "abort" and "status" are
// requests; anything else is an
// error that quotes the line, clipped, so that a huge or hostile line cannot flood
// the log.
func FuzzParseRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, line string) {
		req, err := ParseRequest(line)
		if isRequest(line) {
			if err != nil || req != line {
				t.Fatalf("ParseRequest(%q) = %q, %v", line, req, err)
			}
			return
		}
		if err == nil || req != "" {
			t.Fatalf("ParseRequest(%q) = %q, %v; want an error", line, req, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "unknown request") || !strings.Contains(msg, "want upgrade, prepare, commit, abort, status") {
			t.Fatalf("ParseRequest(%q): error %q does not say what is wrong", line, msg)
		}
		if len(msg) > 200 {
			t.Fatalf("ParseRequest of a %d-byte line: a %d-byte error", len(line), len(msg))
		}
	})
}

// endless is an input that never ends and never has a newline: what a client that
// sends forever looks like to a reader.
type endless struct {
	prefix *bytes.Reader
	read   int
}

func (e *endless) Read(p []byte) (int, error) {
	n, _ := e.prefix.Read(p)
	for i := n; i < len(p); i++ {
		p[i] = 'x'
	}
	e.read += len(p)
	return len(p), nil
}

// FuzzReadRequest: a request is the first line, without its end and one more "\r";
// it must be a known request, and ended by a newline (bytes without one are not a
// request, whatever they say). The same input followed by endless bytes without a
// newline must end in an error after a bounded read, not a hang or unbounded memory.
func FuzzReadRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ReadRequest(bytes.NewReader(data))
		// The line without its end ("\n" or "\r\n", as bufio.Reader.ReadLine cuts it),
		// then without one "\r", as ReadRequest trims it.
		line, _, newline := bytes.Cut(data, []byte("\n"))
		want := string(line)
		if newline {
			want = strings.TrimSuffix(want, "\r")
		}
		want = strings.TrimSuffix(want, "\r")
		switch {
		case err == nil && !newline:
			t.Fatalf("ReadRequest(%q) = %q, but the input has no newline", data, req)
		case err == nil && req != want:
			t.Fatalf("ReadRequest(%q) = %q, but the first line is %q", data, req, want)
		case err == nil && !isRequest(req):
			t.Fatalf("ReadRequest(%q) = %q, not a request", data, req)
		case err != nil && err.Error() == "":
			t.Fatalf("ReadRequest(%q): an empty error", data)
		case err != nil && newline && len(line) <= MaxRequest && isRequest(want):
			t.Fatalf("ReadRequest(%q): %v, but the first line is %q", data, err, want)
		}
		if bytes.IndexByte(data, '\n') >= 0 {
			return
		}
		e := &endless{prefix: bytes.NewReader(data)}
		if _, err := ReadRequest(e); err == nil {
			t.Fatalf("ReadRequest(%q then endless bytes) succeeded", data)
		} else if !strings.Contains(err.Error(), "line longer than") {
			t.Fatalf("ReadRequest(%q then endless bytes): %v, want it to say the line is too long", data, err)
		}
		if e.read > MaxRequest+2*64 {
			t.Fatalf("ReadRequest read %d bytes of an endless line; the bound is %d", e.read, MaxRequest)
		}
	})
}

// FuzzReadResponse: a response is one line of JSON that is ok, an error, or a move.
// What is accepted encodes back to a line that reads as the same response.
func FuzzReadResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := ReadResponse(bytes.NewReader(data))
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("ReadResponse(%q): an empty error", data)
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
				!strings.Contains(err.Error(), "malformed response") && !strings.Contains(err.Error(), "line longer than") {
				t.Fatalf("ReadResponse(%q): %v does not say what is wrong", data, err)
			}
			return
		}
		if !resp.OK && resp.Error == "" && resp.Moved == 0 {
			t.Fatalf("ReadResponse(%q) accepted %+v: neither ok, nor an error, nor a move", data, resp)
		}
		enc := Encode(resp)
		if bytes.IndexByte(enc, '\n') != len(enc)-1 {
			t.Fatalf("Encode(%+v) = %q: not one line", resp, enc)
		}
		again, err := ReadResponse(bytes.NewReader(enc))
		if err != nil || !reflect.DeepEqual(again, resp) {
			t.Fatalf("ReadResponse(%q) = %+v; re-encoded as %q it reads %+v, %v", data, resp, enc, again, err)
		}
	})
}

// FuzzEncodeResponse: whatever the server puts in a response (an error text with
// newlines, a listener name, any PID) is encoded on one line and read back unchanged.
func FuzzEncodeResponse(f *testing.F) {
	f.Add(true, "", 0, 4242, 2, "serving", "http", "127.0.0.1:8080")
	f.Add(false, "upgrade failed:\nexit status 1\r\n", 0, 0, 0, "", "", "")
	f.Add(false, "moved", 77, 0, 0, "handed-over", "a:b", "/run/x y.sock")
	f.Fuzz(func(t *testing.T, ok bool, errText string, moved, pid, gen int, state, name, addr string) {
		resp := Response{OK: ok, Error: errText, Moved: moved, PID: pid, Generation: gen}
		if state != "" {
			resp.Status = &wire.Status{PID: pid, Generation: gen, State: state, Listeners: []wire.Socket{{Name: name, Addr: addr}}}
		}
		enc := Encode(resp)
		if bytes.IndexByte(enc, '\n') != len(enc)-1 {
			t.Fatalf("Encode(%+v) = %q: not one line", resp, enc)
		}
		got, err := ReadResponse(bytes.NewReader(enc))
		if !ok && errText == "" && moved == 0 {
			if err == nil {
				t.Fatalf("a response that is neither ok, an error nor a move was accepted: %q", enc)
			}
			return
		}
		if len(enc) > MaxResponse {
			if err == nil {
				t.Fatalf("a %d-byte response was accepted", len(enc))
			}
			return
		}
		if err != nil {
			t.Fatalf("ReadResponse(Encode(%+v) = %q): %v", resp, enc, err)
		}
		valid := utf8.ValidString(errText) && utf8.ValidString(state) && utf8.ValidString(name) && utf8.ValidString(addr)
		if valid && !reflect.DeepEqual(got, resp) {
			t.Fatalf("round trip of %+v gave %+v", resp, got)
		}
	})
}

// isRequest reports whether s is one of the requests.
func isRequest(s string) bool {
	switch s {
	case Upgrade, Prepare, Commit, Abort, Status:
		return true
	}
	return false
}
