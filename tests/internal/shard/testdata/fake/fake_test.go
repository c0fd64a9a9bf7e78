// Package fake is a test binary for package shard's tests: its tests check, from
// inside, what shard promises them (a process each, serial ones never overlapping,
// others at the same time), and misbehave on request ($FAKE_FAIL, $FAKE_LEAK,
// $FAKE_SLOW). $FAKE_DIR is a directory they share.
package fake

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/shard"
)

func TestMain(m *testing.M) {
	os.Exit(shard.Main(shard.Config{
		Run:    m.Run,
		Serial: func(name string) bool { return strings.HasPrefix(name, "TestSerial") },
		Jobs:   3,
		Setup: func() ([]string, func(), error) {
			return []string{"FAKE_SETUP=yes"}, func() { touch(nil, "setup-done") }, nil
		},
	}))
}

func dir() string { return os.Getenv("FAKE_DIR") }

func touch(t *testing.T, name string) {
	if err := os.WriteFile(filepath.Join(dir(), name), nil, 0o644); err != nil && t != nil {
		t.Fatal(err)
	}
}

func exists(name string) bool {
	_, err := os.Stat(filepath.Join(dir(), name))
	return err == nil
}

// record writes the test's PID and what it saw of its environment.
func record(t *testing.T) {
	t.Helper()
	line := fmt.Sprintf("%d %s %s\n", os.Getpid(), os.Getenv("FAKE_SETUP"), os.Getenv("HANDOVER_TEST_SHARD_WORKER"))
	if err := os.WriteFile(filepath.Join(dir(), t.Name()+".ran"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

// serial holds a lock file that only one serial test may hold at a time.
func serial(t *testing.T) {
	record(t)
	f, err := os.OpenFile(filepath.Join(dir(), "serial.lock"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("another serial test runs: %v", err)
	}
	f.Close()
	time.Sleep(300 * time.Millisecond) // holding it: started together, two would overlap here
	os.Remove(f.Name())
}

func TestSerialA(t *testing.T) { serial(t) }
func TestSerialB(t *testing.T) { serial(t) }
func TestSerialC(t *testing.T) { serial(t) }

// meet waits until the other test has started: two tests run at the same time, or
// both fail.
func meet(t *testing.T, me, other string) {
	record(t)
	touch(t, me+".started")
	deadline := time.Now().Add(20 * time.Second)
	for !exists(other + ".started") {
		if time.Now().After(deadline) {
			t.Fatalf("%s never started while %s ran", other, me)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMeetOne(t *testing.T) { meet(t, "one", "two") }
func TestMeetTwo(t *testing.T) { meet(t, "two", "one") }

func TestFails(t *testing.T) {
	record(t)
	if os.Getenv("FAKE_FAIL") != "" {
		t.Error("failing as asked")
	}
}

// TestLeaks leaves a process running when asked: the coordinator must kill it.
func TestLeaks(t *testing.T) {
	record(t)
	if os.Getenv("FAKE_LEAK") == "" {
		return
	}
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir(), "leaked.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSlow(t *testing.T) {
	record(t)
	if os.Getenv("FAKE_SLOW") != "" {
		time.Sleep(time.Minute)
	}
}
