#!/usr/bin/env bash
# microbench.sh: the drain layer's microbenchmarks (graceful/drain_bench_test.go),
# each run COUNT times (default 10) and compared with benchstat:
#
#   BenchmarkAcceptClose/plain    accept + close of a loopback connection, plain net.Listener
#   BenchmarkAcceptClose/tracked  the same through Drainer.Listener
#   BenchmarkHTTP/plain           keep-alive GET throughput, http.Server on a plain listener
#   BenchmarkHTTP/graceful        the same with a Drainer attached, on Drainer.Listener
#
# Usage, from anywhere:  tests/bench/microbench.sh [OUTDIR]   (default tests/bench/results)
# Writes OUTDIR/micro.txt (go test's output) and OUTDIR/micro-benchstat.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$root/tests/bench/results}" && cd "${1:-$root/tests/bench/results}" && pwd)
count=${COUNT:-10}
PATH=$(go env GOPATH)/bin:$PATH
if ! command -v benchstat >/dev/null; then
	go install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
fi
cd "$root"
go test -run '^$' -bench '^Benchmark(AcceptClose|HTTP)$' -count "$count" ./graceful | tee "$out/micro.txt"
# benchstat compares inputs: split the runs into the plain ones and the drain
# layer's (tracked, graceful), with the sub-benchmark name dropped so that rows match.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -v '^Benchmark' "$out/micro.txt" | grep -v '^\(PASS\|ok\)' > "$tmp/head.txt"
{ cat "$tmp/head.txt"; sed -n 's#^\(Benchmark[A-Za-z]*\)/plain#\1#p' "$out/micro.txt"; } > "$tmp/plain.txt"
{ cat "$tmp/head.txt"; sed -n 's#^\(Benchmark[A-Za-z]*\)/\(tracked\|graceful\)#\1#p' "$out/micro.txt"; } > "$tmp/drain.txt"
(cd "$tmp" && benchstat plain=plain.txt drain-layer=drain.txt) | tee "$out/micro-benchstat.txt"
