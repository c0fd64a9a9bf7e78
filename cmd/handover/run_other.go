//go:build !linux

package main

import (
	"fmt"
	"io"
)

func shim() {}

func runMaster(args []string, stderr io.Writer) int {
	fmt.Fprintln(stderr, "handover run: only available on Linux")
	return 1
}
