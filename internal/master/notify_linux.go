//go:build linux

package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// notifySocket is the master's NOTIFY_SOCKET for its children: a unixgram socket in a
// private (0700) directory, receiving with SO_PASSCRED so that each datagram comes
// with its sender's PID.
type notifySocket struct {
	dir  string
	path string
	conn *net.UnixConn
}

// listenNotify creates the notification socket in a new directory under
// $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else the temporary directory.
func listenNotify() (*notifySocket, error) {
	base := os.TempDir()
	if rd := os.Getenv("RUNTIME_DIRECTORY"); rd != "" {
		base, _, _ = strings.Cut(rd, ":")
	}
	dir, err := os.MkdirTemp(base, "handover-run-")
	if err != nil {
		return nil, fmt.Errorf("notification socket: %w (set TMPDIR to a writable directory)", err)
	}
	path := filepath.Join(dir, "notify")
	if len(path) > 107 {
		os.Remove(dir)
		return nil, fmt.Errorf("notification socket: the path %s is longer than a unix socket path may be (107 bytes); set TMPDIR to a shorter directory", path)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("notification socket: %w", err)
	}
	rc, err := conn.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
			if err == nil {
				// Room for bursts (many children starting, watchdog pings).
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
			}
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		conn.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("notification socket: SO_PASSCRED: %w", err)
	}
	return &notifySocket{dir: dir, path: path, conn: conn}, nil
}

// close closes the socket and removes its directory.
func (n *notifySocket) close() {
	n.conn.Close()
	os.RemoveAll(n.dir)
}

// serve reads datagrams until the socket is closed and hands each to deliver with the
// sender's PID (its ancestors are looked up only when it is not a child: see
// machine.ancestors), and the descriptors it carries (FDSTORE=1, BARRIER=1), which
// deliver owns: it keeps those it stores and closes the rest once the datagram is
// handled (closing a BARRIER=1 pipe is the answer).
func (n *notifySocket) serve(deliver func(pid int, fields []Field, fds []int)) {
	buf := make([]byte, maxNotify+1)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*253))
	for {
		nb, noob, flags, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		pid := 0
		var fds []int
		msgs, _ := unix.ParseSocketControlMessage(oob[:noob])
		for _, m := range msgs {
			if cred, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(cred.Pid)
				continue
			}
			if rights, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range rights {
					unix.CloseOnExec(fd)
					fds = append(fds, fd)
				}
			}
		}
		if pid <= 0 || nb > maxNotify || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			closeFDs(fds)
			continue
		}
		deliver(pid, ParseNotify(buf[:nb]), fds)
	}
}

// closeFDs closes every descriptor of fds but those set to -1.
func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
