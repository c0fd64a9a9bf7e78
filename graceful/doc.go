// Package graceful upgrades and stops network servers without dropping a connection.
//
// It has three layers, each usable on its own:
//
//   - Drainer, the connection-counting drain layer shared by every restart path: it
//     tracks the connections accepted through its listeners (new, active, idle,
//     hijacked), and Drain stops accepting, turns HTTP keep-alive off, closes idle
//     connections after a grace period, waits for the rest and force-closes them at
//     a deadline. It works under any protocol; attached to an http.Server it knows
//     HTTP connection states. After a handover it moves idle connections to the new
//     generation instead of closing them (conncarrier.go, connpass.go, conn.go).
//   - Server, an http.Server that takes its listener from the Upgrader and drains
//     through a Drainer (never http.Server.Shutdown, which drops a request read just
//     as it starts: golang/go#75591), with HTTP/2 connections told to go away. The
//     package-level ListenAndServe is the one-word change from http.ListenAndServe.
//   - Upgrader, the process's part in a line of generations: listeners inherited
//     from systemd or the previous generation (package activation), readiness to the
//     parent or to systemd (READY=1, MAINPID=, BARRIER=1, STATUS=, watchdog, fd
//     store), upgrades on SIGUSR2, Upgrade or the control socket (`handover reload`),
//     and Exit, which closes once a new generation has taken over or the process was
//     asked to stop. Its machines are in machine.go (the process's life),
//     attempt.go (one upgrade attempt), successor.go (the generation it handed over
//     to) and lineage.go (the older generations still draining).
//
// A failed upgrade (the new binary missing, crashing, hanging, or reporting an error)
// leaves the old process serving and is reported to whoever asked.
//
// Beside the sockets, each generation hands the next what would otherwise start cold:
// its idle keep-alive connections (see Server), its TLS session-ticket keys, so that clients resume their sessions with the new
// generation instead of a full handshake (a Server's ServeTLS uses them; for a
// tls.Config of your own, see Upgrader.KeepTLSSessions; Config.TicketKeyFile for keys
// shared by a fleet), and, with Config.SaveState and LoadState, the application's
// state. Both travel as sealed memfds over the handover channel, never on disk, in the
// environment or on the command line; under systemd with Config.FDStore (or under a
// `handover run` master) they also wait in the fd store for a restart.
package graceful
