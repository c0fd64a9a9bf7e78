// Command demo-client calls the example's gRPC server once: Info, or a Count stream.
//
//	demo-client [-addr 127.0.0.1:9090]            prints the serving PID and generation
//	demo-client [-addr 127.0.0.1:9090] -count N   streams N messages, one line each
//	demo-client ... -loop D                       repeats Info for D, one line per change
//
// Use it beside `handover reload` to watch generations take over.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/seed-a7250cfa/handover/examples/grpc/demopb"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9090", "the server's address")
	count := flag.Int("count", 0, "stream this many messages (Count) instead of calling Info")
	loop := flag.Duration("loop", 0, "call Info repeatedly for this long, printing each change of server")
	flag.Parse()
	if err := run(*addr, *count, *loop); err != nil {
		fmt.Fprintf(os.Stderr, "demo-client: %v\n", err)
		os.Exit(1)
	}
}

func run(addr string, count int, loop time.Duration) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	c := demopb.NewClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), loop+time.Minute)
	defer cancel()
	if count > 0 {
		stream, err := c.Count(ctx, &demopb.CountRequest{N: count})
		if err != nil {
			return err
		}
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Printf("seq=%d pid=%d generation=%d draining=%v\n", m.Seq, m.PID, m.Generation, m.Draining)
		}
	}
	end := time.Now().Add(loop)
	var last demopb.InfoReply
	calls := 0
	for {
		r, err := c.Info(ctx, &demopb.InfoRequest{})
		if err != nil {
			return fmt.Errorf("after %d calls: %w", calls, err)
		}
		calls++
		if *r != last {
			fmt.Printf("pid=%d generation=%d (call %d)\n", r.PID, r.Generation, calls)
			last = *r
		}
		if !time.Now().Before(end) {
			fmt.Printf("%d calls, 0 failed\n", calls)
			return nil
		}
	}
}
