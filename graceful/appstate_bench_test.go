//go:build linux

package graceful

import (
	"fmt"
	"os"
	"testing"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// BenchmarkStateHandoff measures what handing the application's state on costs the
// library, per blob size, apart from the application's own SaveState and LoadState:
//
//	save  the old generation: the header and checksum (CRC-32C) around the blob,
//	      and the blob written into a new sealed memfd (stateParts, SealedFile)
//	load  the new generation: the memfd mapped, the blob checked and decoded, then
//	      (after LoadState) the memfd wiped and unmapped (mapMemfd, decodeState)
//	copy  for scale: one copy of the blob in memory
//
// Run it with
//
//	go test -run '^$' -bench StateHandoff -benchtime 20x ./graceful/
//
// MB/s is the blob's bytes per second; ms/MB the time per MiB of blob.
func BenchmarkStateHandoff(b *testing.B) {
	for _, mib := range []int{1, 8, 32} {
		data := make([]byte, mib<<20)
		for i := range data {
			data[i] = byte(i * 7)
		}
		perMB := func(b *testing.B) {
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/float64(mib), "ms/MB")
		}
		b.Run(fmt.Sprintf("%dMiB/copy", mib), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			dst := make([]byte, len(data))
			for b.Loop() {
				copy(dst, data)
			}
			perMB(b)
		})
		b.Run(fmt.Sprintf("%dMiB/save", mib), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				f, err := handoff.SealedFile(stateName, stateParts("v1", data)...)
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
			perMB(b)
		})
		b.Run(fmt.Sprintf("%dMiB/load", mib), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				f, err := handoff.SealedFile(stateName, stateParts("v1", data)...)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				blob, release, err := mapMemfd([]*os.File{f}, MaxStateSize+int64(stateOverhead))
				if err == nil {
					_, _, err = decodeState(blob)
					release()
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			perMB(b)
		})
	}
}
