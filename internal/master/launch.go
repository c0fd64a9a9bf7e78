//go:build linux

package master

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A child's launch: PROG's arguments and the working directory it is started in.
// Deploys of interpreted programs usually switch a symlink to a release directory
// (current -> releases/42) and run `python3 /srv/app/current/app.py`, or run
// `python3 app.py` from /srv/app/current: the build the master keeps is the
// interpreter, and the code is reached through the symlink. So, for a child started
// from disk, the symlinks in the working directory and in the arguments that name
// existing files are resolved first, and the child is started with the resolved
// ones: it runs the release the symlink names then, whatever the symlink names
// later. A child that serves its probation makes its launch, with its build, the
// last good one: a restart after a crash, or the replacement of a new release that
// died, runs the previous release's code again, not the symlink's new target.
//
// Where the code is not reached through a symlink (a script edited in place), the
// master cannot keep it: such files are the launch's loose files, read from disk
// again at every start, and status says so rather than call them the last good
// build.

// launch is how a child is started.
type launch struct {
	args []string // PROG's arguments (without argv[0])
	dir  string   // the working directory ("": the master's)
	// loose are the files the child's code may come from that were not reached
	// through a symlink: the regular files its arguments name, its #! script.
	loose []string
}

// equal reports whether l and o start the same code.
func (l launch) equal(o launch) bool {
	return l.dir == o.dir && slices.Equal(l.args, o.args)
}

// resolveLaunch returns the launch of a child of build b started from disk now,
// with PROG's arguments args and the working directory dir (Config.Dir): dir with
// its symlinks resolved ("", the master's own, if it cannot be); each argument that names an existing file (relative to dir
// if it is relative) reached through a symlink, by its resolved path (a relative one
// left as it is when the resolved dir alone pins it); any other argument as it is.
func resolveLaunch(args []string, dir string, b *build) launch {
	var l launch
	if dir != "" {
		// A directory that is gone (a release removed under the master) is not
		// chdir-ed into: the child inherits the master's, as it is.
		l.dir, _ = filepath.EvalSymlinks(dir)
	}
	for _, a := range args {
		p := a
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if a == "" || (!filepath.IsAbs(a) && dir == "") || !exists(p) {
			l.args = append(l.args, a)
			continue
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			l.args = append(l.args, a)
			continue
		}
		switch {
		case real == filepath.Clean(p):
			// No symlink: the file is read from disk again at every start.
			l.args = append(l.args, a)
			if st, err := os.Stat(real); err == nil && st.Mode().IsRegular() {
				l.loose = append(l.loose, real)
			}
		case !filepath.IsAbs(a) && filepath.Join(l.dir, a) == real:
			l.args = append(l.args, a) // pinned by the resolved working directory
		default:
			l.args = append(l.args, real)
		}
	}
	if len(b.prefix) > 0 && b.prefix[len(b.prefix)-1] == b.path {
		l.loose = append(l.loose, b.path) // a #! script reached without a symlink
	}
	return l
}

// exists reports whether path names a file (following symlinks): one system call,
// where resolving the symlinks of a path costs one per component (most arguments,
// flags and values, name nothing).
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// describe is the launch for status: its arguments, and the working directory when
// resolving it changed it.
func (l launch) describe(dir string) string {
	s := ""
	if len(l.args) > 0 {
		s = " " + strings.Join(l.args, " ")
	}
	if l.dir != "" && l.dir != dir {
		s += " (in " + l.dir + ")"
	}
	return s
}
