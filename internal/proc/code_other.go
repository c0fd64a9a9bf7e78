//go:build !linux

package proc

// MapCode does nothing on this system (see the Linux version).
func MapCode() int { return 0 }
