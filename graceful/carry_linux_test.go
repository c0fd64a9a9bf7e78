package graceful

import (
	"crypto/tls"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// readSealedMessage reads what the memfd of m holds, and closes its files.
func readSealedMessage(t *testing.T, m handoff.Message) []byte {
	t.Helper()
	if len(m.Files) == 0 {
		t.Fatalf("%q came without a descriptor", m.Verb)
	}
	defer closeFiles(m.Files)
	b, err := handoff.ReadSealed(m.Files[0], MaxStateSize+int64(stateOverhead))
	if err != nil {
		t.Fatalf("%q: %v", m.Verb, err)
	}
	return b
}

// TestHandoffCarriesKeysAndState: an upgrade hands the new generation the keys and
// SaveState(false) in its initial batch, each in a sealed memfd; once it has handed
// over, the keys again and SaveState(true), the final state. A new generation's
// final hand-off is merged into its ring and loaded with LoadState(final true).
func TestHandoffCarriesKeysAndState(t *testing.T) {
	fs := newFakeStarter(t)
	var mu sync.Mutex
	var saves []bool
	var loads []string
	cfg := Config{StateVersion: "count/1",
		SaveState: func(final bool) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			saves = append(saves, final)
			if final {
				return []byte("final state"), nil
			}
			return []byte("first state"), nil
		},
		LoadState: func(version string, data []byte, final bool) error {
			mu.Lock()
			defer mu.Unlock()
			loads = append(loads, version+" "+string(data)+" "+map[bool]string{true: "final", false: "first"}[final])
			return nil
		},
	}
	u := newTestUpgrader(t, cfg, fs)
	if err := u.KeepTLSSessions(&tls.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	keys, _ := u.ext.keys.snapshot()
	res := upgradeAsync(u)
	c := fs.next(t)
	var verbs []string
	for _, m := range c.batch {
		verbs = append(verbs, m.Verb)
		switch m.Verb {
		case handoff.Keys:
			got, err := decodeKeys(readSealedMessage(t, m))
			if err != nil || len(got) != len(keys) || got[0].key != keys[0].key {
				t.Errorf("initial keys: %d keys, %v; want the ring's %d", len(got), err, len(keys))
			}
		case handoff.State:
			v, d, err := decodeState(readSealedMessage(t, m))
			if err != nil || v != "count/1" || string(d) != "first state" || m.Text != "count/1" {
				t.Errorf("initial state: %q %q %v (text %q)", v, d, err, m.Text)
			}
		}
	}
	if strings.Join(verbs, " ") != "history above keys state" {
		t.Errorf("initial batch: %q", verbs)
	}
	if err := c.ch.Send(handoff.Message{Verb: handoff.Ready, PID: c.pid}, time.Second); err != nil {
		t.Fatal(err)
	}
	c.expect(t, handoff.Main)
	if r := outcome(t, res); r.err != nil {
		t.Fatal(r.err)
	}
	// After the handover: the keys again, and the final state.
	var finalKeys []ticketKey
	var finalVersion, finalData string
	for finalKeys == nil || finalData == "" {
		m, err := c.ch.Receive()
		if err != nil {
			t.Fatalf("after the handover: %v (keys %v, state %q)", err, finalKeys != nil, finalData)
		}
		switch m.Verb {
		case handoff.Keys:
			if finalKeys, err = decodeKeys(readSealedMessage(t, m)); err != nil {
				t.Fatal(err)
			}
		case handoff.State:
			v, d, err := decodeState(readSealedMessage(t, m))
			if err != nil || m.Text != "final count/1" {
				t.Fatalf("final state: %v (text %q)", err, m.Text)
			}
			finalVersion, finalData = v, string(d)
		default:
			closeFiles(m.Files)
		}
	}
	mu.Lock()
	if len(saves) != 2 || saves[0] || !saves[1] || finalData != "final state" {
		t.Errorf("SaveState calls %v, final state %q", saves, finalData)
	}
	mu.Unlock()

	// The new generation's side of the final hand-off, on another Upgrader.
	u2 := newTestUpgrader(t, cfg, newFakeStarter(t))
	if err := u2.Ready(); err != nil {
		t.Fatal(err)
	}
	kf, err := handoff.SealedFile("keys", encodeKeys(finalKeys))
	if err != nil {
		t.Fatal(err)
	}
	sf, err := handoff.SealedFile("state", encodeState(finalVersion, []byte(finalData)))
	if err != nil {
		t.Fatal(err)
	}
	// What the machine does with a message from its upstream that is not its own.
	for _, m := range []handoff.Message{
		{Verb: handoff.Keys, Files: []*os.File{kf}},
		{Verb: handoff.State, Text: "final " + finalVersion, Files: []*os.File{sf}},
	} {
		if !takeCarried(u2.ext.carriers, m, carry.Final) {
			t.Fatalf("no carrier took %q", m.Verb)
		}
	}
	merged, _ := u2.ext.keys.snapshot()
	for _, k := range finalKeys {
		found := false
		for _, h := range merged {
			found = found || h.key == k.key
		}
		if !found {
			t.Errorf("a key of the final hand-off is not in the new generation's ring")
		}
	}
	eventually(t, "LoadState with the final state", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(loads) == 1 && loads[0] == "count/1 final state final"
	})
}
