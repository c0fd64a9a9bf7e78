package proc

import "strings"

// Failure is why a process handover started did not make it (or died after taking
// over): kept as a value until it is printed, so that a log line, an upgrade
// record and the answer to `handover reload` each take the part they show.
type Failure struct {
	// Cause is one word for logs and records: "exited", "timeout", "start",
	// "abandoned", "died".
	Cause string
	// Err says what happened, in a sentence that names the process.
	Err error
	// Stderr are the process's last lines on its standard error (see Tail).
	Stderr []string
}

// Error is Err, then the last lines on stderr, one an indented line.
func (f *Failure) Error() string {
	return f.Err.Error() + quoteLines(f.Stderr)
}

// Unwrap returns Err.
func (f *Failure) Unwrap() error { return f.Err }

// quoteLines quotes lines for a report ("" if none).
func quoteLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return "; its last lines on stderr:\n  " + strings.Join(lines, "\n  ")
}
