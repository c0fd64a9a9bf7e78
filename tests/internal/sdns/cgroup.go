package sdns

import (
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// cgroups are not namespaced: the systemd in the namespace creates its
// init.scope, system.slice and unit cgroups in the host's hierarchies, and
// leaves them behind (empty) when it is killed. Boot takes a snapshot of the
// cgroup directories; Stop removes, with rmdir (which the kernel refuses for
// a cgroup that still has processes or children), the new directories whose
// names are systemd unit names. Directories of anyone else (the container
// runtime's, say) do not have unit names and are never touched.

// cgroupMounts returns the mount points of cgroup and cgroup2 file systems.
func cgroupMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 {
			continue
		}
		if qf[0] == "cgroup" || qf[0] == "cgroup2" {
			out = append(out, unescapeMount(pf[4]))
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func cgroupMounted() bool { return len(cgroupMounts()) > 0 }

const cgroupWalkDepth = 6

// cgroupDirs lists the directories of all cgroup hierarchies, up to a depth.
func cgroupDirs() map[string]bool {
	dirs := map[string]bool{}
	for _, m := range cgroupMounts() {
		base := strings.Count(filepath.Clean(m), "/")
		_ = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // vanished or unreadable: skip
			}
			if !d.IsDir() {
				return nil
			}
			dirs[p] = true
			if strings.Count(p, "/")-base >= cgroupWalkDepth {
				return filepath.SkipDir
			}
			return nil
		})
	}
	return dirs
}

var unitSuffixes = []string{".scope", ".slice", ".service", ".socket", ".mount", ".swap"}

func isUnitName(name string) bool {
	for _, s := range unitSuffixes {
		if strings.HasSuffix(name, s) && len(name) > len(s) {
			return true
		}
	}
	return false
}

// removeNewCgroups rmdirs, deepest first, the cgroup directories that are
// not in before and whose names (and the names of all their parents below
// the hierarchy root) are unit names. It returns the ones it removed.
func removeNewCgroups(before map[string]bool) []string {
	if before == nil {
		return nil
	}
	mounts := cgroupMounts()
	var cand []string
	for p := range cgroupDirs() {
		if before[p] || !unitPath(p, mounts) {
			continue
		}
		cand = append(cand, p)
	}
	sort.Slice(cand, func(i, j int) bool {
		di, dj := strings.Count(cand[i], "/"), strings.Count(cand[j], "/")
		if di != dj {
			return di > dj
		}
		return cand[i] < cand[j]
	})
	var removed []string
	for _, p := range cand {
		if syscall.Rmdir(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}

// unitPath reports whether every component of p below its cgroup mount is a
// unit name (e.g. system.slice/x.service, init.scope).
func unitPath(p string, mounts []string) bool {
	for _, m := range mounts {
		rel, err := filepath.Rel(m, p)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, c := range strings.Split(rel, "/") {
			if !isUnitName(c) {
				return false
			}
		}
		return true
	}
	return false
}

// removeUnitCgroups rmdirs, deepest first, the empty cgroup directories
// named after one of units, and empty init.scope and system.slice
// directories: what a systemd that was killed without a snapshot (a stale
// instance of a dead test process) leaves behind. Unit names are unique per
// test, and rmdir refuses cgroups that are in use.
func removeUnitCgroups(units []string) []string {
	names := map[string]bool{"init.scope": true, "system.slice": true}
	for _, u := range units {
		names[u] = true
	}
	mounts := cgroupMounts()
	var cand []string
	for p := range cgroupDirs() {
		if names[filepath.Base(p)] && unitPath(p, mounts) {
			cand = append(cand, p)
		}
	}
	sort.Slice(cand, func(i, j int) bool { return strings.Count(cand[i], "/") > strings.Count(cand[j], "/") })
	var removed []string
	for _, p := range cand {
		if syscall.Rmdir(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}
