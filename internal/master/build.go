//go:build linux

package master

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// build is an executable the master keeps open: the file a child runs, opened by the
// master just before it starts the child. The build of the last child that proved
// itself (see machine.lastGood) is the last good build: a restart after a crash,
// and the replacement of a new child that died after taking over, are started from
// this descriptor (execveat), whatever is on disk by then.
//
// For a program with a #! line the kernel runs its interpreter: the descriptor is
// the interpreter's, and the script itself is read from disk again at every start
// (a limit: the last good build of a script is its interpreter, not its source).
type build struct {
	path string // the file PROG resolved to (the script, for a #! program)
	exe  string // the file the kernel runs: path, or the #! interpreter
	// prefix, for a #! program, is the interpreter's command line before PROG's
	// arguments, as the kernel builds it: [interpreter, its argument if any, path]
	// (nested interpreters are unfolded the same way; path with its symlinks
	// resolved). Empty for a binary.
	prefix []string
	f      *os.File // exe, open (O_RDONLY|O_CLOEXEC, or O_PATH); nil in the state machine's tests
	// direct: exe is a binary that carries handoff.DirectMark (a program built with
	// this module), started without the re-exec shim (see spawn).
	direct bool
	// next: exe also takes a handover channel the master opens for it on the
	// serving child's link (handoff.NextMark; see spawn).
	next bool
	dev  uint64
	ino  uint64
	// changed is the file's status change time (ns) and size: with dev and ino,
	// what tells that the file is the same, unwritten since (see openBuild).
	changed, size int64
	refs          int // the children and the machine's fields that hold it
}

// maxInterpreters is how many #! interpreters may be nested, as in the kernel.
const maxInterpreters = 4

// openBuild opens the file at path (absolute, as resolveProg returns it) and, for a
// #! script, its interpreter, so that the master holds what the next child runs.
// A binary that is known's file, unchanged (its device, inode, status change time
// and size: a reload of the build that runs), is not searched for the marks again:
// it has known's.
func openBuild(path string, known *build) (*build, error) {
	b := &build{path: path}
	var tail []string // the interpreters' arguments and scripts, innermost last
	file := path
	for depth := 0; ; depth++ {
		f, err := openExe(file)
		if err != nil {
			if depth > 0 {
				return nil, fmt.Errorf("program %s: its interpreter %s (#! line): %w", path, file, errors.Unwrap(err))
			}
			return nil, err
		}
		interp, arg, script := shebang(f)
		if !script {
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				f.Close()
				return nil, fmt.Errorf("program %s: %w", file, err)
			}
			b.f, b.exe, b.dev, b.ino, b.changed, b.size = f, file, st.Dev, st.Ino, st.Ctim.Nano(), st.Size
			switch {
			case depth > 0:
				b.prefix = append([]string{file}, tail...)
			case known.sameStatus(b):
				b.direct, b.next = known.direct, known.next
			default:
				b.direct, b.next = carriesMarks(f)
			}
			return b, nil
		}
		f.Close()
		if depth == maxInterpreters {
			return nil, fmt.Errorf("program %s: more than %d nested #! interpreters", path, maxInterpreters)
		}
		name := file
		if depth == 0 {
			// The script's real path: reached through a symlink retargeted at each
			// release, a restart from this build reads the release that ran.
			if real, err := filepath.EvalSymlinks(file); err == nil {
				name = real
			}
		}
		more := []string{name}
		if arg != "" {
			more = []string{arg, name}
		}
		tail = append(more, tail...)
		file = interp
	}
}

// openExe opens an executable to keep it: O_RDONLY|O_CLOEXEC, or O_PATH for a file
// the master may execute but not read (mode --x: not a script, then, since its
// interpreter could not read it either).
func openExe(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrPermission) {
		fd, perr := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if perr == nil {
			return os.NewFile(uintptr(fd), path), nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", path, err)
	}
	return f, nil
}

// shebang reads the #! line of f, as the kernel parses it (binfmt_script): the
// interpreter up to the first blank, then at most one argument (the rest of the
// line, trimmed). script is false for anything else (an ELF binary).
func shebang(f *os.File) (interp, arg string, script bool) {
	buf := make([]byte, 256) // the kernel's BINPRM_BUF_SIZE
	n, _ := f.ReadAt(buf, 0) // an O_PATH descriptor cannot be read: not a script
	line := buf[:n]
	if !bytes.HasPrefix(line, []byte("#!")) {
		return "", "", false
	}
	line = line[2:]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	s := strings.TrimRight(strings.TrimLeft(string(line), " \t"), " \t")
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		interp, arg = s[:i], strings.TrimLeft(s[i:], " \t")
	} else {
		interp = s
	}
	return interp, arg, interp != ""
}

// sameStatus reports whether b, a binary (not a #! program), and o are the same
// file with the same status change time and size: the same content.
func (b *build) sameStatus(o *build) bool {
	return b != nil && len(b.prefix) == 0 && b.ino != 0 && b.dev == o.dev && b.ino == o.ino && b.changed == o.changed && b.size == o.size
}

// argv is the command line to run b with PROG's arguments.
func (b *build) argv(prog string, args []string) []string {
	if len(b.prefix) == 0 {
		return append([]string{prog}, args...)
	}
	return append(append([]string(nil), b.prefix...), args...)
}

// replaced reports whether the file now at b.path is not the one b holds (a new
// build was deployed, or the file is gone). For a #! program it compares the
// interpreter.
func (b *build) replaced() bool {
	if b.f == nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Stat(b.exe, &st); err != nil {
		return true
	}
	return st.Dev != b.dev || st.Ino != b.ino
}

// String describes b for status and logs: the file the kernel runs, and the script
// for a #! program.
func (b *build) String() string {
	if len(b.prefix) > 0 {
		return fmt.Sprintf("%s (the interpreter of %s)", b.exe, b.path)
	}
	return b.exe
}

// sameFile reports whether the file at path (following symlinks, /proc/PID/exe
// included) is b's.
func (b *build) sameFile(path string) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Dev == b.dev && st.Ino == b.ino
}

// ranBuild is called when child pid becomes ready: it returns the build that child
// really runs when that is not b. The file at PROG's path may have been replaced
// between the master opening it and the shim executing it; /proc/PID/exe is then the
// newer file, and it is still at the path. (A program that executed something else
// in turn keeps b: its command line would not start what it runs now.)
func ranBuild(b *build, pid int) *build {
	if b.f == nil || len(b.prefix) > 0 {
		return nil
	}
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	if b.sameFile(exe) {
		return nil
	}
	var now, running unix.Stat_t
	if unix.Stat(b.path, &now) != nil || unix.Stat(exe, &running) != nil || now.Dev != running.Dev || now.Ino != running.Ino {
		return nil
	}
	f, err := openExe(exe)
	if err != nil {
		return nil
	}
	return &build{path: b.path, exe: b.path, f: f, dev: running.Dev, ino: running.Ino}
}

// close releases b's descriptor.
func (b *build) close() {
	if b.f != nil {
		b.f.Close()
		b.f = nil
	}
}

// execveat runs the file open at fd, as execve(2) runs a path (AT_EMPTY_PATH).
func execveat(fd int, argv, envv []string) error {
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return err
	}
	envvp, err := syscall.SlicePtrFromStrings(envv)
	if err != nil {
		return err
	}
	empty, _ := syscall.BytePtrFromString("")
	_, _, errno := syscall.RawSyscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envvp[0])), unix.AT_EMPTY_PATH, 0)
	return errno
}

// dedupe returns the last good build instead of b when b is the same file (an
// upgrade to the build already running keeps one descriptor).
func (m *machine) dedupe(b *build) *build {
	if g := m.lastGood; g != nil && b != g && b.ino != 0 && b.dev == g.dev && b.ino == g.ino && slices.Equal(b.prefix, g.prefix) {
		b.close()
		return g
	}
	return b
}

// hold and drop count the references to a build; the last drop closes it.
func (m *machine) hold(b *build) {
	b.refs++
}

func (m *machine) drop(b *build) {
	if b == nil {
		return
	}
	if b.refs--; b.refs <= 0 {
		b.close()
	}
}

// setLastGood makes c's build and launch the last good ones.
func (m *machine) setLastGood(c *child) {
	m.goodLaunch = c.launch
	if c.build == m.lastGood {
		return
	}
	m.hold(c.build)
	m.drop(m.lastGood)
	m.lastGood = c.build
}

// isLastGood reports whether c runs the last good build with its launch.
func (m *machine) isLastGood(c *child) bool {
	return c.build == m.lastGood && c.launch.equal(m.goodLaunch)
}

// lastGoodString describes the last good build and its launch, "none" if there is
// none yet.
func (m *machine) lastGoodString() string {
	if m.lastGood == nil {
		return "none"
	}
	return m.lastGood.String() + m.goodLaunch.describe(m.cfg.Dir)
}
