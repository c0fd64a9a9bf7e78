package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const waitBound = 10 * time.Second

// maxErrorLen bounds error messages that quote input: it is clipped to 64 bytes,
// which %q may spell with four characters each.
const maxErrorLen = 400

func TestParse(t *testing.T) {
	path107 := "/" + strings.Repeat("p", 106)
	// An abstract name needs no terminating NUL, so the kernel would take 108
	// bytes; Send (golang.org/x/sys/unix) sends at most 107, and Parse says so.
	abstract107 := "@" + strings.Repeat("a", 106)
	tests := []struct {
		addr    string
		wantNil bool
		wantErr string
	}{
		{addr: "", wantNil: true},
		{addr: "/run/systemd/notify"},
		{addr: "@/org/freedesktop/systemd1/notify/1"},
		{addr: "@x"},
		{addr: path107},
		{addr: abstract107},
		{addr: "run/systemd/notify", wantErr: "neither an absolute path nor an abstract socket"},
		{addr: "./notify", wantErr: "neither"},
		{addr: "notify", wantErr: "neither"},
		{addr: " /run/systemd/notify", wantErr: "neither"},
		{addr: path107 + "p", wantErr: "108 bytes long"},
		{addr: abstract107 + "a", wantErr: "108 bytes long"},
		{addr: "/run/\x00notify", wantErr: "NUL"},
		{addr: "@\x00", wantErr: "NUL"},
	}
	for _, tt := range tests {
		n, err := Parse(tt.addr)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || n != nil {
				t.Errorf("Parse(%q) = %v, %v; want error containing %q", tt.addr, n, err, tt.wantErr)
			}
		case tt.wantNil:
			if n != nil || err != nil {
				t.Errorf("Parse(%q) = %v, %v; want nil, nil", tt.addr, n, err)
			}
		default:
			if err != nil || n == nil || n.addr != tt.addr {
				t.Errorf("Parse(%q) = %v, %v; want a Notifier", tt.addr, n, err)
			}
		}
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(Env, "")
	if n, err := FromEnv(); n != nil || err != nil {
		t.Fatalf("FromEnv with %s empty = %v, %v", Env, n, err)
	}
	t.Setenv(Env, "/run/systemd/notify")
	if n, err := FromEnv(); n == nil || err != nil {
		t.Fatalf("FromEnv = %v, %v", n, err)
	}
	if os.Getenv(Env) != "/run/systemd/notify" {
		t.Fatal("FromEnv removed the variable; a child that becomes the main process needs it")
	}
	t.Setenv(Env, "relative")
	if _, err := FromEnv(); err == nil {
		t.Fatal("FromEnv accepted a relative path")
	}
}

// manager is a fake service manager: a unixgram socket that Notifiers send to.
type manager struct {
	conn *net.UnixConn
	addr string
}

func newManager(t *testing.T, addr string) *manager {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadDeadline(time.Now().Add(waitBound))
	return &manager{conn: conn, addr: addr}
}

func pathManager(t *testing.T) *manager {
	return newManager(t, filepath.Join(t.TempDir(), "notify"))
}

// receive reads one datagram and the descriptors passed with it.
func (m *manager) receive(t *testing.T) (string, []int) {
	t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, flags, _, err := m.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("manager: %v", err)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		t.Fatalf("manager: truncated message (flags %#x)", flags)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range msgs {
			got, err := unix.ParseUnixRights(&msg)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, got...)
		}
	}
	return string(buf[:n]), fds
}

// notifier returns a Notifier for addr, which is also put in $NOTIFY_SOCKET, where
// go-systemd (plain notifications) reads it, as it is under a service manager.
func notifier(t *testing.T, addr string) *Notifier {
	t.Helper()
	t.Setenv(Env, addr)
	n, err := Parse(addr)
	if err != nil || n == nil {
		t.Fatalf("Parse(%q) = %v, %v", addr, n, err)
	}
	return n
}

func TestSend(t *testing.T) {
	for _, tt := range []struct{ name, addr string }{
		{"path", ""},
		{"abstract", fmt.Sprintf("@handover-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())},
		{"longest abstract", "@" + strings.Repeat("h", 106-20) + fmt.Sprintf("%020d", time.Now().UnixNano())},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var m *manager
			if tt.addr == "" {
				m = pathManager(t)
			} else {
				m = newManager(t, tt.addr)
			}
			n := notifier(t, m.addr)
			state := "READY=1\nSTATUS=serving on 127.0.0.1:8080\nMAINPID=" + fmt.Sprint(os.Getpid())
			if err := n.Send(state); err != nil {
				t.Fatal(err)
			}
			got, fds := m.receive(t)
			if got != state || len(fds) != 0 {
				t.Fatalf("manager received %q with %d fds; want %q", got, len(fds), state)
			}
		})
	}
}

func TestSendErrors(t *testing.T) {
	var nilN *Notifier
	if err := nilN.Send("READY=1"); err != nil {
		t.Fatalf("nil Notifier: %v", err)
	}
	if err := nilN.Barrier(time.Millisecond); err != nil {
		t.Fatalf("nil Notifier Barrier: %v", err)
	}
	n := notifier(t, filepath.Join(t.TempDir(), "nobody-listens"))
	err := n.Send("READY=1")
	if err == nil || !strings.Contains(err.Error(), "nobody-listens") {
		t.Fatalf("Send to a missing socket: %v; want an error naming it", err)
	}
}

func sameFile(t *testing.T, fd1, fd2 int) bool {
	t.Helper()
	var s1, s2 unix.Stat_t
	if err := unix.Fstat(fd1, &s1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(fd2, &s2); err != nil {
		t.Fatal(err)
	}
	return s1.Dev == s2.Dev && s1.Ino == s2.Ino
}

func TestSendWithFds(t *testing.T) {
	m := pathManager(t)
	n := notifier(t, m.addr)
	f, err := os.Create(filepath.Join(t.TempDir(), "stored"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()

	if err := n.Send("FDSTORE=1\nFDNAME=state", int(f.Fd()), int(lf.Fd())); err != nil {
		t.Fatal(err)
	}
	got, fds := m.receive(t)
	for _, fd := range fds {
		defer unix.Close(fd)
	}
	if got != "FDSTORE=1\nFDNAME=state" || len(fds) != 2 {
		t.Fatalf("manager received %q with %d fds", got, len(fds))
	}
	if !sameFile(t, fds[0], int(f.Fd())) || !sameFile(t, fds[1], int(lf.Fd())) {
		t.Fatal("the received descriptors are not the files sent")
	}
	// The received descriptor is the same open file: what is written through it
	// is read through ours.
	if _, err := unix.Write(fds[0], []byte("via the manager")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil || string(b) != "via the manager" {
		t.Fatalf("file content %q, %v", b, err)
	}
	// Send closes nothing of the caller's.
	if _, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); err != nil {
		t.Fatalf("our descriptor after Send: %v", err)
	}
}

func TestBarrier(t *testing.T) {
	m := pathManager(t)
	n := notifier(t, m.addr)
	done := make(chan error, 1)
	go func() { done <- n.Barrier(waitBound) }()
	got, fds := m.receive(t)
	if got != "BARRIER=1" || len(fds) != 1 {
		t.Fatalf("manager received %q with %d fds; want BARRIER=1 with one", got, len(fds))
	}
	select {
	case err := <-done:
		t.Fatalf("Barrier returned (%v) before the manager closed the descriptor", err)
	default:
	}
	unix.Close(fds[0])
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Barrier: %v", err)
		}
	case <-time.After(waitBound):
		t.Fatal("Barrier did not return after the manager closed the descriptor")
	}
}

func TestBarrierTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	t.Run("manager keeps the fd", func(t *testing.T) {
		m := pathManager(t)
		n := notifier(t, m.addr)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- n.Barrier(timeout) }()
		_, fds := m.receive(t)
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		checkTimeout(t, done, start, timeout)
	})
	t.Run("manager never reads", func(t *testing.T) {
		m := pathManager(t)
		n := notifier(t, m.addr)
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- n.Barrier(timeout) }()
		checkTimeout(t, done, start, timeout)
	})
}

func checkTimeout(t *testing.T, done <-chan error, start time.Time, timeout time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		took := time.Since(start)
		if !errors.Is(err, ErrBarrierTimeout) {
			t.Fatalf("Barrier: %v; want ErrBarrierTimeout", err)
		}
		if took < timeout {
			t.Fatalf("Barrier timed out after %s, before its timeout of %s", took, timeout)
		}
	case <-time.After(timeout + waitBound):
		t.Fatalf("Barrier(%s) still waiting after %s", timeout, timeout+waitBound)
	}
}

func TestMonotonicUsec(t *testing.T) {
	s := MonotonicUsec()
	if !regexp.MustCompile(`^MONOTONIC_USEC=[1-9][0-9]*$`).MatchString(s) {
		t.Fatalf("MonotonicUsec() = %q", s)
	}
}

func TestParseWatchdog(t *testing.T) {
	const me, parent, other = 100, 50, 7
	tests := []struct {
		usec, pid string
		want      time.Duration // 0: no watchdog
		wantErr   string
	}{
		{usec: "", pid: "", want: 0},
		{usec: "", pid: "100", want: 0},
		{usec: "", pid: "junk", want: 0}, // no watchdog: the PID is not looked at
		{usec: "30000000", want: 30 * time.Second},
		{usec: "1", want: time.Microsecond},
		{usec: "30000000", pid: "100", want: 30 * time.Second},
		{usec: "30000000", pid: "50", want: 30 * time.Second},
		{usec: "30000000", pid: "7", want: 0},
		{usec: "30000000", pid: "0100", want: 30 * time.Second},
		{usec: "9223372036854775", want: 9223372036854775 * time.Microsecond},

		{usec: "0", wantErr: "out of range"},
		{usec: "9223372036854776", wantErr: "out of range"},
		{usec: "18446744073709551615", wantErr: "out of range"},
		{usec: "18446744073709551616", wantErr: "not a number"},
		{usec: "-1", wantErr: "not a number"},
		{usec: "+1", wantErr: "not a number"},
		{usec: "1s", wantErr: "not a number"},
		{usec: " 1", wantErr: "not a number"},
		{usec: "0x10", wantErr: "not a number"},
		{usec: "1_000", wantErr: "not a number"},
		{usec: "30000000", pid: "0", wantErr: "not a process ID"},
		{usec: "30000000", pid: "-100", wantErr: "not a process ID"},
		{usec: "30000000", pid: "+100", wantErr: "not a process ID"},
		{usec: "30000000", pid: "abc", wantErr: "not a process ID"},
		{usec: "30000000", pid: "100 ", wantErr: "not a process ID"},
	}
	for _, tt := range tests {
		wd, err := ParseWatchdog(tt.usec, tt.pid, me, parent)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || wd != nil {
				t.Errorf("ParseWatchdog(%q, %q) = %v, %v; want error containing %q", tt.usec, tt.pid, wd, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseWatchdog(%q, %q): %v", tt.usec, tt.pid, err)
			continue
		}
		var got time.Duration
		if wd != nil {
			got = wd.Interval
		}
		if got != tt.want {
			t.Errorf("ParseWatchdog(%q, %q) interval = %v, want %v", tt.usec, tt.pid, got, tt.want)
		}
	}
	if wd, err := ParseWatchdog("1000", "100"); wd != nil || err != nil {
		t.Errorf("ParseWatchdog with no PIDs of ours = %v, %v; want none", wd, err)
	}
}

func FuzzParseWatchdog(f *testing.F) {
	f.Add("30000000", "", 100)
	f.Add("30000000", "100", 100)
	f.Add("0", "100", 1)
	f.Add("+5", "+5", 5)
	f.Add("9223372036854776", "", 1)
	f.Add("18446744073709551615", "7", 7)
	f.Fuzz(func(t *testing.T, usec, pid string, ours int) {
		wd, err := ParseWatchdog(usec, pid, ours)
		if err != nil {
			if wd != nil {
				t.Fatal("both a watchdog and an error")
			}
			if len(err.Error()) > maxErrorLen {
				t.Fatalf("error of %d bytes is not clipped", len(err.Error()))
			}
			return
		}
		if wd == nil {
			return
		}
		if wd.Interval <= 0 || wd.Interval%time.Microsecond != 0 {
			t.Fatalf("ParseWatchdog(%q, %q) interval %v", usec, pid, wd.Interval)
		}
		// What was accepted is a plain decimal number of microseconds, and the
		// interval says exactly that.
		if fmt.Sprint(wd.Interval.Microseconds()) != strings.TrimLeft(usec, "0") {
			t.Fatalf("ParseWatchdog(%q) interval %v", usec, wd.Interval)
		}
		if pid != "" && fmt.Sprint(ours) != strings.TrimLeft(pid, "0") {
			t.Fatalf("ParseWatchdog(%q, %q, %d): a watchdog for another process", usec, pid, ours)
		}
	})
}
