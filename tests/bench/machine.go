package main

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// machineInfo describes this machine, the Go toolchain, the systemd used (if any)
// and the peers' module versions (read from the binaries in bin).
func machineInfo(v sdns.Version, bin string) Machine {
	m := Machine{
		CPUs:    runtime.NumCPU(),
		Go:      runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		Systemd: "not used",
		Modules: map[string]string{},
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name", ":")
	if kb, err := strconv.Atoi(strings.Fields(procField("/proc/meminfo", "MemTotal", ":") + " 0")[0]); err == nil {
		m.MemoryMiB = kb / 1024
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	m.OS = strings.Trim(procField("/etc/os-release", "PRETTY_NAME", "="), `"`)
	if v.Systemd != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, v.Systemd, "--version")
		cmd.Env = append(cleanEnv(), v.Env...)
		if out, err := cmd.Output(); err == nil {
			m.Systemd, _, _ = strings.Cut(string(out), "\n")
		}
	}
	for _, name := range []string{"tableflip", "gracehttp", "endless"} {
		bi, err := buildinfo.ReadFile(filepath.Join(bin, name))
		if err != nil {
			continue
		}
		for _, d := range bi.Deps {
			if strings.Contains(d.Path, "tableflip") || strings.Contains(d.Path, "facebookgo/grace") ||
				strings.Contains(d.Path, "facebookgo/httpdown") || strings.Contains(d.Path, "endless") {
				m.Modules[d.Path] = d.Version
			}
		}
	}
	return m
}

// procField returns the value of the first line of file that starts with key,
// after sep, trimmed.
func procField(file, key, sep string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			if _, v, ok := strings.Cut(line, sep); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return ""
}
