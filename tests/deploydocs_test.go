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

// TestDeployREADMEFleet: the Ansible play deploy/README.md shows is
// deploy/fleet/upgrade.yml, character for character, and the fleet script it shows
// is the one TestFleet runs.
func TestDeployREADMEFleet(t *testing.T) {
	readme, err := os.ReadFile("../deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	play, err := os.ReadFile("../deploy/fleet/upgrade.yml")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) != 1 || blocks[0][1] != string(play) {
		t.Errorf("deploy/README.md does not show deploy/fleet/upgrade.yml as it is (%d yaml blocks)", len(blocks))
	}
	if !strings.Contains(string(readme), "deploy/fleet/upgrade.sh") || !strings.Contains(fleetScript, "deploy/fleet/upgrade.sh") {
		t.Error("deploy/README.md does not name the fleet script TestFleet runs")
	}
}
