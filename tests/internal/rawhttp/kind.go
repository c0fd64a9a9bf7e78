package rawhttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// Kind classifies the outcome of one request as a client sees it.
type Kind uint8

// Outcome kinds. OK and Status are decided from a response; the others are
// decided from an error by Classify.
const (
	OK      Kind = iota // a 2xx response was read in full
	Refused             // connect() got ECONNREFUSED
	Reset               // ECONNRESET, ECONNABORTED or EPIPE
	EOF                 // the server closed the connection before or while sending a response
	Timeout             // a deadline expired (net timeout, context deadline)
	Status              // a complete response with a non-2xx status
	Other               // anything else, including protocol errors
)

// NumKinds is the number of distinct Kind values, for arrays indexed by Kind.
const NumKinds = int(Other) + 1

var kindNames = [NumKinds]string{"OK", "Refused", "Reset", "EOF", "Timeout", "Status", "Other"}

// String returns the kind's name, e.g. "Refused".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// StatusError is the error for a complete response whose status is not 2xx.
// Classify maps it to Status.
type StatusError struct {
	Code int
}

// Error implements error.
func (e *StatusError) Error() string { return fmt.Sprintf("rawhttp: HTTP status %d", e.Code) }

// Classify maps an error from Dial, Do or Stream (or any net error) to a Kind.
// A nil error is OK. Order matters: a timeout is reported as Timeout even when
// it is wrapped together with other information.
func Classify(err error) Kind {
	var se *StatusError
	var ne net.Error
	switch {
	case err == nil:
		return OK
	case errors.As(err, &se):
		return Status
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return Reset
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return Timeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return EOF
	}
	return Other
}

// KindOf classifies a (response, error) pair as returned by Do or Stream:
// Classify(err) when err is non-nil, Status for a non-2xx response, else OK.
func KindOf(resp *Response, err error) Kind {
	if err != nil {
		return Classify(err)
	}
	if resp == nil || resp.Status < 200 || resp.Status > 299 {
		return Status
	}
	return OK
}
