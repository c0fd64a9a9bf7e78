package graceful

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// executablePath returns the absolute path this process was started as, without
// resolving symlinks (os.Executable would resolve /opt/app/current to the build it
// points at now, and an upgrade would restart the old build).
func executablePath(argv0 string) (string, error) {
	p := argv0
	if filepath.Base(p) == p {
		lp, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("cannot find the executable %q in PATH: %w", argv0, err)
		}
		p = lp
	}
	return filepath.Abs(p)
}
