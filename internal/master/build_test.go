//go:build linux

package master

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

func TestOpenBuild(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A binary: the descriptor is the file itself; argv is PROG's.
	b, err := openBuild(self, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if b.exe != self || len(b.prefix) != 0 || !b.sameFile(self) || b.replaced() {
		t.Errorf("binary: %+v", b)
	}
	if got := b.argv("prog", []string{"-x"}); !slices.Equal(got, []string{"prog", "-x"}) {
		t.Errorf("argv %q", got)
	}
	// A script: the descriptor is its interpreter; argv as the kernel builds it, one
	// argument after the interpreter (blanks included), nested interpreters unfolded.
	inner := write("inner", "#!"+self+"   -a b \t\necho\n")
	outer := write("outer", "#! "+inner+"\n")
	b2, err := openBuild(outer, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.close()
	want := []string{self, "-a b", inner, outer, "x"}
	if got := b2.argv("prog", []string{"x"}); b2.exe != self || b2.path != outer || !slices.Equal(got, want) {
		t.Errorf("script: exe %s, argv %q; want %q", b2.exe, got, want)
	}
	if !strings.Contains(b2.String(), "the interpreter of "+outer) {
		t.Errorf("script described as %q", b2)
	}
	// A script reached through a symlink: the kept command line names its real path.
	link := filepath.Join(dir, "current")
	if err := os.Symlink(outer, link); err != nil {
		t.Fatal(err)
	}
	b4, err := openBuild(link, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b4.close()
	if got := b4.argv("prog", nil); !slices.Equal(got, []string{self, "-a b", inner, outer}) || b4.path != link {
		t.Errorf("script through a symlink: argv %q, path %s", got, b4.path)
	}
	// A missing interpreter, and too many levels.
	if _, err := openBuild(write("nointerp", "#!/no/such/interpreter\n"), nil); err == nil || !strings.Contains(err.Error(), "its interpreter /no/such/interpreter") {
		t.Errorf("missing interpreter: %v", err)
	}
	loop := filepath.Join(dir, "loop")
	write("loop", "#!"+loop+"\n")
	if _, err := openBuild(loop, nil); err == nil || !strings.Contains(err.Error(), "nested") {
		t.Errorf("a script that is its own interpreter: %v", err)
	}
	// Replaced on disk (rename, as a deploy does): the descriptor still holds the
	// old file.
	app := write("app", "#!/bin/sh\n")
	copyTo := func(src, dst string) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+".new", data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
	}
	copyTo(self, app)
	b3, err := openBuild(app, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b3.close()
	copyTo(self, app)
	if !b3.replaced() || b3.sameFile(app) {
		t.Errorf("a replaced file is not seen as replaced")
	}
	os.Remove(app)
	if !b3.replaced() {
		t.Errorf("a removed file is not seen as replaced")
	}
}

func TestShebang(t *testing.T) {
	for _, c := range []struct {
		head, interp, arg string
		script            bool
	}{
		{"\x7fELF\x02", "", "", false},
		{"#!/bin/sh\n", "/bin/sh", "", true},
		{"#!/usr/bin/env python3\n", "/usr/bin/env", "python3", true},
		{"#!  /bin/sh  -e  -u  \nrest", "/bin/sh", "-e  -u", true},
		{"#!\n", "", "", false},
		{"#!/bin/sh", "/bin/sh", "", true},
	} {
		p := filepath.Join(t.TempDir(), "f")
		os.WriteFile(p, []byte(c.head), 0o644)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		interp, arg, script := shebang(f)
		f.Close()
		if interp != c.interp || arg != c.arg || script != c.script {
			t.Errorf("%q: %q %q %v; want %q %q %v", c.head, interp, arg, script, c.interp, c.arg, c.script)
		}
	}
}

// TestDirectMark: a binary built with this module (this test, which links the
// sockets' inheritance) carries the direct mark and is started without the shim;
// another program, a copy of this one with the mark changed, and a script (its
// interpreter is what runs) are not.
func TestDirectMark(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := openBuild(self, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if !b.direct || !b.next {
		t.Errorf("%s (built with this module): direct mark %v, next mark %v; want both", self, b.direct, b.next)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	for _, mark := range [][]byte{handoff.DirectMark[:], handoff.NextMark[:]} {
		if n := bytes.Count(data, mark); n != 1 {
			t.Fatalf("the mark %q is %d times in %s; want once", mark[16:], n, self)
		}
	}
	dir := t.TempDir()
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, bytes.Replace(data, handoff.DirectMark[:], make([]byte, len(handoff.DirectMark)), 1), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!"+self+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{other, script, "/bin/sh"} {
		b, err := openBuild(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b.direct || b.next {
			t.Errorf("%s carries the direct mark (%v) or the next mark (%v)", p, b.direct, b.next)
		}
		b.close()
	}
	// A build of the library from before the master opened channels (an older
	// version): started directly, and gets the link.
	older := filepath.Join(dir, "older")
	if err := os.WriteFile(older, bytes.Replace(data, handoff.NextMark[:], make([]byte, len(handoff.NextMark)), 1), 0o755); err != nil {
		t.Fatal(err)
	}
	if b, err := openBuild(older, nil); err != nil || !b.direct || b.next {
		t.Errorf("%s without the next mark: %+v, %v; want direct, not next", older, b, err)
	} else {
		b.close()
	}
}

// TestReaderHolds: each mark is found wherever it is, across the pieces read too,
// whether the other is there or not.
func TestReaderHolds(t *testing.T) {
	mark, other := []byte("0123456789"), []byte("abcdef")
	for _, at := range []int{-1, 0, 1, 60, 64 - 10, 64 - 5, 64 - 1, 64, 100, 128 - 3, 190} {
		for _, otherAt := range []int{-1, 20, 64 - 3, 150} {
			data := bytes.Repeat([]byte{'x'}, 200)
			if otherAt >= 0 {
				copy(data[otherAt:], other)
			}
			if at >= 0 {
				copy(data[at:], mark)
			}
			got := readerHolds(bytes.NewReader(data), [][]byte{mark, other}, make([]byte, 64))
			wantOther := otherAt >= 0 && (at < 0 || otherAt+len(other) <= at || otherAt >= at+len(mark))
			if got[0] != (at >= 0) || got[1] != wantOther {
				t.Errorf("mark at %d, other at %d: holds %v", at, otherAt, got)
			}
		}
	}
	if got := readerHolds(bytes.NewReader([]byte("01234")), [][]byte{mark}, make([]byte, 64)); got[0] {
		t.Error("a short read holds the mark")
	}
}

// TestOpenBuildKnown: a binary that is the known build's file, unchanged, takes
// the known build's marks without a search; written again in place (the same
// inode), it is searched again.
func TestOpenBuildKnown(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(app, data, 0o755); err != nil {
		t.Fatal(err)
	}
	known, err := openBuild(app, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer known.close()
	if !known.direct || !known.next {
		t.Fatalf("%s: direct %v, next %v; want both", app, known.direct, known.next)
	}
	// A known build said to carry neither mark: taken as it is, so not searched.
	unmarked := *known
	unmarked.direct, unmarked.next = false, false
	b, err := openBuild(app, &unmarked)
	if err != nil {
		t.Fatal(err)
	}
	if b.direct || b.next {
		t.Errorf("the known build's file, unchanged: direct %v, next %v; want the known build's (none)", b.direct, b.next)
	}
	b.close()
	// The same file written again in place, without the marks.
	plain := bytes.Replace(bytes.Replace(data, handoff.NextMark[:], nil, 1), handoff.DirectMark[:], nil, 1)
	f, err := os.OpenFile(app, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(plain); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err = openBuild(app, known)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if b.ino != known.ino || b.direct || b.next {
		t.Errorf("the file written in place (inode %d, was %d): direct %v, next %v; want it searched again (neither)", b.ino, known.ino, b.direct, b.next)
	}
}
