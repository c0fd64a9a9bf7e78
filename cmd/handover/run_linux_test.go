package main

import (
	"strings"
	"testing"
)

// TestRunFlagErrors: handover run refuses bad flags with exit 2, what is wrong and
// a pointer to -h, before it binds or starts anything; -h prints the usage.
func TestRunFlagErrors(t *testing.T) {
	t.Setenv(controlEnv, "")
	ok := []string{"-listen", "http=127.0.0.1:8080"}
	for _, c := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"-h"}, 0, "usage: handover run [flags] -- PROG"},
		{ok, 2, "no program to run"},
		{[]string{"-listen", "http", "--", "app"}, 2, `invalid value "http" for flag -listen: want NAME=ADDR`},
		{[]string{"-listen", "http=127.0.0.1:8080", "-listen", "http=127.0.0.1:8081", "--", "app"}, 2, `the name "http" is given twice`},
		{[]string{"-listen", "handover-control=127.0.0.1:8080", "--", "app"}, 2, "reserved for the control socket"},
		{append(ok, "-drain-timeout", "0s", "--", "app"), 2, "-drain-timeout 0s: must be positive"},
		{append(ok, "-upgrade-timeout", "-1s", "--", "app"), 2, "-upgrade-timeout -1s: must be positive"},
		{append(ok, "-settle", "-1s", "--", "app"), 2, "-settle -1s: must not be negative"},
		{append(ok, "-prepare-timeout", "0s", "--", "app"), 2, "-prepare-timeout 0s: must be positive"},
		{append(ok, "-max-draining", "0", "--", "app"), 2, "-max-draining 0: must be at least 1"},
		{append(ok, "-restart-delay", "2s", "-restart-delay-max", "1s", "--", "app"), 2, "-restart-delay-max 1s is below -restart-delay 2s"},
		{append(ok, "-ready-after", "5s", "-upgrade-timeout", "5s", "--", "app"), 2, "-ready-after 5s is not below -upgrade-timeout 5s"},
		{append(ok, "-stop-signal", "SIGNOPE", "--", "app"), 2, `-stop-signal "SIGNOPE": no such signal`},
		{append(ok, "-no-such-flag", "--", "app"), 2, "see handover run -h"},
	} {
		_, stderr, code := handover(t, append([]string{"run"}, c.args...)...)
		if code != c.code || !strings.Contains(stderr, c.say) {
			t.Errorf("handover run %q: exit %d, %q; want %d and %q", c.args, code, stderr, c.code, c.say)
		}
		if code == 2 && !strings.Contains(stderr, "handover run -h") {
			t.Errorf("handover run %q: %q does not point to -h", c.args, stderr)
		}
	}
}

// TestRunConfig: the flags become the master's Config.
func TestRunConfig(t *testing.T) {
	f, code := parseRunFlags([]string{"-listen", "http=127.0.0.1:8080", "-listen", "dns=udp:127.0.0.1:5353", "-control", "/run/c.sock", "-pidfile", "/run/p",
		"-drain-timeout", "7s", "-upgrade-timeout", "9s", "-stop-signal", "quit", "-ready-after", "1s", "-restart-delay", "1s", "-restart-delay-max", "4s",
		"-max-draining", "5", "-settle", "3s", "-prepare-timeout", "2m", "--", "/srv/app", "-v", "x"}, &strings.Builder{})
	if f == nil || code != 0 {
		t.Fatalf("parse: exit %d", code)
	}
	if err := f.check(); err != nil {
		t.Fatal(err)
	}
	c := f.config()
	got := []any{c.Prog, strings.Join(c.Args, " "), len(c.Listen), c.Listen[1].Network, c.Control, c.PIDFile, c.DrainTimeout.String(), c.UpgradeTimeout.String(),
		int(c.StopSignal), c.ReadyAfter.String(), c.RestartDelay.String(), c.RestartDelayMax.String(), c.MaxDraining, c.Settle.String(), c.PrepareTimeout.String()}
	want := []any{"/srv/app", "-v x", 2, "udp", "/run/c.sock", "/run/p", "7s", "9s", 3, "1s", "1s", "4s", 5, "3s", "2m0s"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("config field %d: %v, want %v (%+v)", i, got[i], want[i], c)
		}
	}
}
