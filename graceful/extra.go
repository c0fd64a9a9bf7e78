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
