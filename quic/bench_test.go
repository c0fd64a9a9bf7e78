//go:build linux

package handoverquic

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// The cost of forwarding: one packet at a time from a client socket to the shared
// socket, read by the generation it is for. BenchmarkReadDirect: the newest
// generation reads its own packet (route, deliver). BenchmarkReadForwarded: the
// newest generation reads a packet for the generation before it and forwards it
// over its inbox, which that generation reads (route, sendmsg, recvmsg). ns/op is
// the latency of one packet, from the client's sendto to ReadFrom's return;
// cpu-ns/op is the process's CPU time (user and system) per packet, the client's
// sendto included in both. The difference is the cost of forwarding.
//
//	go test -run '^$' -bench 'Read(Direct|Forwarded)' -benchtime 20000x ./quic/...
func BenchmarkReadDirect(b *testing.B) {
	line := newTestLine(b, time.Minute)
	g1 := line.start()
	waitFor(b, 5*time.Second, "generation 1 serving", g1.serving)
	benchPackets(b, line, g1, g1)
}

func BenchmarkReadForwarded(b *testing.B) {
	line := newTestLine(b, time.Minute)
	g1 := line.start()
	g2 := line.start()
	line.handOver(g2)
	waitFor(b, 5*time.Second, "generation 2 serving", g2.serving)
	// Nothing listens on generation 2's transport: its router runs here.
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := g2.sock.conn.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	benchPackets(b, line, g1, g1)
	if s := g2.sock.Stats(); s.Forwarded < uint64(b.N) {
		b.Fatalf("generation 2 forwarded %d packets, want %d", s.Forwarded, b.N)
	}
}

// benchPackets sends b.N short-header packets of 1200 bytes carrying a connection
// ID of owner, one at a time, each read by reader before the next is sent.
func benchPackets(b *testing.B, line *testLine, owner, reader *testGen) {
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	id, err := (&cidGenerator{codec: newCIDCodec(&line.reset), tag: tagOf(owner.gen)}).GenerateConnectionID()
	if err != nil {
		b.Fatal(err)
	}
	pkt := make([]byte, 1200)
	pkt[0] = 0x40
	copy(pkt[1:], id.Bytes())
	buf := make([]byte, 1500)
	to := line.addr.AddrPort()
	reader.sock.conn.SetReadDeadline(time.Now().Add(time.Minute))
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	for range b.N {
		if _, err := client.WriteToUDPAddrPort(pkt, to); err != nil {
			b.Fatal(err)
		}
		if n, _, err := reader.sock.conn.ReadFrom(buf); err != nil || n != len(pkt) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}
