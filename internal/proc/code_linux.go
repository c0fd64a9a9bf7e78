package proc

import (
	"bufio"
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// MapCode maps the running executable's file-backed pages (its code and read-only
// data) into the process's page tables now, one madvise(MADV_POPULATE_READ) per
// mapping, instead of one page fault at a time as the code first runs. A prepared
// generation calls it while it waits: its first requests after the commit then run
// code that is already mapped. It reports how many bytes it mapped; errors (a
// kernel older than 5.14, say) only make it map less.
func MapCode() int {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0
	}
	var exe []byte // the first mapping's file: the executable
	mapped := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 6 || f[5][0] != '/' {
			continue
		}
		if exe == nil {
			exe = f[5]
		}
		if !bytes.Equal(f[5], exe) || f[1][0] != 'r' {
			continue
		}
		lo, hi, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_POPULATE_READ); errno == 0 {
			mapped += int(end - start)
		}
	}
	return mapped
}
