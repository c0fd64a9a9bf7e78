package proc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Check reports why the file at path cannot be started now: it does not exist, is
// not a regular file, or is not executable. Symlinks are followed, so that
// replacing the file or retargeting a link upgrades to the new build. what names
// the file in the error ("new binary", "program").
func Check(what, path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %s does not exist (was it removed or renamed during the deploy?)", what, path)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file (%s)", what, path, FileType(st.Mode()))
	}
	if err := unix.Access(path, unix.X_OK); err != nil {
		return fmt.Errorf("%s %s is not executable (mode %s): %w", what, path, st.Mode().Perm(), err)
	}
	return nil
}

// ExplainExec adds to err, a failed execve of path, what an ENOENT means for a file
// that exists: the interpreter on its #! line, or its ELF loader, is missing.
func ExplainExec(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(path); serr == nil {
			return fmt.Errorf("%w (the file exists: the interpreter on its #! line, or its ELF loader, is missing)", err)
		}
	}
	return err
}
