#!/usr/bin/env bash
# Runs the runtime benchmarks in bench/ and prints a markdown table of
# medians and of ratios to the raw runsc / runc baselines.
#
# Raw output goes to bench/results/<UTC time>.txt (gitignored), the table to
# the same name with .md. Needs root, bin/runsc, the debian-12 template and
# Debian's runc (apt-get install -y runc; without it BenchmarkRuncRun is
# skipped). About 5 minutes on a 2-core VM with the defaults.
#
# Knobs (environment):
#   BENCHTIME  iterations per benchmark per round   (default 20x)
#   ROUNDS     go test invocations, one after other (default 5)
#   COUNT      -count within each invocation        (default 1)
#   BENCH      -bench regexp                        (default .)
#   TIMEOUT    wall-clock limit per round           (default 20m)
#
# Each round runs every benchmark once (-count=1) and the rounds repeat, so
# orkestr's numbers and the baselines are taken interleaved in time; on a
# noisy machine that keeps a slow minute from landing on one side only. The
# table treats every line of a benchmark, from any round, as one run.
set -euo pipefail

cd "$(dirname "$0")/.."

BENCHTIME=${BENCHTIME:-20x}
ROUNDS=${ROUNDS:-5}
COUNT=${COUNT:-1}
BENCH=${BENCH:-.}
TIMEOUT=${TIMEOUT:-20m}

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
	echo "# bench/run.sh BENCHTIME=$BENCHTIME ROUNDS=$ROUNDS COUNT=$COUNT BENCH=$BENCH"
	echo "# $(date -u) | $(uname -r) | $(nproc) cores | $(go version | cut -d' ' -f3) | commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
	echo "# runsc: $(bin/runsc --version 2>/dev/null | head -1) | runc: $(runc --version 2>/dev/null | head -1 || echo none)"
} >"$out"

status=0
for round in $(seq "$ROUNDS"); do
	echo "== round $round/$ROUNDS" >&2
	# go test's -timeout does not cover benchmarks; SIGQUIT on a hang prints
	# every goroutine's stack into the results file.
	if ! timeout -s QUIT "$TIMEOUT" \
		go test -run '^$' -bench "$BENCH" -benchtime="$BENCHTIME" -count="$COUNT" ./bench/ 2>&1 | tee -a "$out"; then
		status=1
		echo "round $round failed; see $out" >&2
		break
	fi
done

go run ./bench/cmd/benchtable "$out" | tee "${out%.txt}.md"
echo >&2
echo "raw output: $out" >&2
exit "$status"
