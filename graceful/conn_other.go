//go:build !linux

package graceful

import (
	"net"
	"os"
)

// passable: descriptors are handed to another process on Linux only.
func passable(net.Conn) bool { return false }

func dupConn(net.Conn) (*os.File, error) { return nil, errNotPassable }

// parkedFile: a paused listener stays open here (see listener.park).
func parkedFile(parkable) (*os.File, error) { return nil, errNotPassable }
