package quictest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestLibraryDoesNotDependOnQUICGo: the library's packages (graceful, activation)
// and the library's module do not depend on quic-go; only the quic module does.
func TestLibraryDoesNotDependOnQUICGo(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./graceful/...", "./activation/...")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/seed-a7250cfa/handover/graceful") {
		t.Fatalf("go list listed no library package:\n%s", out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "quic-go") {
			t.Errorf("the library depends on %s", pkg)
		}
	}
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mod), "quic-go") {
		t.Errorf("the library's go.mod requires quic-go:\n%s", mod)
	}
}
