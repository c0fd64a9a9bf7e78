//go:build linux

package graceful

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/seed-a7250cfa/handover/internal/handoff"
)

// The records of upgrades (issue 17, item 4): what requests_after counts, and the
// drains of older generations passed down the line.

// TestRequestsCountsAnswers: a Server counts the HTTP requests it answered, not
// those whose handler took the connection over (websockets).
func TestRequestsCountsAnswers(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err == nil {
				brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
				brw.Flush()
				c.Close()
			}
			return
		}
		w.Write([]byte("ok"))
	}))
	c := dialClient(t, h.addr)
	for range 3 {
		if resp, _ := c.get(t, "/"); resp.StatusCode != 200 {
			t.Fatalf("GET /: %d", resp.StatusCode)
		}
	}
	ws := dialClient(t, h.addr)
	if resp, _ := ws.get(t, "/ws"); resp.StatusCode != 101 {
		t.Fatalf("GET /ws: %d", resp.StatusCode)
	}
	eventually(t, "the hijacked connection to close", func() bool { return h.d.Counts().Total() == 1 })
	if n := h.d.requests.Load(); n != 3 {
		t.Fatalf("%d requests counted; want 3 (the websocket's is not an answered request)", n)
	}
}

// TestDrainedPassedDown: a generation that has handed over passes the "drained" of
// an older generation on to its successor (whose history has that upgrade in it
// since the handover), and one whose attempt is past the go-ahead passes it to the
// new generation once that took over; it records it too.
func TestDrainedPassedDown(t *testing.T) {
	drained := func(from, to int) handoff.Message {
		b, _ := json.Marshal(drainStats{From: from, To: to, Seconds: 0.5, Forced: 2, Killed: "max_draining"})
		return handoff.Message{Verb: handoff.Drained, Text: string(b)}
	}
	// Under systemd, so that the handover waits in the barrier: the go-ahead is
	// given, the new generation has not heard "main" yet.
	w := newWorld(t, nil).withSystemd()
	w.sd.barrier = make(chan struct{})
	w.busy() // this generation drains until the end of the test
	up := newFakeChannel()
	w.readyWith(up)
	// This generation came from 900 (its history says so).
	me := w.m.status().PID
	w.m.history.add(Upgrade{From: 900, To: me, Outcome: "ok"})

	// During an attempt past its go-ahead: the new generation has the history
	// already; it hears the drain once it took over.
	w.upgrade()
	g := w.child()
	g.ch.say(handoff.Message{Verb: handoff.Ready, PID: g.pid()})
	stepTo[attemptReady](w)
	<-w.sd.barriers
	up.say(drained(900, me))
	stepTo[upstreamMessage](w)
	if len(w.m.line.relay) != 1 {
		t.Fatalf("%d drains held for the new generation; want 1", len(w.m.line.relay))
	}
	close(w.sd.barrier)
	g.ch.expect(t, handoff.History)
	g.ch.expect(t, handoff.Main)
	g.stderr.Close()
	stepTo[attemptEnded](w)
	var d drainStats
	if err := json.Unmarshal([]byte(g.ch.expect(t, handoff.Drained).Text), &d); err != nil || d.From != 900 || d.To != me || d.Killed != "max_draining" {
		t.Fatalf("passed on: %+v, %v", d, err)
	}
	g.ch.expect(t, handoff.Above)
	r := w.m.history.last(900, me)
	if r == nil || !r.Drained || r.ConnsForced != 2 || r.DrainKilled != "max_draining" {
		t.Fatalf("own record %+v", r)
	}

	// Draining: passed on at once.
	up.say(drained(800, 900))
	stepTo[upstreamMessage](w)
	if err := json.Unmarshal([]byte(g.ch.expect(t, handoff.Drained).Text), &d); err != nil || d.From != 800 || d.To != 900 {
		t.Fatalf("passed on while draining: %+v, %v", d, err)
	}
}
