package proc

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
)

// Find returns the absolute path of prog: a name without a directory is looked up
// in $PATH, a path is made absolute. Its symlinks are not resolved, so that a link
// such as /opt/app/current is followed again at each start (os.Executable would
// resolve it to the build it points at now, and an upgrade would restart that).
func Find(prog string) (string, error) {
	p := prog
	if filepath.Base(p) == p {
		lp, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("program %q not found in $PATH (%s)", prog, os.Getenv("PATH"))
		}
		p = lp
	}
	return filepath.Abs(p)
}

// FileType names the type of a file of mode m for an error message: "a regular
// file", "a directory", "a symlink"...
func FileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a file of mode " + m.Type().String()
}
