package tests

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDeployREADMENodeDrain: the Node.js drain deploy/README.md shows is the one
// TestRunNodePID1 runs: each ```js block there is in tests/testdata/run/server.js,
// character for character.
func TestDeployREADMENodeDrain(t *testing.T) {
	readme, err := os.ReadFile("../deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	server, err := os.ReadFile(nodeServer)
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```js\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) == 0 {
		t.Fatal("deploy/README.md shows no Node.js drain (a ```js block)")
	}
	for i, b := range blocks {
		if !strings.Contains(string(server), b[1]) {
			t.Errorf("deploy/README.md's js block %d is not in %s verbatim:\n%s", i+1, nodeServer, b[1])
		}
	}
}
