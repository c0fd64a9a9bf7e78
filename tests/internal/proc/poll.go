package proc

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Watched returns the inodes of the files that pid's epoll instances watch (the
// "tfd:" lines of /proc/PID/fdinfo/FD of each eventpoll descriptor): a Go
// process's runtime poller is one of them, so a socket in the set wakes the
// process whenever it becomes readable.
func Watched(pid int) (map[uint64]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := map[uint64]bool{}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l != "anon_inode:[eventpoll]" {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "tfd:" {
				continue
			}
			for _, fl := range fields {
				if v, ok := strings.CutPrefix(fl, "ino:"); ok {
					n, err := strconv.ParseUint(v, 16, 64)
					if err != nil {
						f.Close()
						return nil, fmt.Errorf("fdinfo of pid %d: %q: %w", pid, sc.Text(), err)
					}
					inodes[n] = true
				}
			}
		}
		f.Close()
	}
	return inodes, nil
}

// Watches reports whether pid's epoll instances watch the socket of inode ino
// (see Watched); false too if pid cannot be read (gone).
func Watches(pid int, ino uint64) bool {
	w, err := Watched(pid)
	return err == nil && w[ino]
}

// ListeningInode returns the inode of the IPv4 TCP socket that listens on addr
// (from /proc/net/tcp).
func ListeningInode(addr string) (uint64, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return 0, fmt.Errorf("ListeningInode: %q is not an IPv4 address and port", addr)
	}
	ip := ap.Addr().As4()
	// /proc/net/tcp writes the address as the 32-bit word in host (little-endian)
	// order, in hex, then the port.
	want := strings.ToUpper(hex.EncodeToString([]byte{ip[3], ip[2], ip[1], ip[0]})) + fmt.Sprintf(":%04X", ap.Port())
	// sl local rem st tx:rx tr:when retrnsmt uid timeout inode; st 0A: listening
	return procNetInode("/proc/net/tcp", 9, func(f []string) bool { return len(f) >= 10 && f[1] == want && f[3] == "0A" },
		"no TCP socket listens on "+addr)
}

// UnixListeningInode returns the inode of the unix stream socket that listens at
// path (from /proc/net/unix).
func UnixListeningInode(path string) (uint64, error) {
	// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000: listening
	return procNetInode("/proc/net/unix", 6, func(f []string) bool { return len(f) >= 8 && f[7] == path && f[3] == "00010000" },
		"no unix socket listens at "+path)
}

// procNetInode returns the inode (column col) of the first socket that match
// takes in file, a table of /proc/net (a header line, then a socket per line,
// split into fields); none is the error's text if there is none.
func procNetInode(file string, col int, match func(fields []string) bool, none string) (uint64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); match(f) {
			return strconv.ParseUint(f[col], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s (%s)", none, file)
}
