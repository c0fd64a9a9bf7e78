package handoff

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// polled returns the descriptors of this process that its epoll instances (the Go
// runtime's poller among them) watch: the "tfd:" lines of /proc/self/fdinfo.
func polled(t *testing.T) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[int]bool{}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); l != "anon_inode:[eventpoll]" {
			continue
		}
		f, err := os.Open("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // the descriptor ReadDir itself used
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fl := strings.Fields(sc.Text()); len(fl) > 1 && fl[0] == "tfd:" {
				n, err := strconv.Atoi(fl[1])
				if err != nil {
					t.Fatalf("fdinfo: %q", sc.Text())
				}
				fds[n] = true
			}
		}
		f.Close()
	}
	return fds
}

// TestQuietFiles: DupFile's and QuietFile's files of a non-blocking listening
// socket are not watched by the runtime's poller, while os.NewFile's is (which
// shows the check sees a watched descriptor); QuietFile keeps the descriptor's
// number and the socket; both are close-on-exec, and the socket stays
// non-blocking.
func TestQuietFiles(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var lnFD int
	rc, _ := ln.(*net.TCPListener).SyscallConn()
	rc.Control(func(fd uintptr) { lnFD = int(fd) })
	if !polled(t)[lnFD] {
		t.Fatalf("the listener's own descriptor %d is not seen as watched: the check cannot tell", lnFD)
	}

	loud := func() *os.File {
		d, err := unix.FcntlInt(uintptr(lnFD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(d), "loud")
	}()
	defer loud.Close()
	if !polled(t)[int(loud.Fd())] {
		t.Fatalf("os.NewFile of a non-blocking socket (fd %d) is not watched: the check cannot tell", loud.Fd())
	}

	dup, err := DupFile(ln.(*net.TCPListener), "dup")
	if err != nil {
		t.Fatal(err)
	}
	defer dup.Close()
	raw, err := unix.FcntlInt(uintptr(lnFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	quiet, err := QuietFile(raw, "quiet")
	if err != nil {
		unix.Close(raw)
		t.Fatal(err)
	}
	defer quiet.Close()
	if int(quiet.Fd()) != raw {
		t.Errorf("QuietFile's file has fd %d, want %d", quiet.Fd(), raw)
	}
	w := polled(t)
	var st, want unix.Stat_t
	if err := unix.Fstat(lnFD, &want); err != nil {
		t.Fatal(err)
	}
	for _, f := range []*os.File{dup, quiet} {
		fd := int(f.Fd())
		if w[fd] {
			t.Errorf("%s: fd %d is watched by the poller", f.Name(), fd)
		}
		if err := unix.Fstat(fd, &st); err != nil || st.Ino != want.Ino {
			t.Errorf("%s: fd %d is not the listening socket (inode %d, want %d): %v", f.Name(), fd, st.Ino, want.Ino, err)
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
			t.Errorf("%s: fd %d is not close-on-exec (%#x, %v)", f.Name(), fd, fl, err)
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Errorf("%s: fd %d: the socket is no longer non-blocking (%#x, %v)", f.Name(), fd, fl, err)
		}
	}
	if _, err := QuietFile(-1, "bad"); err == nil {
		t.Error("QuietFile(-1) did not fail")
	}
}
