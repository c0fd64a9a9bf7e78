package graceful

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The handover channel is a unix stream socket pair between a process and the child
// it starts. Each message is one line:
//
//	child → parent   "ready <pid>"     serving on the inherited sockets
//	child → parent   "error <text>"    cannot start; about to exit
//	parent → child   "main"            handed over: you are the current generation
//	parent → child   "abort <text>"    upgrade abandoned; you will be killed
//	child → parent   "done"            no longer the current generation (it handed
//	                                   over in turn, or is stopping): its exit is
//	                                   no crash, and needs no replacement
const maxMessage = 4096

// message is one line of the handover channel.
type message struct {
	verb string // ready, error, main, abort, done
	pid  int    // ready
	text string // error, abort
}

func (m message) String() string {
	switch m.verb {
	case "ready":
		return "ready " + strconv.Itoa(m.pid)
	case "error", "abort":
		return m.verb + " " + oneLine(m.text)
	}
	return m.verb
}

// parseMessage parses one line (without its newline).
func parseMessage(line string) (message, error) {
	verb, rest, _ := strings.Cut(line, " ")
	switch verb {
	case "ready":
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 || strings.HasPrefix(rest, "+") {
			return message{}, fmt.Errorf("handover channel: %q: ready needs a positive PID", clip(line))
		}
		return message{verb: verb, pid: pid}, nil
	case "error", "abort":
		return message{verb: verb, text: rest}, nil
	case "main", "done":
		if rest != "" {
			return message{}, fmt.Errorf("handover channel: %q: %s takes no argument", clip(line), verb)
		}
		return message{verb: verb}, nil
	}
	return message{}, fmt.Errorf("handover channel: unknown message %q", clip(line))
}

// channel is one end of the handover channel.
type channel struct {
	conn net.Conn
	r    *bufio.Reader
}

func newChannel(f *os.File) (*channel, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handover channel: %w", err)
	}
	return &channel{conn: c, r: bufio.NewReaderSize(c, 512)}, nil
}

// socketPair returns the parent's end (as a channel) and the child's end (a file to
// pass at exec).
func socketPair() (*channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("handover channel: %w", err)
	}
	parent, err := newChannel(os.NewFile(uintptr(fds[0]), "handover-channel"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return parent, os.NewFile(uintptr(fds[1]), "handover-channel"), nil
}

func (c *channel) send(m message, timeout time.Duration) error {
	c.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := io.WriteString(c.conn, m.String()+"\n")
	return err
}

// receive reads one message. io.EOF means the other end closed (its process exited)
// between messages; io.ErrUnexpectedEOF that it closed in the middle of one, whose
// start is discarded rather than parsed ("ready 12" of "ready 123\n" is not a
// message).
func (c *channel) receive() (message, error) {
	var line []byte
	for {
		part, err := c.r.ReadSlice('\n')
		line = append(line, part...)
		n := len(line)
		if err == nil {
			n-- // the newline
		}
		if n > maxMessage {
			return message{}, fmt.Errorf("handover channel: message longer than %d bytes", maxMessage)
		}
		switch {
		case err == nil:
			return parseMessage(string(line[:n]))
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return message{}, io.ErrUnexpectedEOF
		default:
			return message{}, err
		}
	}
}

func (c *channel) close() { c.conn.Close() }

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > maxMessage-16 {
		s = s[:maxMessage-16]
	}
	return s
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
