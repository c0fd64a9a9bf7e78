package graceful

import "time"

// clock is the time source of a Drainer (nil: the system clock) and of the
// Upgrader's machines (an upgrade attempt's timers, the successor watch, the
// watchdog, SaveState's bound). Tests inject a fake one so that grace periods and
// timeouts run deterministically.
//
// A clock may also have a method NewTimerAt(t time.Time) timer, returning a timer
// that fires once the clock reads t or later. The Drainer then asks for its timers
// by deadline rather than by duration, so that a fake clock advanced while the
// Drainer was working out how long to wait does not push the deadline back by the
// advance.
type clock interface {
	Now() time.Time
	NewTimer(d time.Duration) timer
}

// timerAt returns a timer of c (the system clock if nil) that fires at t; now is the
// reading of c from which t was worked out.
func timerAt(c clock, t, now time.Time) timer {
	if c == nil {
		return sysTimer{time.NewTimer(t.Sub(now))}
	}
	if ac, ok := c.(interface{ NewTimerAt(time.Time) timer }); ok {
		return ac.NewTimerAt(t)
	}
	return c.NewTimer(t.Sub(now))
}

// timer is the part of *time.Timer a Drainer uses.
type timer interface {
	C() <-chan time.Time
	Stop() bool
}

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// systemClock is the clock of the machines when no other is given.
type systemClock struct{}

func (systemClock) Now() time.Time                 { return time.Now() }
func (systemClock) NewTimer(d time.Duration) timer { return sysTimer{time.NewTimer(d)} }
