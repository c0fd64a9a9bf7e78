package graceful

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestStateEncoding: a blob and its version survive encodeState/decodeState; any
// damage is an error.
func TestStateEncoding(t *testing.T) {
	for _, c := range []struct {
		version string
		data    []byte
	}{{"v1", []byte(`{"served":42}`)}, {"", nil}, {strings.Repeat("v", 255), bytes.Repeat([]byte{0}, 1000)}} {
		b := encodeState(c.version, c.data)
		v, d, err := decodeState(b)
		if err != nil || v != c.version || !bytes.Equal(d, c.data) {
			t.Fatalf("decodeState(encodeState(%q, %d bytes)) = %q, %d bytes, %v", c.version, len(c.data), v, len(d), err)
		}
	}
	b := encodeState("v1", []byte("data"))
	for i := range b {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x01
		if _, _, err := decodeState(bad); err == nil {
			t.Fatalf("a flipped byte at %d went unnoticed", i)
		}
	}
	for _, bad := range [][]byte{nil, b[:10], b[:len(b)-1], append(b, 0)} {
		if _, _, err := decodeState(bad); err == nil {
			t.Errorf("decodeState accepted %d bytes", len(bad))
		}
	}
	// A version 1 blob (SHA-256), as a previous build sends it, still decodes.
	v1 := []byte(stateMagicV1)
	v1 = binary.BigEndian.AppendUint16(v1, 2)
	v1 = append(v1, "v1"...)
	v1 = binary.BigEndian.AppendUint64(v1, 4)
	v1 = append(v1, "data"...)
	sum := sha256.Sum256(v1)
	v1 = append(v1, sum[:]...)
	if v, d, err := decodeState(v1); err != nil || v != "v1" || string(d) != "data" {
		t.Errorf("a version 1 blob decodes to %q, %q, %v", v, d, err)
	}
	for i := range v1 {
		bad := append([]byte(nil), v1...)
		bad[i] ^= 0x01
		if _, _, err := decodeState(bad); err == nil {
			t.Fatalf("a flipped byte at %d of a version 1 blob went unnoticed", i)
		}
	}
	if err := checkStateVersion("ok version/2"); err != nil {
		t.Errorf("a printable version: %v", err)
	}
	for _, bad := range []string{strings.Repeat("v", 256), "two\nlines", "nul\x00"} {
		if err := checkStateVersion(bad); err == nil {
			t.Errorf("StateVersion %q accepted", bad)
		}
	}
}

// TestSaveState: what the old generation makes of SaveState's outcome: a blob
// tagged with the version, or a reason (an error or a panic: "save"; over
// MaxStateSize: "too_large"; no answer in time: "timeout"). The bound is on the
// carrier's clock: a hanging SaveState times out when the test moves the clock.
func TestSaveState(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	const bound = 100 * time.Millisecond
	for _, c := range []struct {
		name   string
		save   func(bool) ([]byte, error)
		reason string
	}{
		{"ok", func(final bool) ([]byte, error) { return []byte("state"), nil }, ""},
		{"error", func(bool) ([]byte, error) { return nil, errors.New("no state") }, "save"},
		{"panic", func(bool) ([]byte, error) { panic("oops") }, "save"},
		{"too large", func(bool) ([]byte, error) { return make([]byte, MaxStateSize+1), nil }, "too_large"},
		{"hangs", func(bool) ([]byte, error) { <-block; return nil, nil }, "timeout"},
	} {
		clock := newFakeClock()
		sc := &stateCarrier{save: c.save, version: "v7", timeout: bound, clock: clock}
		type saved struct {
			blob   []byte
			size   int
			reason string
			err    error
		}
		res := make(chan saved, 1)
		go func() {
			parts, size, reason, err := sc.saveState(true)
			res <- saved{bytes.Join(parts, nil), size, reason, err}
		}()
		if c.reason == "timeout" {
			clock.waitTimer(t, epoch.Add(bound), 1)
			clock.Advance(bound)
		}
		var r saved
		select {
		case r = <-res:
		case <-time.After(waitBound):
			t.Fatalf("%s: saveState did not return", c.name)
		}
		if r.reason != c.reason || (r.err == nil) != (c.reason == "") {
			t.Errorf("%s: reason %q, %v; want %q", c.name, r.reason, r.err, c.reason)
			continue
		}
		if c.reason == "too_large" && r.size != MaxStateSize+1 {
			t.Errorf("%s: size %d", c.name, r.size)
		}
		if c.reason == "" {
			if v, d, err := decodeState(r.blob); err != nil || v != "v7" || string(d) != "state" {
				t.Errorf("%s: the blob decodes to %q, %q, %v", c.name, v, d, err)
			}
		}
	}
}

// TestLoadState: LoadState's refusal or panic is logged (state_refused) and goes
// no further.
func TestLoadState(t *testing.T) {
	var log bytes.Buffer
	var got []string
	sc := &stateCarrier{log: slog.New(slog.NewTextHandler(&log, nil)), load: func(version string, data []byte, final bool) error {
		got = append(got, version)
		switch version {
		case "old":
			return errors.New("unknown format")
		case "boom":
			panic("bad state")
		}
		return nil
	}}
	sc.loadState("v1", []byte("x"), false, "parent", 0)
	sc.loadState("old", []byte("x"), true, "parent", 0)
	sc.loadState("boom", []byte("x"), true, "store", 0)
	if strings.Join(got, ",") != "v1,old,boom" {
		t.Errorf("LoadState saw %q", got)
	}
	out := log.String()
	if strings.Count(out, "event=state_loaded") != 1 || strings.Count(out, "event=state_refused") != 2 || !strings.Contains(out, "event=state_refused version=old bytes=1 final=true from=parent") {
		t.Errorf("logged:\n%s", out)
	}
}
