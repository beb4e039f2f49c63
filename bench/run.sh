#!/usr/bin/env bash
# Runs the benchmarks in bench/ (runtime driver, raw runsc / runc baselines,
# and the REST API of a real orkestrd built from this checkout) and prints a
# markdown table of medians, of ratios to the baselines and of the targets.
#
# Raw output goes to bench/results/<UTC time>.txt (gitignored), the table to
# the same name with .md. Needs root, bin/runsc, the debian-12 and node-22 templates (make setup) and
# Debian's runc (apt-get install -y runc; without it BenchmarkRuncRun is
# skipped). About 10 minutes on a 2-core VM with the defaults, a third of it
# filling the 100-sandbox pool of the burst benchmark, once per round.
#
# Knobs (environment):
#   BENCHTIME   iterations per benchmark per round   (default 20x)
#   ROUNDS      rounds, one after the other          (default 5)
#   COUNT       -count within each invocation        (default 1)
#   BENCH       -bench regexp                        (default .)
#   TIMEOUT     wall-clock limit per invocation      (default 20m)
#   BURST       sandboxes of BenchmarkAPIBurstTTI    (default 100)
#   GET_CLIENTS clients of BenchmarkAPIGetThroughput (default 64)
#   GET_WINDOW  its measured time per round          (default 3s)
#
# Each round runs every benchmark once (-count=1) and the rounds repeat, so
# orkestr's numbers and the baselines are taken interleaved in time; on a
# noisy machine that keeps a slow minute from landing on one side only. The
# table treats every line of a benchmark, from any round, as one run.
#
# A round is two go test invocations: every benchmark whose iteration is one
# operation, with BENCHTIME; then the ones whose iteration is a whole
# experiment (ONESHOT: a burst of 100 creates, a window of GET load, a
# chain of 9 restores), once (-benchtime=1x).
set -euo pipefail

cd "$(dirname "$0")/.."

BENCHTIME=${BENCHTIME:-20x}
ROUNDS=${ROUNDS:-5}
COUNT=${COUNT:-1}
BENCH=${BENCH:-.}
TIMEOUT=${TIMEOUT:-20m}
BURST=${BURST:-100}
GET_CLIENTS=${GET_CLIENTS:-64}
GET_WINDOW=${GET_WINDOW:-3s}
# The snapshot storage benchmarks move 64-256 MiB per iteration through a
# local S3 server: one iteration per round is plenty.
ONESHOT_NAMES=(APIBurstTTI APIGetThroughput RestoreChain E2BJSvsOrkestrTS SnapshotTransfer SnapshotCheckpointImage)
ONESHOT="^Benchmark($(IFS='|'; echo "${ONESHOT_NAMES[*]}"))\$"
# The one-shot benchmarks that BENCH selects.
oneshot=()
for n in "${ONESHOT_NAMES[@]}"; do
	if [[ "Benchmark$n" =~ $BENCH ]]; then
		oneshot+=("$n")
	fi
done

if [ "$(id -u)" -ne 0 ]; then
	echo "bench/run.sh starts real sandboxes and must run as root" >&2
	exit 1
fi
if ! command -v runc >/dev/null; then
	echo "warning: runc not installed; the runc baseline is skipped (apt-get install -y runc)" >&2
fi

mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
{
	echo "# bench/run.sh BENCHTIME=$BENCHTIME ROUNDS=$ROUNDS COUNT=$COUNT BENCH=$BENCH BURST=$BURST GET_CLIENTS=$GET_CLIENTS GET_WINDOW=$GET_WINDOW"
	echo "# $(date -u) | $(uname -r) | $(nproc) cores | $(go version | cut -d' ' -f3) | commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
	echo "# runsc: $(bin/runsc --version 2>/dev/null | head -1) | runc: $(runc --version 2>/dev/null | head -1 || echo none)"
	echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out"

# run ARGS... runs one go test invocation into the results file; go test's
# -timeout does not cover benchmarks, so a hang gets SIGQUIT, which prints
# every goroutine's stack into the results file.
run() {
	timeout -s QUIT "$TIMEOUT" go test -run '^$' -count="$COUNT" "$@" ./bench/ \
		-args -api.burst="$BURST" -api.get-clients="$GET_CLIENTS" -api.get-window="$GET_WINDOW" 2>&1 | tee -a "$out"
	return "${PIPESTATUS[0]}"
}

status=0
for round in $(seq "$ROUNDS"); do
	echo "== round $round/$ROUNDS" >&2
	if ! run -bench "$BENCH" -skip "$ONESHOT" -benchtime="$BENCHTIME"; then
		status=1
	elif [ ${#oneshot[@]} -gt 0 ] && ! run -bench "^Benchmark($(IFS='|'; echo "${oneshot[*]}"))\$" -benchtime=1x; then
		status=1
	fi
	if [ "$status" -ne 0 ]; then
		echo "round $round failed; see $out" >&2
		break
	fi
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"

go run ./bench/cmd/benchtable "$out" | tee "${out%.txt}.md"
echo >&2
echo "raw output: $out" >&2
exit "$status"
