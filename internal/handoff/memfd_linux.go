//go:build linux

package handoff

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sealed files carry secrets and state between processes (the handover channel, the
// fd store): memfds, never a file on disk, never the environment or argv.
//
// A sealed file is created close-on-exec (MFD_CLOEXEC), mode 0600, written, then
// sealed against growing, shrinking and further sealing (F_SEAL_GROW, F_SEAL_SHRINK,
// F_SEAL_SEAL; and F_SEAL_EXEC where the kernel has MFD_NOEXEC_SEAL). Writing is not
// sealed: the last process that holds the file wipes it (Wipe) before dropping it,
// and a write seal would forbid that. Integrity is the content's business (the
// formats that travel in sealed files end with a checksum).

// sealsRequired are the seals ReadSealed insists on.
const sealsRequired = unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL

// SealedFile returns a new sealed memfd named name (as /proc shows it: "memfd:name")
// holding the parts of data, one after the other. The caller owns it.
func SealedFile(name string, data ...[]byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_NOEXEC_SEAL)
	if errors.Is(err, unix.EINVAL) {
		// A kernel older than 6.3 has no MFD_NOEXEC_SEAL.
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	fail := func(what string, err error) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("sealed file %s: %s: %w", name, what, err)
	}
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return fail("fchmod", err)
	}
	off := 0
	for _, part := range data {
		if err := writeAllAt(f, part, off); err != nil {
			return fail("write", err)
		}
		off += len(part)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, sealsRequired); err != nil {
		return fail("sealing", err)
	}
	return f, nil
}

// writeAllAt writes data to f at base.
func writeAllAt(f *os.File, data []byte, base int) error {
	for off := 0; off < len(data); {
		n, err := f.WriteAt(data[off:], int64(base+off))
		if err != nil {
			return err
		}
		off += n
	}
	return nil
}

// ReadSealed reads the whole content of a sealed file made by SealedFile (from
// offset 0, whatever the file's offset), refusing anything else: a descriptor that
// is not a regular file, a memfd without the seals (its size could change), one
// others may read (mode beyond 0600), or one larger than max bytes. f stays open.
func ReadSealed(f *os.File, max int64) ([]byte, error) {
	size, err := checkSealed(f, max)
	if err != nil {
		return nil, err
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && len(b) == 0) {
		return nil, err
	}
	return b, nil
}

// MapSealed is ReadSealed without the copy: it maps the content of the sealed file
// f into memory, read-only (its seals forbid shrinking it, so no access can fault),
// which in a process that just started saves a fresh page per page of content.
// release wipes f (Wipe) and drops the mapping: the memory then reads as zeros, a
// slice of it kept by mistake included (the address range stays reserved, empty).
// f stays open.
func MapSealed(f *os.File, max int64) (b []byte, release func(), err error) {
	size, err := checkSealed(f, max)
	if err != nil {
		return nil, nil, err
	}
	if size == 0 {
		return []byte{}, func() {}, nil
	}
	p, err := unix.MmapPtr(int(f.Fd()), 0, nil, uintptr(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap: %w", err)
	}
	release = func() {
		Wipe(f)
		unix.MmapPtr(-1, 0, p, uintptr(size), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED)
	}
	return unsafe.Slice((*byte)(p), size), release, nil
}

// checkSealed checks that f is a sealed file SealedFile made (see ReadSealed), and
// returns its size.
func checkSealed(f *os.File, max int64) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("not a sealed memfd: it is not a regular file (mode %#o)", st.Mode)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return 0, fmt.Errorf("not a sealed memfd: %w", err)
	}
	if seals&sealsRequired != sealsRequired {
		return 0, fmt.Errorf("not sealed (seals %#x, want %#x at least)", seals, sealsRequired)
	}
	if st.Mode&0o077 != 0 {
		return 0, fmt.Errorf("mode %#o lets others read it (want 0600)", st.Mode&0o777)
	}
	if st.Size > max {
		return 0, fmt.Errorf("%d bytes, more than the %d allowed", st.Size, max)
	}
	return st.Size, nil
}

// Wipe overwrites the content of f, a sealed file this process is the last to
// hold, with zeros (its pages are freed, not cleared, when the last descriptor
// closes). f stays open.
func Wipe(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	zeros := make([]byte, min(st.Size, 64<<10))
	for off := int64(0); off < st.Size; {
		n := min(int64(len(zeros)), st.Size-off)
		w, err := f.WriteAt(zeros[:n], off)
		if err != nil {
			return err
		}
		off += int64(w)
	}
	return nil
}
