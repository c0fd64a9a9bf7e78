//go:build linux

package graceful

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/internal/carry"
	"github.com/seed-a7250cfa/handover/internal/fds"
	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The application's last state (issue 17, item 3): SaveState(true) runs once the
// old generation's drain has ended (its last request answered), after the final
// states of older generations it is loading, and a final state that comes after
// it is passed on to the successor.

// peerLog is a successor as a carrier sees it: it keeps what it was sent (the
// state's text and data), in order.
type peerLog struct {
	t    *testing.T
	sent chan string
}

func (p *peerLog) Send(m handoff.Message) error {
	b, err := handoff.ReadSealed(m.Files[0], MaxStateSize+int64(stateOverhead))
	if err != nil {
		p.t.Errorf("sent %q: %v", m.Verb, err)
		return err
	}
	_, data, err := decodeState(b)
	if err != nil {
		p.t.Errorf("sent %q: %v", m.Verb, err)
		return err
	}
	p.sent <- m.Text + ": " + string(data)
	return nil
}

func (p *peerLog) next() string {
	p.t.Helper()
	select {
	case s := <-p.sent:
		return s
	case <-time.After(waitBound):
		p.t.Fatal("nothing was sent to the successor")
		return ""
	}
}

func finalState(t *testing.T, data string) handoff.Message {
	t.Helper()
	f, err := handoff.SealedFile(stateName, encodeState("v", []byte(data)))
	if err != nil {
		t.Fatal(err)
	}
	return handoff.Message{Verb: handoff.State, Text: "final v", Files: []*os.File{f}}
}

func TestStateFinalAfterDrain(t *testing.T) {
	var mu sync.Mutex
	state := []string{"mine"}
	var saves []bool
	loading := 0
	release := make(chan struct{})
	var work sync.WaitGroup
	c := &stateCarrier{version: "v", timeout: time.Minute, clock: systemClock{}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		save: func(final bool) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			if loading > 0 {
				t.Error("SaveState(true) ran while LoadState(true) of an older generation's state was still running")
			}
			saves = append(saves, final)
			return []byte(strings.Join(state, "+")), nil
		},
		load: func(version string, data []byte, final bool) error {
			mu.Lock()
			loading++
			mu.Unlock()
			if string(data) == "older" {
				<-release
			}
			mu.Lock()
			defer mu.Unlock()
			loading--
			state = append(state, string(data))
			return nil
		},
	}
	c.h = &carryHost{log: c.log, set: new(fds.Set), hold: func() func() { work.Add(1); return work.Done }}
	defer work.Wait()
	peer := &peerLog{t: t, sent: make(chan string, 4)}

	// Handed over: nothing is saved yet (the drain goes on).
	c.Turn(carry.Turn{Role: carry.HandedOver, Successor: peer})
	// An older generation's final state comes, and is being loaded...
	if !c.Take(finalState(t, "older"), carry.Final) {
		t.Fatal("the final state was not taken")
	}
	// ...when the drain ends: the last state waits for it.
	c.Turn(carry.Turn{Role: carry.Drained, Successor: peer})
	mu.Lock()
	if len(saves) != 0 {
		t.Errorf("SaveState called %v before the older state was loaded", saves)
	}
	mu.Unlock()
	close(release)
	if got := peer.next(); got != "final v: mine+older" {
		t.Fatalf("the last state sent: %q; want this generation's, with the older one's in it", got)
	}
	// A final state that comes after this one's was saved goes on as it came.
	c.Take(finalState(t, "oldest"), carry.Final)
	if got := peer.next(); got != "final v: oldest" {
		t.Fatalf("passed on: %q", got)
	}
	// Serving again (resumed): a final state is loaded here again.
	c.Turn(carry.Turn{Role: carry.Serving})
	c.Take(finalState(t, "again"), carry.Final)
	work.Wait()
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(state, "+") != "mine+older+again" || len(saves) != 1 || !saves[0] {
		t.Fatalf("state %q, SaveState calls %v", state, saves)
	}
}
