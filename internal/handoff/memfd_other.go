//go:build !linux

package handoff

import "os"

// SealedFile fails: there are no memfds on this system (and no generation to pass
// one to).
func SealedFile(name string, data ...[]byte) (*os.File, error) { return nil, ErrUnsupported }

// ReadSealed fails: there are no memfds on this system.
func ReadSealed(f *os.File, max int64) ([]byte, error) { return nil, ErrUnsupported }

// MapSealed fails: there are no memfds on this system.
func MapSealed(f *os.File, max int64) ([]byte, func(), error) { return nil, nil, ErrUnsupported }

// Wipe fails: there are no memfds on this system.
func Wipe(f *os.File) error { return ErrUnsupported }
