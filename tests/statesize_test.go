package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/proc"
)

// BenchmarkReloadStateSize: what a large application state costs an upgrade, end to
// end: `handover reload` of the demo (the time until the new generation has taken
// over) with 0, 8 and 32 MiB of state (-state-pad; the demo's own SaveState and
// LoadState then cost little: a line of JSON and a copy of the padding). Run it with
//
//	go test -run '^$' -bench ReloadStateSize -benchtime 10x ./tests/
//
// ms/op is a reload's; ms/MiB (for the padded ones) its excess over the empty
// state's, per MiB. graceful's BenchmarkStateHandoff has the library's part.
func BenchmarkReloadStateSize(b *testing.B) {
	handover := proc.Binary(b, handoverPkg)
	base := 0.0
	for _, mib := range []int{0, 8, 32} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			ctl := filepath.Join(b.TempDir(), "control.sock")
			d := startDemoSpec(b, demoSpec{control: ctl, args: []string{"-state-pad", strconv.Itoa(mib << 20), "-probation", "-1s"}})
			b.ResetTimer()
			for range b.N {
				if out, err := exec.Command(handover, "reload", "-control", ctl).CombinedOutput(); err != nil {
					b.Fatalf("handover reload: %v\n%s", err, out)
				}
				b.StopTimer()
				old := d.current()
				d.pids = append(d.pids, d.waitNewPID(10*time.Second, d.pids...))
				if err := waitGone(old, 10*time.Second); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			ms := float64(b.Elapsed().Microseconds()) / 1000 / float64(b.N)
			if mib == 0 {
				base = ms
			} else if base > 0 {
				b.ReportMetric((ms-base)/float64(mib), "ms/MiB")
			}
			b.StopTimer()
			d.stop()
		})
	}
}
