//go:build linux

package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
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
// sender's PID and its ancestors up to (not including) this process. Descriptors a
// sender attaches (FDSTORE=1) are closed: the master has no fd store.
func (n *notifySocket) serve(deliver func(pids []int, fields []Field, fds int)) {
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
		pid, fds := 0, 0
		msgs, _ := unix.ParseSocketControlMessage(oob[:noob])
		for _, m := range msgs {
			if cred, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(cred.Pid)
				continue
			}
			if rights, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range rights {
					unix.Close(fd)
				}
				fds += len(rights)
			}
		}
		if pid <= 0 || nb > maxNotify || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			continue
		}
		deliver(lineage(pid, os.Getpid()), ParseNotify(buf[:nb]), fds)
	}
}

// lineage returns pid and its ancestors, nearest first, stopping below ancestor (the
// master): a child's helper process that notifies is attributed to the child. At most
// 16 generations are followed.
func lineage(pid, ancestor int) []int {
	out := []int{pid}
	for i := 0; i < 16; i++ {
		pp := parentOf(pid)
		if pp <= 1 || pp == ancestor {
			break
		}
		out = append(out, pp)
		pid = pp
	}
	return out
}

// parentOf reads the parent PID from /proc/PID/stat, 0 if it cannot.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}
