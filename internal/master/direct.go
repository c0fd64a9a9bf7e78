//go:build linux

package master

import (
	"bytes"
	"debug/elf"
	"io"
	"os"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// A program built with this module's library (package graceful, or activation)
// does not need LISTEN_PID to be its own PID: it adopts the sockets of a master that
// is its real parent and says so (handoff.DirectEnv). Such a program is started
// directly, without the re-exec shim, which costs a Go program's start (runtime,
// package inits: 10 ms and more) on the way to every new child's first answer. It is
// recognized by handoff.DirectMark in its file, which every build of the library
// that accepts a direct start carries: the module's presence in the build info
// (debug/buildinfo) would not tell a build of an older version, which waits for
// LISTEN_PID, and would bind sockets of its own. Any other program (another language,
// an older build, a file the master cannot read) goes through the shim, as before.

// carriesMarks reports whether f, an executable, is an ELF file whose .noptrdata
// section (where Go puts initialized data without pointers) holds
// handoff.DirectMark, and whether it holds handoff.NextMark (the build takes a
// handover channel the master opens for it: spawn.go). The section is read in small
// pieces (it is 100 to 300 KiB in a Go server; the linker puts small symbols such as
// the marks near its start), so that the search costs no fresh memory on the way to
// the new child's start.
func carriesMarks(f *os.File) (direct, next bool) {
	ef, err := elf.NewFile(f)
	if err != nil {
		return false, false
	}
	s := ef.Section(".noptrdata")
	if s == nil || s.Type != elf.SHT_PROGBITS {
		return false, false
	}
	found := readerHolds(s.Open(), [][]byte{handoff.DirectMark[:], handoff.NextMark[:]}, make([]byte, 16<<10))
	return found[0], found[0] && found[1]
}

// readerHolds reports which of marks what r reads holds, reading it into buf (longer
// than the longest mark) piece by piece, until it has found them all.
func readerHolds(r io.Reader, marks [][]byte, buf []byte) []bool {
	found, left, longest := make([]bool, len(marks)), len(marks), 0
	for _, m := range marks {
		longest = max(longest, len(m))
	}
	kept := 0 // bytes at the start of buf carried over from the previous piece
	for {
		n, err := io.ReadFull(r, buf[kept:])
		for i, m := range marks {
			if !found[i] && bytes.Contains(buf[:kept+n], m) {
				found[i] = true
				left--
			}
		}
		if left == 0 || err != nil {
			return found
		}
		keep := min(longest-1, kept+n)
		kept = copy(buf, buf[kept+n-keep:kept+n])
	}
}
