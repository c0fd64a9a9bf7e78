package carry

import (
	"testing"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

type nop struct{ name string }

func (nop) Take(handoff.Message, Phase) bool { return false }
func (nop) Start(Host) error                 { return nil }
func (nop) Batch() []handoff.Message         { return nil }
func (nop) Turn(Turn)                        {}

// TestRegister: carriers are kept in the order they register, and the list a
// caller gets is its own.
func TestRegister(t *testing.T) {
	// The registry is the process's: start from an empty one (the test may run
	// more than once, -count), and give the previous one back.
	registry.mu.Lock()
	saved := registry.carriers
	registry.carriers = nil
	registry.mu.Unlock()
	t.Cleanup(func() {
		registry.mu.Lock()
		registry.carriers = saved
		registry.mu.Unlock()
	})
	a, b := &nop{"a"}, &nop{"b"}
	Register(a)
	Register(b)
	got := Registered()
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("Registered() = %v; want a, b", got)
	}
	got[0] = nil
	if Registered()[0] != a {
		t.Fatal("the registry shares its list with a caller")
	}
}
