//go:build linux

package master

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/seed-a7250cfa/handover/internal/handoff"
	"github.com/seed-a7250cfa/handover/internal/proc"
	"github.com/seed-a7250cfa/handover/internal/sdnotify"
)

// protocolVars are the variables of socket passing and service managers; the
// master's own values must not reach a child.
var protocolVars = []string{
	handoff.ListenPIDEnv, handoff.ListenFDsEnv, handoff.ListenFDNamesEnv, handoff.MarkerEnv, handoff.MasterEnv, handoff.GenerationEnv,
	handoff.DirectEnv, sdnotify.Env, sdnotify.WatchdogUSecEnv, sdnotify.WatchdogPIDEnv, ShimEnv, ShimFDEnv,
}

// childEnv is the environment of every child, but LISTEN_FDS and LISTEN_FDNAMES,
// which spawn adds (the shim adds LISTEN_PID; a direct start has none): the master's own without the
// protocol variables, then the master's notification socket, its PID, and the
// watchdog's interval (the shim adds WATCHDOG_PID).
func childEnv(environ []string, notifyPath string, wd *sdnotify.Watchdog) []string {
	var env []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, p := range protocolVars {
			drop = drop || k == p
		}
		if !drop {
			env = append(env, kv)
		}
	}
	env = append(env,
		sdnotify.Env+"="+notifyPath,
		handoff.MasterEnv+"="+strconv.Itoa(os.Getpid()))
	if wd != nil {
		env = append(env, sdnotify.WatchdogUSecEnv+"="+strconv.FormatInt(wd.Interval.Microseconds(), 10))
	}
	return env
}

// spawn starts c: a program built with this module (its build carries
// handoff.DirectMark) directly, with DirectEnv; any other through the re-exec shim,
// this binary with ShimEnv naming the program, which execs it in place once it has
// set LISTEN_PID to its own PID. The child gets /dev/null as stdin, the master's
// stdout, a pipe as stderr (relayed to Config.Stderr, its last lines kept: c.out),
// the sockets at fd 3 and up, then the fd store's descriptors (c.stored), its own
// process group, and SIGKILL if the master dies; c.pidfd is its pidfd, through which
// the master signals it. A child started from the kept build (c.kept) goes through
// the shim, and also gets that build's descriptor after those, named by ShimFDEnv:
// the shim runs that file, not the one now at the path, and the program does not
// inherit it.
func (h *host) spawn(c *child) error {
	if h.devnull == nil {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return err
		}
		h.devnull = f
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pw.Close()
	files := []uintptr{h.devnull.Fd(), os.Stdout.Fd(), pw.Fd()}
	var names []string
	for _, k := range h.socks.list {
		files = append(files, uintptr(k.fd))
		names = append(names, k.name)
	}
	stored, closeOffer := offerNext(c.stored, c.build.next)
	defer closeOffer()
	for _, s := range stored {
		files = append(files, uintptr(s.fd))
		names = append(names, s.name)
	}
	env := append(append([]string(nil), h.env...),
		handoff.ListenFDsEnv+"="+strconv.Itoa(len(names)),
		handoff.ListenFDNamesEnv+"="+strings.Join(names, ":"),
		handoff.GenerationEnv+"="+strconv.Itoa(c.gen))
	argv := append([]string{h.cfg.Prog}, c.launch.args...)
	path := "/proc/self/exe"
	switch {
	case c.kept && c.build.f != nil:
		env = append(env, ShimEnv+"="+c.exe, ShimFDEnv+"="+strconv.Itoa(len(files)))
		files = append(files, c.build.f.Fd())
		argv = c.build.argv(h.cfg.Prog, c.launch.args)
	case !c.kept && c.build.direct:
		path = c.exe
		env = append(env, handoff.DirectEnv+"="+handoff.DirectVersion())
	default:
		env = append(env, ShimEnv+"="+c.exe)
	}
	c.pid, c.pidfd, err = forkExec(path, argv, &syscall.ProcAttr{Dir: c.launch.dir, Env: env, Files: files})
	if err != nil {
		pr.Close()
		return fmt.Errorf("starting %s: %w", c.exe, proc.ExplainExec(c.exe, err))
	}
	c.out = proc.Relay(pr, h.cfg.Stderr)
	return nil
}

// offerNext returns the fd store to pass a new child. For a child that takes a
// handover channel of the master's making (its build carries handoff.NextMark), it
// opens that channel now on the serving child's link, if the store holds one
// (handoff.OfferNext), and passes it, named handoff.NextName(), in place of the
// link: the serving child makes and writes its initial batch (its state, its TLS
// keys...) while the new child starts, and the new child reads it at once, without
// asking first. Without a link, or when the serving child does not take the channel
// (it died: a restart after a crash; it does not read), the store goes as it is.
// closeOffer closes the master's copy of the channel, once the child has it.
func offerNext(stored []storedFD, takes bool) (pass []storedFD, closeOffer func()) {
	at := -1
	for i, s := range stored {
		if s.name == handoff.LinkName {
			at = i
		}
	}
	if !takes || at < 0 {
		return stored, func() {}
	}
	fd, err := handoff.OfferNext(stored[at].fd)
	if err != nil {
		return stored, func() {}
	}
	pass = slices.Clone(stored)
	pass[at] = storedFD{name: handoff.NextName(), fd: fd}
	return pass, func() { unix.Close(fd) }
}

// forkExec starts path as a child of the master (syscall.ForkExec), in a process
// group of its own, killed if the master dies, and returns its PID and its pidfd
// (nil on a kernel without CLONE_PIDFD, before Linux 5.2).
func forkExec(path string, argv []string, attr *syscall.ProcAttr) (int, *os.File, error) {
	pidfd := -1
	attr.Sys = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, PidFD: &pidfd}
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	var f *os.File
	if pidfd >= 0 {
		f = os.NewFile(uintptr(pidfd), "pidfd")
	}
	return pid, f, nil
}
