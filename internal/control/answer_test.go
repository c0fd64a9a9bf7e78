package control

import (
	"errors"
	"reflect"
	"testing"

	"github.com/seed-a7250cfa/handover/internal/wire"
)

// server is a Server with set answers.
type server struct {
	st      wire.Status
	stErr   error
	outcome Outcome
	asked   *[]string // the requests Upgrade ran, if set
}

func (s server) Status() (wire.Status, error) { return s.st, s.stErr }
func (s server) Upgrade(req string) Outcome {
	if s.asked != nil {
		*s.asked = append(*s.asked, req)
	}
	return s.outcome
}

// TestAnswer: what a server's typed answers become on the wire, for both requests.
func TestAnswer(t *testing.T) {
	st := wire.Status{PID: 7, Generation: 2, State: "serving"}
	failed := errors.New("upgrade failed: new child exited")
	for _, c := range []struct {
		name string
		req  string
		s    server
		want Response
	}{
		{"status", Status, server{st: st}, Response{OK: true, PID: 7, Generation: 2, Status: &st}},
		{"status of an exiting master", Status, server{stErr: errors.New("handover run is exiting")}, Response{Error: "handover run is exiting", Stopping: true}},
		{"upgraded", Upgrade, server{outcome: Outcome{PID: 8, Generation: 3}}, Response{OK: true, PID: 8, Generation: 3}},
		{"failed", Upgrade, server{outcome: Outcome{Err: failed}}, Response{Error: failed.Error()}},
		{"stopping", Upgrade, server{outcome: Outcome{Err: errors.New("abandoned"), Stopping: true}}, Response{Error: "abandoned", Stopping: true}},
		{"moved", Upgrade, server{outcome: Outcome{Err: errors.New("handed over"), Moved: 8, Stopping: true}}, Response{Error: "handed over", Moved: 8}},
	} {
		if got := Answer(c.req, c.s); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	// The steps of a two-phase upgrade reach the server as they were asked for.
	var asked []string
	for _, req := range []string{Prepare, Commit, Abort, Upgrade} {
		s := server{outcome: Outcome{PID: 9, Generation: 4}, asked: &asked}
		if got := Answer(req, s); !got.OK || got.PID != 9 {
			t.Errorf("%s: %+v", req, got)
		}
	}
	if !reflect.DeepEqual(asked, []string{Prepare, Commit, Abort, Upgrade}) {
		t.Errorf("the server ran %v", asked)
	}
}
