package graceful

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/testcert"
)

// fakeNow is a clock for a ring.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeNow) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeNow) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testRing(clock *fakeNow, rotation, lifetime time.Duration) *ticketRing {
	r := newTicketRing(rotation, lifetime)
	if clock != nil {
		r.now = clock.now
	}
	r.set(nil, false)
	return r
}

// TestTicketKeysEncoding: a key set survives encodeKeys/decodeKeys; any damage is
// an error, never a wrong key.
func TestTicketKeysEncoding(t *testing.T) {
	r := testRing(nil, time.Hour, 3*time.Hour)
	r.merge([]ticketKey{{key: [32]byte{1, 2, 3}, created: time.Now().Add(-time.Minute)}})
	keys, _ := r.snapshot()
	b := encodeKeys(keys)
	got, err := decodeKeys(b)
	if err != nil || len(got) != 2 || got[0].key != keys[0].key || !got[0].created.Equal(keys[0].created) || got[1].key != keys[1].key || !got[1].created.Equal(keys[1].created) {
		t.Fatalf("decodeKeys(encodeKeys) = %v, %v", got, err)
	}
	for i := range b {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x40
		if _, err := decodeKeys(bad); err == nil {
			t.Fatalf("a flipped byte at %d went unnoticed", i)
		}
	}
	for _, bad := range [][]byte{nil, b[:len(b)-1], b[:len(keysMagic)+32], append(b, 0)} {
		if _, err := decodeKeys(bad); err == nil {
			t.Errorf("decodeKeys accepted %d bytes", len(bad))
		}
	}
}

// TestTicketRingRotation: the newest key is replaced once a rotation old and each
// key is dropped (and zeroed) at its lifetime, at the moment the ring is used, as
// crypto/tls does.
func TestTicketRingRotation(t *testing.T) {
	clock := &fakeNow{t: time.Unix(1_000_000, 0)}
	r := testRing(clock, time.Hour, 3*time.Hour)
	changes := 0
	r.changed = func() { changes++ }
	first, _ := r.snapshot()
	if len(first) != 1 || !first[0].created.Equal(clock.now()) {
		t.Fatalf("a new ring: %d keys", len(first))
	}
	clock.add(59 * time.Minute)
	r.refresh()
	if keys, _ := r.snapshot(); len(keys) != 1 || changes != 0 {
		t.Fatalf("before the rotation: %d keys, %d changes", len(keys), changes)
	}
	for i := 2; i <= 3; i++ {
		clock.add(time.Hour)
		r.refresh()
		keys, _ := r.snapshot()
		if len(keys) != i || keys[len(keys)-1].key != first[0].key || changes != i-1 {
			t.Fatalf("after %d rotations: %d keys (want %d, the first still last), %d changes", i-1, len(keys), i, changes)
		}
	}
	held := &r.keys[2] // the first key's slot: zeroed when it is dropped
	clock.add(time.Hour)
	r.refresh()
	keys, _ := r.snapshot()
	if len(keys) != 3 || keys[2].key == first[0].key {
		t.Fatalf("at the first key's lifetime: %d keys, the first one still there: %v", len(keys), keys[2].key == first[0].key)
	}
	if held.key == first[0].key {
		t.Errorf("the dropped key was not zeroed")
	}
	// A fixed ring (the operator's file) neither rotates nor expires.
	r.set([]ticketKey{{key: [32]byte{9}, created: clock.now()}}, true)
	clock.add(100 * time.Hour)
	r.refresh()
	if keys, _ := r.snapshot(); len(keys) != 1 || keys[0].key != [32]byte{9} {
		t.Errorf("a fixed ring changed: %d keys", len(keys))
	}
}

// resumes makes one TLS 1.3 connection over loopback between a server with cfg and a
// client with ccfg, reads a byte (so that the client takes the server's ticket), and
// reports whether the session was resumed.
func resumes(t *testing.T, cfg, ccfg *tls.Config) bool {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		a, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		s := tls.Server(a, cfg)
		defer s.Close()
		if err := s.Handshake(); err != nil {
			errc <- err
			return
		}
		_, err = s.Write([]byte("x"))
		errc <- err
	}()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(b, ccfg)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
	return c.ConnectionState().DidResume
}

// TestTicketRingResumes: a ticket made with one ring resumes with another holding
// the same keys (as a new generation holds its parent's), also through a Clone of
// the Config made after KeepTLSSessions, and after a rotation, but not with a ring
// of other keys, nor once its key's lifetime is over.
func TestTicketRingResumes(t *testing.T) {
	cert, pool := testcert.New(t)
	clock := &fakeNow{t: time.Now()}
	gen1 := testRing(clock, time.Hour, 3*time.Hour)
	cfg1 := &tls.Config{Certificates: []tls.Certificate{cert}}
	if err := gen1.install(cfg1, true); err != nil {
		t.Fatal(err)
	}
	cache := tls.NewLRUClientSessionCache(1)
	ccfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13, ClientSessionCache: cache}
	if resumes(t, cfg1, ccfg) {
		t.Fatal("the first connection resumed")
	}
	saved, _ := cache.Get("127.0.0.1")

	keys, _ := gen1.snapshot()
	decoded, err := decodeKeys(encodeKeys(keys))
	if err != nil {
		t.Fatal(err)
	}
	gen2 := newTicketRing(time.Hour, 3*time.Hour)
	gen2.now = clock.now
	gen2.set(decoded, false)
	cfg2 := &tls.Config{Certificates: []tls.Certificate{cert}}
	if err := gen2.install(cfg2, true); err != nil {
		t.Fatal(err)
	}
	clone := cfg2.Clone()
	other := testRing(clock, time.Hour, 3*time.Hour)
	cfg3 := &tls.Config{Certificates: []tls.Certificate{cert}}
	other.install(cfg3, true)
	for _, c := range []struct {
		name string
		cfg  *tls.Config
		want bool
	}{
		{"the same keys", cfg2, true},
		{"a Clone", clone, true},
		{"other keys", cfg3, false},
	} {
		cache.Put("127.0.0.1", saved)
		if got := resumes(t, c.cfg, ccfg); got != c.want {
			t.Errorf("%s: resumed %v, want %v", c.name, got, c.want)
		}
	}
	clock.add(90 * time.Minute) // rotated: the ticket's key only decrypts now
	cache.Put("127.0.0.1", saved)
	if !resumes(t, cfg2, ccfg) {
		t.Errorf("after a rotation: not resumed")
	}
	if keys, _ := gen2.snapshot(); len(keys) != 2 {
		t.Errorf("after a rotation: %d keys", len(keys))
	}
	clock.add(90 * time.Minute) // 3h: the ticket's key is gone
	cache.Put("127.0.0.1", saved)
	if resumes(t, cfg2, ccfg) {
		t.Errorf("after the key's lifetime: resumed")
	}
}

// TestTicketRingInstall: KeepTLSSessions refuses a nil Config, one with session
// tickets disabled or with hooks of its own (a Server's own TLS leaves those
// alone), and installs once.
func TestTicketRingInstall(t *testing.T) {
	r := testRing(nil, time.Hour, 3*time.Hour)
	hooked := &tls.Config{WrapSession: func(tls.ConnectionState, *tls.SessionState) ([]byte, error) { return nil, nil }}
	for _, c := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"nil", nil},
		{"tickets disabled", &tls.Config{SessionTicketsDisabled: true}},
		{"hooks of its own", hooked},
	} {
		if err := r.install(c.cfg, true); err == nil {
			t.Errorf("%s: installed", c.name)
		}
		if c.cfg != nil {
			if err := r.install(c.cfg, false); err != nil {
				t.Errorf("%s, a Server's own: %v", c.name, err)
			}
		}
	}
	if r.isUsed() {
		t.Errorf("the ring is used")
	}
	cfg := &tls.Config{}
	n := 0
	r.changed = func() { n++ }
	if err := r.install(cfg, true); err != nil || cfg.WrapSession == nil || cfg.UnwrapSession == nil {
		t.Fatalf("install: %v", err)
	}
	if err := r.install(cfg, true); err != nil {
		t.Errorf("a second install of the same Config: %v", err)
	}
	if !r.isUsed() || n != 1 {
		t.Errorf("used %v, %d changes; want the first use told once", r.isUsed(), n)
	}
}

// TestLoadKeyFile: the operator's key file: comments and blank lines skipped, the
// first key first; refused when others may read it or its group write it, when it
// is not a regular file, missing, empty or malformed.
func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := strings.Repeat("ab", 32), strings.Repeat("0F", 32)
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := write("good", "# keys\n\n"+k1+"\n  "+k2+"  \n", 0o600)
	keys, err := loadKeyFile(good)
	if err != nil || len(keys) != 2 || keys[0].key[0] != 0xab || keys[1].key[0] != 0x0f || !keys[0].created.After(keys[1].created) {
		t.Fatalf("loadKeyFile = %v, %v", keys, err)
	}
	if keys, err := loadKeyFile(write("group", k1+"\n", 0o640)); err != nil || len(keys) != 1 {
		t.Errorf("mode 0640: %v", err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(good, link)
	if _, err := loadKeyFile(link); err != nil {
		t.Errorf("through a symlink (as Kubernetes mounts secrets): %v", err)
	}
	for _, c := range []struct {
		name, path, want string
	}{
		{"readable by others", write("world", k1+"\n", 0o644), "chmod 600"},
		{"writable by the group", write("gw", k1+"\n", 0o660), "chmod 600"},
		{"a directory", dir, "not a regular file"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"empty", write("empty", "# nothing\n", 0o600), "no key"},
		{"short", write("short", k1[:62]+"\n", 0o600), "line 1"},
		{"not hex", write("nothex", strings.Repeat("zz", 32)+"\n", 0o600), "not hex"},
	} {
		if _, err := loadKeyFile(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error with %q", c.name, err, c.want)
		}
	}
}
