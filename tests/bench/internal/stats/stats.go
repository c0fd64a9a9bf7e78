// Package stats holds the order statistics the benchmark's commands report.
package stats

import (
	"math"
	"slices"
)

// Sorted returns a sorted copy of vs.
func Sorted(vs []float64) []float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s
}

// Quantile returns the q-quantile (0 < q ≤ 1) of sorted, by nearest rank (the
// smallest value with at least a share q of the values at or below it); 0 when
// sorted is empty.
func Quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
