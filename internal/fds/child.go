package fds

import (
	"os"
	"strconv"
	"strings"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// Child is what a parent passes to a child process: the descriptors (to be placed at
// 3, 4, ... in order), their names, and which of them this line of processes owns.
type Child struct {
	Files []*os.File
	Names []string
	Owned []int
}

// Close closes the parent's copies of the child's descriptors.
func (c *Child) Close() {
	for _, f := range c.Files {
		f.Close()
	}
}

// Env returns environ with the socket-passing variables for the child set and any
// stale ones removed. m describes the child; its Owned field is filled from c.
func (c *Child) Env(environ []string, m handoff.Marker) []string {
	m.Owned = c.Owned
	out := make([]string, 0, len(environ)+3)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case handoff.ListenPIDEnv, handoff.ListenFDsEnv, handoff.ListenFDNamesEnv, handoff.MarkerEnv, handoff.MasterEnv, handoff.GenerationEnv:
			continue
		}
		out = append(out, kv)
	}
	names := make([]string, len(c.Names))
	for i, n := range c.Names {
		if n == "" {
			n = "unknown"
		}
		names[i] = n
	}
	return append(out,
		handoff.ListenFDsEnv+"="+strconv.Itoa(len(c.Files)),
		handoff.ListenFDNamesEnv+"="+strings.Join(names, ":"),
		handoff.MarkerEnv+"="+m.String())
}
