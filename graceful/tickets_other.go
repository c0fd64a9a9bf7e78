//go:build !unix

package graceful

import "os"

// openNonBlocking opens path read-only. (There are no FIFOs in the file system to
// block on here.)
func openNonBlocking(path string) (*os.File, error) { return os.Open(path) }

// checkKeyFileOwner: file ownership is not a user ID here; not checked.
func checkKeyFileOwner(string, os.FileInfo) error { return nil }
