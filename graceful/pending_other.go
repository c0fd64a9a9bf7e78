//go:build !linux

package graceful

import "net"

// pending returns 0: the receive queue is not inspected on this system, so an idle
// connection whose next request is still in the kernel may be closed by a drain.
func pending(c net.Conn) int { return 0 }
