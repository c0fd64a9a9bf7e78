package proc

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestMapCode: once MapCode returns, every page of the executable's code mapping is
// in the process's page tables (its Rss in /proc/self/smaps is its whole Size),
// and MapCode reports at least that many bytes.
func TestMapCode(t *testing.T) {
	n := MapCode()
	size, rss := codeMapping(t)
	if n < size {
		t.Errorf("MapCode mapped %d bytes; the code mapping alone is %d", n, size)
	}
	if rss != size {
		t.Errorf("after MapCode the executable's code mapping has %d of its %d bytes resident, want all", rss, size)
	}
}

// codeMapping returns the Size and Rss of the executable's executable mapping.
func codeMapping(t *testing.T) (size, rss int) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exe, in := "", false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 5 && strings.Contains(fs[0], "-") {
			if exe == "" && len(fs) >= 6 {
				exe = fs[5]
			}
			in = len(fs) >= 6 && fs[5] == exe && strings.Contains(fs[1], "x")
			continue
		}
		if !in || len(fs) < 2 {
			continue
		}
		kb, _ := strconv.Atoi(fs[1])
		switch fs[0] {
		case "Size:":
			size = kb << 10
		case "Rss:":
			rss = kb << 10
			if size > 0 {
				return size, rss
			}
		}
	}
	t.Fatalf("no executable mapping of %q in /proc/self/smaps", exe)
	return 0, 0
}
