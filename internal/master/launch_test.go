//go:build linux

package master

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestResolveLaunch: for a child started from disk, the working directory and the
// arguments that name files are resolved through their symlinks (a release layout,
// current -> releases/1), so that a restart runs the same release whatever current
// names later; an argument that is no file is left alone; a file reached without a
// symlink (edited in place) is named loose, as is a #! script reached without one. A
// working directory that is gone is not resolved: the child gets the master's.
func TestResolveLaunch(t *testing.T) {
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rel := filepath.Join(base, "releases", "1")
	if err := os.MkdirAll(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(rel, "app.py"), filepath.Join(base, "inplace.py")} {
		if err := os.WriteFile(f, []byte("print(1)\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("releases/1", filepath.Join(base, "current")); err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(base, "current")
	bin := &build{path: "/usr/bin/python3", exe: "/usr/bin/python3"}
	for _, c := range []struct {
		name, dir      string
		args           []string
		wantDir        string
		wantArgs       []string
		wantLoose      []string
		script, prefix string
	}{
		{name: "absolute path through the symlink", dir: base, args: []string{"-u", current + "/app.py", "8080"},
			wantDir: base, wantArgs: []string{"-u", rel + "/app.py", "8080"}},
		{name: "relative path through the symlink", dir: base, args: []string{"current/app.py"},
			wantDir: base, wantArgs: []string{rel + "/app.py"}},
		{name: "working directory through the symlink", dir: current, args: []string{"app.py", "-m", ""},
			wantDir: rel, wantArgs: []string{"app.py", "-m", ""}},
		{name: "a file edited in place", dir: base, args: []string{"inplace.py"},
			wantDir: base, wantArgs: []string{"inplace.py"}, wantLoose: []string{base + "/inplace.py"}},
		{name: "a #! script without a symlink", dir: base, script: base + "/inplace.py", prefix: base + "/inplace.py",
			wantDir: base, wantLoose: []string{base + "/inplace.py"}},
		{name: "a #! script through the symlink", dir: base, script: current + "/app.py", prefix: rel + "/app.py",
			wantDir: base},
		{name: "a working directory that is gone", dir: base + "/releases/0", args: []string{"app.py"},
			wantDir: "", wantArgs: []string{"app.py"}},
	} {
		b := bin
		if c.script != "" {
			b = &build{path: c.script, exe: "/usr/bin/env", prefix: []string{"/usr/bin/env", "python3", c.prefix}}
		}
		l := resolveLaunch(c.args, c.dir, b)
		if l.dir != c.wantDir || !slices.Equal(l.args, c.wantArgs) || !slices.Equal(l.loose, c.wantLoose) {
			t.Errorf("%s: launch %+v; want dir %s, args %q, loose %q", c.name, l, c.wantDir, c.wantArgs, c.wantLoose)
		}
	}
}

// TestMachineLastGoodLaunch: a new release of an interpreted program (the same
// interpreter, another script behind the symlink) is on probation, not "the last
// good build"; when it dies during its probation, the replacement runs the last good
// release (its resolved arguments), and status says it is the last good build. A
// program whose code is read from disk again (loose) is never called the last good
// build.
func TestMachineLastGoodLaunch(t *testing.T) {
	f := newFake(t, nil)
	f.args = []string{"/srv/app/releases/1/app.py"}
	first := f.serving()
	if st := f.st(); st.ChildExecutable != "/bin/app /srv/app/releases/1/app.py (the last good build)" {
		t.Errorf("the first child runs %q", st.ChildExecutable)
	}
	f.args = []string{"/srv/app/releases/2/app.py"}
	reply := f.upgrade() // the same interpreter: no new build, a new release
	bad := f.m.cand
	f.ready(bad)
	<-reply
	if bad.build != first.build || !bad.onProbation {
		t.Fatalf("the new release: build %p (first %p), probation %v", bad.build, first.build, bad.onProbation)
	}
	st := f.st()
	if strings.Contains(st.ChildExecutable, "(the last good build)") || !strings.Contains(st.ChildExecutable, "releases/2/app.py (a new build, on probation") ||
		!strings.Contains(st.ChildExecutable, "the last good build is /bin/app /srv/app/releases/1/app.py") {
		t.Errorf("the new release on probation runs %q", st.ChildExecutable)
	}
	f.exit(bad, 1)
	repl := f.m.cand
	if repl == nil || !repl.kept || !slices.Equal(repl.launch.args, []string{"/srv/app/releases/1/app.py"}) {
		t.Fatalf("the replacement: %+v; want the last good release", repl)
	}
	f.ready(repl)
	if st := f.st(); st.ChildExecutable != "/bin/app /srv/app/releases/1/app.py (the last good build)" || !strings.Contains(st.LastError, "the last good build (/bin/app /srv/app/releases/1/app.py) is started again") {
		t.Errorf("the replacement runs %q; last error %q", st.ChildExecutable, st.LastError)
	}

	// Code read from disk again.
	f = newFake(t, nil)
	f.m.launch = func(*build) launch {
		return launch{args: []string{"/srv/app/app.py"}, loose: []string{"/srv/app/app.py"}}
	}
	c := f.serving()
	st = f.st()
	if strings.Contains(st.ChildExecutable, "(the last good build)") || !strings.Contains(st.ChildExecutable, "/srv/app/app.py, not reached through a symlink, is read from disk again at every start") {
		t.Errorf("a script read from disk again: %q", st.ChildExecutable)
	}
	f.killedBy(c, syscall.SIGSEGV)
	f.fire(timerRestart, nil)
	if r := f.m.cand; r == nil || !r.kept || !slices.Equal(r.launch.loose, []string{"/srv/app/app.py"}) {
		t.Errorf("the restart: %+v", r)
	}
}
