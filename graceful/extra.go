package graceful

import "github.com/seed-a7250cfa/handover/internal/handoff"

// Extension points of the handover channel for what travels beside the sockets
// (TLS session ticket keys, application state).

// initExtra returns more messages for a new generation's initial batch.
func (u *Upgrader) initExtra() []handoff.Message { return nil }

// onInitMessage handles a message of the initial batch that readInit does not
// know; false leaves it (and its files) to the caller.
func (u *Upgrader) onInitMessage(m handoff.Message) bool { return false }

// onUpstreamExtra handles a message from the previous generation, after the
// handover, that onUpstreamMessage does not know; false leaves it to the caller.
func (u *Upgrader) onUpstreamExtra(m handoff.Message) bool { return false }

// onReadyExtra runs on the loop once the process is ready (becomeReady).
func (u *Upgrader) onReadyExtra() {}

// onHandedOverExtra runs on the loop once this process has handed over and its
// drain has started (onHandover); the successor's channel is open (tellSuccessor).
func (u *Upgrader) onHandedOverExtra() {}

// onStopExtra runs on the loop when the process starts to stop (stop), before its
// drain.
func (u *Upgrader) onStopExtra() {}
