//go:build !linux

package graceful

import (
	"errors"
	"net"
	"os"
)

// connTable: connections are kept in a service manager's fd store on Linux only.
type connTable struct{}

var errNoTable = errors.New("graceful: keeping connections in the fd store is supported on Linux only")

func newTable() (*connTable, error)         { return nil, errNoTable }
func mapTable(*os.File) (*connTable, error) { return nil, errNoTable }
func (*connTable) fd() int                  { return -1 }
func (*connTable) slots() int               { return 0 }
func (*connTable) dup() (*os.File, error)   { return nil, errNoTable }
func (*connTable) get(int) uint64           { return 0 }
func (*connTable) alloc(uint64) (int, bool) { return 0, false }
func (*connTable) set(int, uint64, uint64)  {}
func (*connTable) free(int, uint64)         {}
func waitReadable(net.Conn) error           { return errNoTable }
func shutdownConn(net.Conn)                 {}
func withFD(net.Conn, func(fd int)) bool    { return false }
