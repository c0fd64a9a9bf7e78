//go:build linux

package handoff

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSealedFile: a sealed file is a memfd named as asked, close-on-exec, mode 0600,
// sealed against growing, shrinking and more seals; ReadSealed returns its content
// whatever the file offset; Wipe zeroes it in place.
func TestSealedFile(t *testing.T) {
	data := []byte("secret bytes, and more of them")
	f, err := SealedFile("handover-test", data)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); !strings.HasPrefix(link, "/memfd:handover-test") {
		t.Errorf("/proc/self/fd/%d -> %q; want a memfd named handover-test", fd, link)
	}
	if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("FD_CLOEXEC not set: %#x, %v", flags, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&0o777 != 0o600 {
		t.Errorf("mode %#o, %v; want 0600", st.Mode&0o777, err)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&sealsRequired != sealsRequired {
		t.Errorf("seals %#x, %v; want %#x at least", seals, err, sealsRequired)
	}
	if err := unix.Ftruncate(fd, 1); err == nil {
		t.Error("the file could shrink")
	}
	if _, err := f.WriteAt([]byte("x"), int64(len(data))); err == nil {
		t.Error("the file could grow")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
		t.Error("more seals could be added")
	}
	f.Seek(5, 0) // ReadSealed reads from offset 0 whatever the file's offset
	got, err := ReadSealed(f, 1024)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadSealed = %q, %v; want %q", got, err, data)
	}
	if _, err := ReadSealed(f, int64(len(data)-1)); err == nil {
		t.Error("ReadSealed read more than its limit")
	}
	if err := Wipe(f); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadSealed(f, 1024); err != nil || !bytes.Equal(got, make([]byte, len(data))) {
		t.Errorf("after Wipe: %q, %v; want %d zero bytes", got, err, len(data))
	}
	empty, err := SealedFile("empty", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if got, err := ReadSealed(empty, 10); err != nil || len(got) != 0 {
		t.Errorf("an empty sealed file: %q, %v", got, err)
	}
}

// TestReadSealedRefuses: what ReadSealed takes for a bad handoff: a memfd without
// seals, one others may read, a file on disk, a socket.
func TestReadSealedRefuses(t *testing.T) {
	memfd := func(mode uint32, seals int) *os.File {
		fd, err := unix.MemfdCreate("bad", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "bad")
		t.Cleanup(func() { f.Close() })
		f.Write([]byte("content"))
		if err := unix.Fchmod(fd, mode); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return f
	}
	disk := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(disk, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	df, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	for _, c := range []struct {
		name string
		f    *os.File
		want string
	}{
		{"unsealed memfd", memfd(0o600, 0), "not sealed"},
		{"memfd sealed against growing only", memfd(0o600, unix.F_SEAL_GROW), "not sealed"},
		{"memfd others may read", memfd(0o644, sealsRequired), "lets others read it"},
		{"file on disk", df, "sealed"}, // EINVAL from F_GET_SEALS, or no seals (tmpfs)
		{"socket", sf, "not a regular file"},
	} {
		if got, err := ReadSealed(c.f, 1024); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q, %v; want an error saying %q", c.name, got, err, c.want)
		}
		if got, _, err := MapSealed(c.f, 1024); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("MapSealed, %s: %q, %v; want an error saying %q", c.name, got, err, c.want)
		}
	}
}

// TestMapSealed: MapSealed shows the content of a sealed file without copying it,
// within its limit; release wipes the file, and the memory reads as zeros from then
// on (a slice kept by mistake does not fault).
func TestMapSealed(t *testing.T) {
	data := bytes.Repeat([]byte("state "), 2000) // more than a page
	f, err := SealedFile("handover-test", data[:6], data[6:])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, _, err := MapSealed(f, int64(len(data)-1)); err == nil {
		t.Error("MapSealed mapped more than its limit")
	}
	got, release, err := MapSealed(f, int64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("MapSealed = %d bytes, %v; want the %d written", len(got), err, len(data))
	}
	release()
	if !bytes.Equal(got, make([]byte, len(data))) {
		t.Error("the memory does not read as zeros after release")
	}
	if b, err := ReadSealed(f, int64(len(data))); err != nil || !bytes.Equal(b, make([]byte, len(data))) {
		t.Errorf("the file after release: %v; want it wiped", err)
	}
	empty, err := SealedFile("empty")
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if got, release, err := MapSealed(empty, 10); err != nil || len(got) != 0 {
		t.Errorf("an empty sealed file: %q, %v", got, err)
	} else {
		release()
	}
}
