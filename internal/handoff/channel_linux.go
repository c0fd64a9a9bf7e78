//go:build linux

package handoff

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxFiles bounds the descriptors one message may carry.
const maxFiles = 8

// Channel is one end of the handover channel.
type Channel struct {
	conn *net.UnixConn
}

// NewChannel takes f, one end of a channel, and owns it.
func NewChannel(f *os.File) (*Channel, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handover channel: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("handover channel: not a unix socket")
	}
	return &Channel{conn: uc}, nil
}

// SocketPair returns the parent's end (as a Channel) and the child's end (a file to
// pass at exec; close-on-exec until passed deliberately).
func SocketPair() (*Channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("handover channel: %w", err)
	}
	parent, err := NewChannel(os.NewFile(uintptr(fds[0]), "handover-channel"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return parent, os.NewFile(uintptr(fds[1]), "handover-channel"), nil
}

// OfferNext opens a handover channel to the serving child for a new one, on link
// (the master's copy of the serving child's link, LinkName): it sends "next" with
// one end of a new socket pair, without waiting (a serving child that is gone, or
// does not read, refuses it), and returns the other end, for the new child
// (close-on-exec until passed deliberately).
func OfferNext(link int) (int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("handover channel: %w", err)
	}
	err = unix.Sendmsg(link, []byte(Message{Verb: Next}.String()), unix.UnixRights(fds[0]), nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	unix.Close(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return -1, fmt.Errorf("handover link: %w", err)
	}
	return fds[1], nil
}

// Send sends m, waiting at most timeout for room in the socket's buffer. The
// caller keeps (and closes) m.Files.
func (c *Channel) Send(m Message, timeout time.Duration) error {
	if len(m.Files) > maxFiles {
		return fmt.Errorf("handover channel: %d descriptors in one message (at most %d)", len(m.Files), maxFiles)
	}
	var oob []byte
	if len(m.Files) > 0 {
		fds := make([]int, len(m.Files))
		for i, f := range m.Files {
			fd, err := RawFD(f)
			if err != nil {
				return fmt.Errorf("handover channel: %s: %w", f.Name(), err)
			}
			fds[i] = fd
		}
		oob = unix.UnixRights(fds...)
	}
	c.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, _, err := c.conn.WriteMsgUnix([]byte(m.String()), oob, nil)
	return err
}

// Receive reads one message. io.EOF means the other end closed (its process
// exited, or it closed the channel), and comes only after every message it sent
// was read. Descriptors that come with the message are the caller's, close-on-exec.
func (c *Channel) Receive() (Message, error) {
	bp := receiveBufs.Get().(*[]byte)
	defer receiveBufs.Put(bp)
	buf := *bp
	oob := make([]byte, unix.CmsgSpace(maxFiles*4))
	n, oobn, flags, _, err := c.conn.ReadMsgUnix(buf, oob)
	if errors.Is(err, unix.ECONNRESET) {
		// The other end was closed with messages of ours unread in it (its process
		// exited while they were on their way). Linux reports that once, and to a
		// SOCK_SEQPACKET read before the messages queued here: what it said before
		// it went (a "done") comes next, then the EOF of its close.
		n, oobn, flags, _, err = c.conn.ReadMsgUnix(buf, oob)
	}
	if err != nil {
		return Message{}, err
	}
	files, ferr := parseRights(oob[:oobn])
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		ferr = errors.Join(ferr, fmt.Errorf("handover channel: more than %d descriptors in one message", maxFiles))
	case flags&unix.MSG_TRUNC != 0 || n > maxMessage:
		ferr = errors.Join(ferr, fmt.Errorf("handover channel: message longer than %d bytes", maxMessage))
	case n == 0 && oobn == 0:
		// A SOCK_SEQPACKET read of nothing is the peer's close.
		return Message{}, io.EOF
	}
	if ferr != nil {
		closeAll(files)
		return Message{}, ferr
	}
	m, err := ParseMessage(string(buf[:n]))
	if err != nil {
		closeAll(files)
		return Message{}, err
	}
	m.Files = files
	return m, nil
}

// receiveBufs are Receive's buffers, each room for the longest message and one byte
// more (to tell a longer one): 64 KiB, allocated once and not at every message
// (a fresh one is zeroed and faulted in, page by page: a new generation reads
// several messages before its first accept).
var receiveBufs = sync.Pool{New: func() any {
	b := make([]byte, maxMessage+1)
	return &b
}}

// Close closes the channel; a Receive in progress returns.
func (c *Channel) Close() { c.conn.Close() }

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handover channel: %w", err)
	}
	var files []*os.File
	var perr error
	for _, m := range msgs {
		if m.Header.Level != syscall.SOL_SOCKET || m.Header.Type != syscall.SCM_RIGHTS {
			continue
		}
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			perr = fmt.Errorf("handover channel: %w", err)
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "handover-file"))
		}
	}
	return files, perr
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// SetDeadline bounds every Send and Receive (tests use it against hangs).
func (c *Channel) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline bounds every Receive: once t has passed, a Receive waiting returns
// os.ErrDeadlineExceeded, and none takes a message off the socket any more (one that
// comes stays queued for whoever reads the socket next, through a copy of its
// descriptor: File). A zero t lets Receive wait again.
func (c *Channel) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// File returns a duplicate of the channel's descriptor, to pass it on (the
// "upstream" message); the caller owns it.
func (c *Channel) File() (*os.File, error) { return DupFile(c.conn, "handover-channel") }

// DupFile duplicates the descriptor of sc (a listener, a connection) as a new
// close-on-exec file, to hold or pass on, that the runtime's poller does not
// watch (see QuietFile), without changing its blocking mode.
func DupFile(sc syscall.Conn, name string) (*os.File, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	f, err := newQuietFile(-1, name)
	if err != nil {
		// No /dev/null (a bare container): a file the poller watches.
		return dupWatched(rc, name)
	}
	var derr error
	err = rc.Control(func(fd uintptr) { derr = dupTo(int(fd), int(f.Fd())) })
	if err == nil {
		err = derr
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// dupWatched duplicates the descriptor of rc as a close-on-exec file made by
// os.NewFile (which the poller watches if the descriptor is non-blocking).
func dupWatched(rc syscall.RawConn, name string) (*os.File, error) {
	var dup int
	var derr error
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(dup), name), nil
}
