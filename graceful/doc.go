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
//     generation instead of closing them (see Server).
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
// leaves the old process serving and is reported to whoever asked. So does a new
// generation that dies after taking over, within its probation (Config.Probation, 10
// s by default, without a service manager): the old process, drained or not, stands
// by until then and serves again.
//
// The old process stops accepting at a handover's last step, just before the new
// generation hears that it is the current one (after MAINPID= and BARRIER=1 under
// systemd): from then on every connection that arrives waits in the socket's queue
// for the new generation, instead of going to whichever of the two processes
// accepts first. Should that last step fail, the old process accepts again.
//
// An upgrade may also run in two phases: Upgrader.Prepare (or `handover
// prepare`) starts the new generation, which inherits the sockets, loads the state
// and the TLS keys and runs its start-up up to Ready, then waits without accepting
// while this process serves alone; Commit (`handover commit`) makes it serve, as an
// upgrade does once its new generation is ready; nothing starts then, and the new
// generation answers within a few milliseconds (see BENCHMARKS.md); Abort (`handover abort`), or Config.PrepareTimeout, ends it
// without it having served. Under a `handover run` master, the master prepares and
// commits its library children the same way.
//
// Beside the sockets, each generation hands the next what would otherwise start cold:
// its idle keep-alive connections (see Server), its TLS session-ticket keys, so that clients resume their sessions with the new
// generation instead of a full handshake (a Server's ServeTLS uses them; for a
// tls.Config of your own, see Upgrader.KeepTLSSessions; Config.TicketKeyFile for keys
// shared by a fleet), and, with Config.SaveState and LoadState, the application's
// state. Both travel as sealed memfds over the handover channel, never on disk, in the
// environment or on the command line; under systemd with Config.FDStore (or under a
// `handover run` master) they also wait in the fd store for a restart. Under a master
// the children hand these on to each other as generations do (the master starts
// each; a library child keeps a link to itself in the master's fd store, on which
// the next child reaches it: masterlink.go).
package graceful
