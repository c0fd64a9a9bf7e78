//go:build linux

package fds

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Inspect asks the kernel what descriptor fd is. An fd that is not open is an error.
func Inspect(fd int) (Kind, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Kind{}, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
	case unix.S_IFREG:
		return Kind{What: "regular file"}, nil
	case unix.S_IFDIR:
		return Kind{What: "directory"}, nil
	case unix.S_IFIFO:
		return Kind{What: "pipe"}, nil
	case unix.S_IFCHR:
		return Kind{What: "character device"}, nil
	default:
		return Kind{What: fmt.Sprintf("file of mode %#o", st.Mode&unix.S_IFMT)}, nil
	}
	k := Kind{Socket: true}
	var err error
	if k.Type, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return k, err
	}
	if k.Family, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return k, err
	}
	if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil {
		k.Listening = acc == 1
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		k.Addr = sockaddrToAddr(sa, k.Type)
	}
	return k, nil
}

// runtimeFile reports whether fd is a cgroup file, such as the CPU limit files the
// Go runtime keeps open, and returns its path. Neither systemd nor a handover parent
// passes such a file: one at a passed position was opened by this process itself.
func runtimeFile(fd int, k Kind) (string, bool) {
	if k.Socket || k.What != "regular file" {
		return "", false
	}
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil || !strings.HasPrefix(path, "/sys/fs/cgroup/") {
		return "", false
	}
	return path, true
}

func sockaddrToAddr(sa unix.Sockaddr, typ int) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		ip := net.IP(append([]byte(nil), sa.Addr[:]...))
		if typ == unix.SOCK_DGRAM {
			return &net.UDPAddr{IP: ip, Port: sa.Port}
		}
		return &net.TCPAddr{IP: ip, Port: sa.Port}
	case *unix.SockaddrInet6:
		ip := net.IP(append([]byte(nil), sa.Addr[:]...))
		zone := ""
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		if typ == unix.SOCK_DGRAM {
			return &net.UDPAddr{IP: ip, Port: sa.Port, Zone: zone}
		}
		return &net.TCPAddr{IP: ip, Port: sa.Port, Zone: zone}
	case *unix.SockaddrUnix:
		name := sa.Name
		if strings.HasPrefix(name, "\x00") {
			name = "@" + name[1:]
		}
		switch typ {
		case unix.SOCK_DGRAM:
			return &net.UnixAddr{Name: name, Net: "unixgram"}
		case unix.SOCK_SEQPACKET:
			return &net.UnixAddr{Name: name, Net: "unixpacket"}
		}
		return &net.UnixAddr{Name: name, Net: "unix"}
	}
	return nil
}
