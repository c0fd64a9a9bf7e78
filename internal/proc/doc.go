// Package proc is what handover knows of the processes it starts, for the library
// (package graceful: a new generation) and for handover run's master (a child):
// finding the executable (Find, Check), starting a process and watching it exit
// (Start, Process), keeping the last lines it writes on its standard error (Tail,
// Relay), and saying how it ended (Describe, ExitCode, Failure); and, for a prepared
// generation, mapping its own code in before its first request (MapCode).
package proc
