package tests

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a7250cfa/handover/tests/internal/load"
	"github.com/seed-a7250cfa/handover/tests/internal/logs"
	"github.com/seed-a7250cfa/handover/tests/internal/proc"
	"github.com/seed-a7250cfa/handover/tests/internal/rawhttp"
	"github.com/seed-a7250cfa/handover/tests/internal/sdns"
)

// The README's Go code blocks are the programs in examples/, character for
// character, and the tests below build and run those programs: a newcomer who copies
// a block gets a program that is tested here.

const examplesPkg = "github.com/seed-a7250cfa/handover/examples/"

var goBlock = regexp.MustCompile("(?s)```go\n(.*?)```")

func TestREADMECodeIsTheExamples(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	programs := map[string]string{}
	paths, _ := filepath.Glob("../examples/*/main.go")
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "go.mod")); err == nil {
			continue // a module of its own (examples/grpc), with its own README
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		programs[p] = string(b)
	}
	blocks := goBlock.FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 3 {
		t.Fatalf("the README has %d Go blocks; want at least the three examples", len(blocks))
	}
	shown := map[string]bool{}
	for i, b := range blocks {
		found := ""
		for p, src := range programs {
			if b[1] == src {
				found = p
			}
		}
		if found == "" {
			t.Errorf("README Go block %d is not one of examples/*/main.go verbatim:\n%s", i+1, b[1])
			continue
		}
		shown[found] = true
	}
	for p := range programs {
		if !shown[p] {
			t.Errorf("%s is not shown in the README", p)
		}
	}
}

// program is a line of generations of an example program, started by the test.
type program struct {
	t       *testing.T
	logPath string
	pids    []int // every generation seen
}

// startProgram starts argv with its output in a log, and registers the cleanup
// that kills and reaps every generation.
func startProgram(t *testing.T, argv ...string) *program {
	t.Helper()
	p := &program{t: t, logPath: filepath.Join(t.TempDir(), "program.log")}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pids = append(p.pids, cmd.Process.Pid)
	cmd.Process.Release() // reaped by PID (proc.Reap, waitGone)
	t.Cleanup(func() {
		for _, pid := range p.pids {
			if proc.Alive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			waitGone(pid, 10*time.Second)
		}
		checkVocabulary(t, p.log())
		if t.Failed() {
			t.Logf("log:\n%s", tail(p.log(), 40))
		}
	})
	return p
}

func (p *program) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *program) current() int { return p.pids[len(p.pids)-1] }

// waitOld checks that every old generation has exited. Each one stands by for its
// successor's probation once drained (graceful.Config.Probation: the examples keep
// the default, 10 s) until that one hands over in turn or stops: after stop, every
// one has exited or is about to.
func (p *program) waitOld() {
	p.t.Helper()
	for _, pid := range p.pids[:len(p.pids)-1] {
		if err := waitGone(pid, 10*time.Second); err != nil {
			p.t.Error(err)
		}
	}
}

// stop sends SIGTERM to the current generation and checks that it exits 0.
//
// Its parent, the previous generation, stands by for its probation (see waitOld):
// the SIGTERM ends that early (the current one retires), and the parent exits. If it
// has exited first, the current generation is the test's child (the test is a
// subreaper) and is reaped here; if not, the parent reaps it, and logs how it ended
// (successor_retired child=<pid> status=...). Either way its exit status is checked.
func (p *program) stop() {
	p.t.Helper()
	last := p.current()
	if err := syscall.Kill(last, syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	var status string
	reapedByParent := func() bool {
		l, ok := logs.Parse(p.log()).Last("successor_retired", logs.KV("child", last))
		status = l.Get("status")
		return ok
	}
	err := proc.WaitFor(func() bool {
		return proc.PPid(last) == os.Getpid() || reapedByParent() || proc.State(last) == "" && p.oldGone()
	}, 30*time.Second, fmt.Sprintf("generation %d to exit", last))
	if err != nil {
		p.t.Fatal(err)
	}
	switch {
	case status != "":
	case proc.PPid(last) == os.Getpid():
		st, err := proc.Reap(last, 30*time.Second)
		if err != nil {
			p.t.Fatal(err)
		}
		status = describeWait(st)
	default:
		// Reaped by its parent, which exited before it logged the status.
		p.t.Logf("generation %d was reaped by its parent, which exited before it logged how", last)
		if logs.Parse(p.log()).Count("done", logs.KV("pid", last)) != 1 {
			p.t.Errorf("generation %d exited without its drain's end (event=done)", last)
		}
		return
	}
	if status != "exit status 0" {
		p.t.Errorf("generation %d after SIGTERM: %s, want exit status 0", last, status)
	}
}

// oldGone reports whether every generation but the current one has exited.
func (p *program) oldGone() bool {
	for _, pid := range p.pids[:len(p.pids)-1] {
		if proc.Alive(pid) {
			return false
		}
	}
	return true
}

// answeredBy returns the PID that answers GET path on addr, or 0.
func answeredBy(addr, path string) int {
	resp, err := rawhttp.Get(addr, path, 5*time.Second)
	if err != nil || resp.Status != 200 {
		return 0
	}
	return resp.PID()
}

func answeredByAll(res *load.Result, pids []int) []int {
	var missing []int
	for _, p := range pids {
		found := false
		for _, s := range res.PIDs() {
			found = found || s.PID == p
		}
		if !found {
			missing = append(missing, p)
		}
	}
	return missing
}

// TestExampleOneWord: examples/oneword, its socket passed as by a socket unit
// (systemd-socket-activate; it asks for ":8080" and takes the one socket passed
// instead), upgrades three times on SIGUSR2 under load without a failed request,
// every generation answers, and the last exits 0 after draining on SIGTERM.
func TestExampleOneWord(t *testing.T) {
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		sdns.SkipOrFail(t, err)
	}
	addr := freePort(t)
	p := startProgram(t, ssa, "-l", addr, proc.Binary(t, examplesPkg+"oneword"))
	// systemd-socket-activate execs the program on the first connection: same PID.
	if err := proc.WaitFor(func() bool { return answeredBy(addr, "/") == p.current() }, 10*time.Second, "the first generation to answer"); err != nil {
		t.Fatal(err)
	}
	r := startLoad(t, addr, 0.5)
	for i := 0; i < 3; i++ {
		cur := p.current()
		if err := syscall.Kill(cur, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		var next int
		if err := proc.WaitFor(func() bool { next = answeredBy(addr, "/"); return next != 0 && next != cur }, 10*time.Second, "a new generation to answer"); err != nil {
			t.Fatal(err)
		}
		p.pids = append(p.pids, next)
		pace(time.Second)
	}
	res := r.Stop()
	checkLoad(t, res)
	if missing := answeredByAll(res, p.pids); len(missing) > 0 {
		t.Errorf("generations %v never answered the load (all: %v)", missing, p.pids)
	}
	p.stop()
	p.waitOld()
}

// TestExampleServers: examples/servers, two servers (TCP and unix socket) with a PID
// file and a control socket. Five `handover reload` under load each exit 0 and name
// the new PID; a slow request in flight on each old generation is answered by it
// (its main waits for the drain before returning); the admin server answers from
// each new generation; SIGTERM ends the last one with exit status 0.
func TestExampleServers(t *testing.T) {
	dir, err := os.MkdirTemp("", "srv") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	api := freePort(t)
	admin := filepath.Join(dir, "admin.sock")
	pidfile := filepath.Join(dir, "myapp.pid")
	ctl := filepath.Join(dir, "control.sock")
	p := startProgram(t, proc.Binary(t, examplesPkg+"servers"), "-api", api, "-admin", admin, "-pidfile", pidfile, "-control", ctl)
	readPID := func() int {
		b, _ := os.ReadFile(pidfile)
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	if err := proc.WaitFor(func() bool { return readPID() == p.current() }, 10*time.Second, "the PID file"); err != nil {
		t.Fatal(err)
	}
	handover := proc.Binary(t, handoverPkg)
	r := startLoad(t, api, 0.5)
	for i := 0; i < 5; i++ {
		old := p.current()
		slow := slowOn(t, api, old, "/report", 20*time.Second)
		out, err := exec.Command(handover, "reload", "-control", ctl).CombinedOutput()
		if err != nil {
			t.Fatalf("handover reload: %v\n%s", err, out)
		}
		cur := readPID()
		if cur == old || !strings.Contains(string(out), "PID "+strconv.Itoa(cur)) {
			t.Fatalf("handover reload said %q; the PID file names %d (old %d)", out, cur, old)
		}
		p.pids = append(p.pids, cur)
		if pid, err := unixGet(admin); err != nil || pid != cur {
			t.Errorf("admin after reload %d: pid %d, %v; want %d", i+1, pid, err, cur)
		}
		s := <-slow
		if s.err != nil || s.resp.Status != 200 || s.resp.PID() != old {
			t.Errorf("the slow request in flight on %d: %v, status %d from %d", old, s.err, statusOf(s.resp), respPID(s.resp))
		}
		// Its main returns after Wait: after the slow request was answered, and the
		// new generation's probation (p.waitOld below).
		if !proc.Alive(old) {
			t.Errorf("generation %d exited before its successor's probation was over", old)
		}
	}
	res := r.Stop()
	checkLoad(t, res)
	if missing := answeredByAll(res, p.pids); len(missing) > 0 {
		t.Errorf("generations %v never answered the load (all: %v)", missing, p.pids)
	}
	p.stop()
	p.waitOld()
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Errorf("PID file after the stop: %v; want it removed", err)
	}
}

// TestExampleLines: examples/lines, a line protocol on raw TCP. Eight clients send
// lines one after the other (each waits for its answer), reconnecting when an answer
// ends in "bye"; five upgrades happen meanwhile. Every line sent is answered, no
// connection fails, and every generation answers.
func TestExampleLines(t *testing.T) {
	addr := freePort(t)
	p := startProgram(t, proc.Binary(t, examplesPkg+"lines"), "-listen", addr)
	first := p.current()
	var mu sync.Mutex
	answered := map[int]int{} // by PID
	var sent, byes int
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := func(id int) {
		defer wg.Done()
		deadline := time.Now().Add(60 * time.Second) // a hang guard
		var c net.Conn
		var br *bufio.Reader
		for n := 0; time.Now().Before(deadline); n++ {
			select {
			case <-stop:
				if c != nil {
					c.Close()
				}
				return
			default:
			}
			if c == nil {
				var err error
				if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("client %d: dial: %v", id, err))
					mu.Unlock()
					return
				}
				br = bufio.NewReader(c)
			}
			line := fmt.Sprintf("client%d-line%d", id, n)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := fmt.Fprintln(c, line)
			var reply string
			if err == nil {
				reply, err = br.ReadString('\n')
			}
			f := strings.Fields(reply)
			if err != nil || len(f) < 2 || f[1] != line {
				mu.Lock()
				failures = append(failures, fmt.Sprintf("client %d, %q: reply %q, %v", id, line, reply, err))
				mu.Unlock()
				c.Close()
				return
			}
			pid, _ := strconv.Atoi(f[0])
			mu.Lock()
			sent++
			answered[pid]++
			if len(f) == 3 && f[2] == "bye" {
				byes++
			}
			mu.Unlock()
			if len(f) == 3 && f[2] == "bye" {
				c.Close()
				c = nil
			}
			pace(5 * time.Millisecond)
		}
	}
	waitListening(t, addr)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go client(i)
	}
	pidsSeen := func() map[int]int {
		mu.Lock()
		defer mu.Unlock()
		m := map[int]int{}
		for k, v := range answered {
			m[k] = v
		}
		return m
	}
	for i := 0; i < 5; i++ {
		old := p.current()
		pace(500 * time.Millisecond)
		if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		// The new generation answers once the clients reconnect.
		var next int
		if err := proc.WaitFor(func() bool {
			for pid := range pidsSeen() {
				if pid != old && !containsInt(p.pids, pid) {
					next = pid
				}
			}
			return next != 0
		}, 15*time.Second, "a new generation to answer"); err != nil {
			t.Fatal(err)
		}
		p.pids = append(p.pids, next)
	}
	pace(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d lines answered (%d with bye) by %v; generations %v (first %d)", sent, byes, answered, p.pids, first)
	if len(failures) > 0 {
		t.Errorf("%d failures:\n%s", len(failures), strings.Join(failures, "\n"))
	}
	for _, pid := range p.pids {
		if answered[pid] == 0 {
			t.Errorf("generation %d answered no line", pid)
		}
	}
	if byes == 0 {
		t.Error("no answer said bye: the drain never asked a client to reconnect")
	}
	p.stop()
	p.waitOld()
	// The Upgrader logs the drain of a bare Drainer as it does a Server's.
	ev := logs.Parse(p.log())
	for _, pid := range p.pids {
		if ev.Count("drain_start", logs.KV("pid", pid)) != 1 || ev.Count("drained", logs.KV("pid", pid)) != 1 {
			t.Errorf("generation %d did not log the start and end of its drain once each", pid)
		}
	}
}

// waitListening waits until a TCP connection to addr is accepted (by the kernel).
func waitListening(t *testing.T, addr string) {
	t.Helper()
	if err := proc.WaitFor(func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, "the server to listen"); err != nil {
		t.Fatal(err)
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
