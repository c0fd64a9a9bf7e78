// Package runinfo describes a run of the benchmark's commands: how to run it again,
// how loaded the machine was, and reading their JSON output back.
package runinfo

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// CommandLine is how this process was started, as a reader would run it again from
// tests/bench: "cd tests/bench && go run PKG ARGS...", arguments quoted for a shell.
func CommandLine(pkg string) string {
	args := []string{"go", "run", pkg}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		args = append(args, a)
	}
	return "cd tests/bench && " + strings.Join(args, " ")
}

// LoadAvg returns the first three fields of /proc/loadavg (1, 5 and 15 minutes).
func LoadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// ReadJSON reads the JSON file at path into a new T.
func ReadJSON[T any](path string) (*T, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}
