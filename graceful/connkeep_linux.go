package graceful

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// connTable is the table of kept connections (connkeep.go), mapped in shared
// memory: its words change in every process that maps it at once.
type connTable struct {
	f    *os.File
	mem  []byte
	next atomic.Uint64 // where alloc looks first
}

// newTable makes a table in a new memfd.
func newTable() (*connTable, error) {
	b := make([]byte, connTableSize)
	copy(b, connTableMagic)
	f, err := handoff.SealedFile(keptName, b)
	if err != nil {
		return nil, err
	}
	t, err := mapTable(f)
	f.Close()
	return t, err
}

// mapTable maps the table in f (which stays the caller's).
func mapTable(f *os.File) (*connTable, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != connTableSize {
		return nil, errTable
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, connTableSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if string(mem[:len(connTableMagic)]) != connTableMagic {
		unix.Munmap(mem)
		unix.Close(fd)
		return nil, errTable
	}
	return &connTable{f: os.NewFile(uintptr(fd), "memfd:"+keptName), mem: mem}, nil
}

func (t *connTable) fd() int    { return int(t.f.Fd()) }
func (t *connTable) slots() int { return connTableSlots }
func (t *connTable) dup() (*os.File, error) {
	fd, err := unix.FcntlInt(t.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "memfd:"+keptName), nil
}

func (t *connTable) word(slot int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&t.mem[64+8*slot]))
}

// get returns the word of slot (0 if out of range).
func (t *connTable) get(slot int) uint64 {
	if slot < 0 || slot >= connTableSlots {
		return 0
	}
	return t.word(slot).Load()
}

// alloc takes a free slot for w.
func (t *connTable) alloc(w uint64) (int, bool) {
	start := int(t.next.Add(1) % connTableSlots)
	for i := 0; i < connTableSlots; i++ {
		slot := (start + i) % connTableSlots
		if t.word(slot).CompareAndSwap(0, w) {
			return slot, true
		}
	}
	return 0, false
}

// set sets the state of slot, if it still holds tag.
func (t *connTable) set(slot int, tag, state uint64) {
	w := t.word(slot)
	if old := w.Load(); old>>2 == tag {
		w.CompareAndSwap(old, tag<<2|state)
	}
}

// free frees slot, if it still holds tag.
func (t *connTable) free(slot int, tag uint64) {
	if slot < 0 || slot >= connTableSlots {
		return
	}
	w := t.word(slot)
	if old := w.Load(); old>>2 == tag {
		w.CompareAndSwap(old, 0)
	}
}

// waitReadable waits, without reading, until nc has a byte to read (or its end, or
// an error), or its read deadline passes.
func waitReadable(nc net.Conn) error {
	rc, err := rawConn(nc)
	if err != nil {
		return err
	}
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR)
	})
}

// shutdownConn shuts nc down in both directions: the client sees it close even if
// another process (systemd's fd store) holds a copy.
func shutdownConn(nc net.Conn) {
	withFD(nc, func(fd int) { unix.Shutdown(fd, unix.SHUT_RDWR) })
}

// withFD runs f with nc's descriptor; false if nc has none.
func withFD(nc net.Conn, f func(fd int)) bool {
	rc, err := rawConn(nc)
	return err == nil && rc.Control(func(fd uintptr) { f(int(fd)) }) == nil
}

// rawConn returns nc's raw connection.
func rawConn(nc net.Conn) (syscall.RawConn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errNotPassable
	}
	return sc.SyscallConn()
}
