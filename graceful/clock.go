package graceful

import "time"

// Clock is the time source of a Drainer. The zero Drainer uses the system clock;
// tests inject a fake one so that grace periods run deterministically.
//
// A Clock may also have a method NewTimerAt(t time.Time) Timer, returning a timer
// that fires once the clock reads t or later. The Drainer then asks for its timers
// by deadline rather than by duration, so that a fake clock advanced while the
// Drainer was working out how long to wait does not push the deadline back by the
// advance. A fake clock should have it.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// timerAt returns a timer of c that fires at t; now is the reading of c from which t
// was worked out.
func timerAt(c Clock, t, now time.Time) Timer {
	if ac, ok := c.(interface{ NewTimerAt(time.Time) Timer }); ok {
		return ac.NewTimerAt(t)
	}
	return c.NewTimer(t.Sub(now))
}

// Timer is the part of *time.Timer a Drainer uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }
