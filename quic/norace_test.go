//go:build !race

package handoverquic

// raceEnabled says whether the tests run under the race detector.
const raceEnabled = false
