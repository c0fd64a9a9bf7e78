package proc

import "testing"

// TestReservePort: a port reserved is refused to a second holder (another open file
// description, as another test process has) until it is released.
func TestReservePort(t *testing.T) {
	release, ok := ReservePort("tcp", 29999)
	if !ok {
		t.Fatal("a fresh reservation was refused (another test process may hold it: rerun)")
	}
	if r2, ok := ReservePort("tcp", 29999); ok {
		r2()
		t.Fatal("a port reserved twice at once")
	}
	if r2, ok := ReservePort("udp", 29999); !ok {
		t.Error("the UDP port of the same number refused")
	} else {
		r2()
	}
	release()
	r3, ok := ReservePort("tcp", 29999)
	if !ok {
		t.Fatal("a released port refused")
	}
	r3()
}
