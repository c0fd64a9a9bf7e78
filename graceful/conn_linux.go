package graceful

import (
	"net"
	"os"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// passable reports whether nc is a socket that can be handed to another process: a
// plain TCP or unix stream connection (not a wrapper of the application's, which may
// hold bytes of its own).
func passable(nc net.Conn) bool {
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// dupConn duplicates nc's descriptor (see passable).
func dupConn(nc net.Conn) (*os.File, error) {
	switch c := nc.(type) {
	case *net.TCPConn:
		return handoff.DupFile(c, "handover-conn")
	case *net.UnixConn:
		return handoff.DupFile(c, "handover-conn")
	}
	return nil, errNotPassable
}

// parkedFile keeps a paused listener's socket (see listener.park).
func parkedFile(l parkable) (*os.File, error) { return handoff.DupFile(l, "parked") }
