package activation_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/activation"
)

const helperEnv = "ACTIVATION_FACADE_HELPER"

// TestHelperProcess is not a test: it is the program systemd-socket-activate runs in
// TestListenFromSystemd. It takes the socket named "http" (asking for an address
// nothing passed, so that only the name can match), answers one connection with its
// PID and the address it serves, and exits.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process for TestListenFromSystemd")
	}
	ln, err := activation.Listen("http", "tcp", "127.0.0.1:1")
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	c, err := ln.Accept()
	if err != nil {
		os.Exit(4)
	}
	fmt.Fprintf(c, "%d %s %s\n", os.Getpid(), ln.Addr(), os.Getenv("LISTEN_FDS"))
	c.Close()
	os.Exit(0)
}

// TestListenFromSystemd: a socket passed by systemd's protocol (here by
// systemd-socket-activate, which implements it) is the one Listen returns, by name,
// and the environment is cleared once read.
func TestListenFromSystemd(t *testing.T) {
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		skipOrFail(t, "systemd-socket-activate is not installed (Debian package systemd)")
	}
	var addr string
	for i := 0; i < 50 && addr == ""; i++ {
		// Below the ephemeral range, where no client holds the port.
		a := "127.0.0.1:" + strconv.Itoa(20000+rand.IntN(12000))
		if l, err := net.Listen("tcp", a); err == nil {
			l.Close()
			addr = a
		}
	}
	if addr == "" {
		t.Fatal("no free port")
	}
	cmd := exec.Command(bin, "-l", addr, "--fdname=http", "-E", helperEnv+"=1", os.Args[0], "-test.run=^TestHelperProcess$")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // systemd-socket-activate is still binding
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the helper's answer: %v (stderr %q)", err, stderr.String())
	}
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != strconv.Itoa(cmd.Process.Pid) || f[1] != addr || len(f) != 2 {
		t.Fatalf("helper answered %q; want its PID %d, the passed address %s, and LISTEN_FDS cleared", line, cmd.Process.Pid, addr)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v (stderr %q)", err, stderr.String())
	}
}

// Without inherited sockets, Listen binds the address itself; a datagram network is
// refused with the function to use instead.
func TestListenBinds(t *testing.T) {
	ln, err := activation.Listen("api", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := activation.Listen("dns", "udp", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "use ListenPacket") {
		t.Fatalf("Listen of udp: %v; want advice to use ListenPacket", err)
	}
	pc, err := activation.ListenPacket("dns", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
}

// skipOrFail skips, or fails when $CI is set: CI never skips silently.
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is a failure, not a skip)", why)
	}
	t.Skip(why)
}

// A server takes its socket by name: under systemd, the socket unit's
// FileDescriptorName=http; anywhere else, it binds the address.
func ExampleListen() {
	ln, err := activation.Listen("http", "tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err) // e.g. LISTEN_FDS names a descriptor that is not a socket
		return
	}
	defer ln.Close()
	fmt.Println("serving on", ln.Addr().Network())
	// Output: serving on tcp
}
