// Package handoff is what one handover process tells the next: the names and the
// environment of the socket-passing protocol (names.go: systemd's LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES, parsed with errors that say what is wrong, and
// handover's own variables, among them the parent's Marker), the handover channel
// between a generation and the one it starts (Channel) and its messages (Message),
// and the sealed memfds that carry secrets and state beside it (SealedFile).
//
// The descriptors themselves (which a process inherited, what they are, how to
// claim them and what to pass on) are package fds's. Both are internal: package
// activation is the public face of the first part, package graceful and handover
// run's master (internal/master) are their users.
package handoff
