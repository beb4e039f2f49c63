#!/usr/bin/env bash
# Property-based contract test: schemathesis against a real orkestrd with
# real gVisor sandboxes, driven by the served /v1/openapi.yaml.
#
#   run.sh quick   every operation, every check, stateful links, fixed seed,
#                  bounded examples (make test: a few minutes on 2 cores)
#   run.sh long    the same with many more examples and a time budget
#                  (make fuzz, local use)
#
# Environment: ORKESTR_BIN_DIR (orkestrd, orkestr-agent; default bin/),
# ORKESTR_RUNSC, ORKESTR_TEMPLATE_DIR, SCHEMATHESIS_VENV (default
# api/schemathesis/.venv, made by the Makefile), FUZZ_SEED, FUZZ_EXAMPLES,
# FUZZ_MAX_TIME, CONTRACT_INCLUDE and CONTRACT_EXCLUDE (path regexes).
# Exit status: schemathesis's (non-zero on any failure), or
# 1 if the server left processes or mounts behind.
set -euo pipefail

mode=${1:-quick}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${ORKESTR_BIN_DIR:-$repo/bin}
runsc=${ORKESTR_RUNSC:-$bin/runsc}
templates=${ORKESTR_TEMPLATE_DIR:-/var/lib/orkestr/templates}
venv=${SCHEMATHESIS_VENV:-$here/.venv}
seed=${FUZZ_SEED:-16}

case $mode in
quick) examples=${FUZZ_EXAMPLES:-80}; max_time=${FUZZ_MAX_TIME:-} ;;
long) examples=${FUZZ_EXAMPLES:-300}; max_time=${FUZZ_MAX_TIME:-1800} ;;
*) echo "usage: $0 quick|long" >&2; exit 2 ;;
esac

for f in "$bin/orkestrd" "$bin/orkestr-agent" "$runsc" "$venv/bin/schemathesis"; do
	[ -x "$f" ] || { echo "$f is missing: run make build / make test-contract" >&2; exit 2; }
done
[ -d "$templates/debian-12" ] || { echo "template debian-12 is not built in $templates (make templates)" >&2; exit 2; }

data=$(mktemp -d /tmp/orkst-data-XXXXXX)
state=$(mktemp -d /run/orkst-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

# The catalog holds the template built offline; a plan that bounds what a
# fuzzer can start on a shared 2-core machine, without a usage cap or a
# rate limit in the way.
cat >"$data/config.yaml" <<'YAML'
pool_size: 0
max_file_bytes: 8388608
templates:
  - name: debian-12
    description: Debian 12 (offline recipe)
    default: true
    sources: [{recipe: debian-12}]
plans:
  fuzz:
    allowed_sizes: [small]
    max_concurrent: 3
    snapshot_cap: 2
    rate_limit: {requests_per_second: 100000, burst: 100000}
YAML

server_pid=
terminate_all() {
	python3 - "$url" "$key" <<'PY'
import json, sys, urllib.request
url, key = sys.argv[1], sys.argv[2]
def call(method, path):
    req = urllib.request.Request(url + path, method=method, headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)
ids, cursor = [], None
while True:
    page = call("GET", "/v1/sandboxes?limit=200" + ("&cursor=" + cursor if cursor else ""))
    ids += [s["id"] for s in page["data"] if s["status"] != "terminated"]
    cursor = page["next_cursor"]
    if not cursor:
        break
for i in ids:
    if call("DELETE", "/v1/sandboxes/" + i)["status"] != "terminated":
        sys.exit("sandbox %s did not terminate" % i)
print("terminated %d sandboxes left by the run" % len(ids))
PY
}
cleanup() {
	local rc=$?
	# orkestrd keeps claimed sandboxes running across its own restarts, so
	# the run terminates what it started through the API first; whatever
	# runs after that and the server's exit is a leak.
	if [ -n "${key:-}" ] && kill -0 "$server_pid" 2>/dev/null; then
		terminate_all || rc=1
	fi
	if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid"
		for _ in $(seq 1 600); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$server_pid" 2>/dev/null || true
	fi
	local leaks=""
	for p in /proc/[0-9]*; do
		if grep -qaF "$state" "$p/cmdline" 2>/dev/null; then leaks="$leaks ${p#/proc/}"; fi
	done
	local mounts
	mounts=$(awk -v s="$state/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo)
	if [ -n "$leaks" ] || [ -n "$mounts" ]; then
		echo "orkestrd left processes [$leaks ] and mounts [$mounts] behind" >&2
		for sb in "$state"/sandboxes/*; do [ -e "$sb" ] && "$runsc" --root "$state/runsc" delete --force "$(basename "$sb")" >/dev/null 2>&1 || true; done
		for p in $leaks; do kill -KILL "$p" 2>/dev/null || true; done
		for m in $(echo "$mounts" | sort -r); do umount -l "$m" 2>/dev/null || true; done
		rc=1
	fi
	if [ $rc -ne 0 ] && [ -f "$data/orkestrd.log" ]; then
		echo "--- last lines of the server's log ($data/orkestrd.log)" >&2
		tail -n 40 "$data/orkestrd.log" >&2
	fi
	rm -rf "$state"
	[ $rc -eq 0 ] && rm -rf "$data"
	exit $rc
}
trap cleanup EXIT

"$bin/orkestrd" serve --listen "127.0.0.1:$port" --data-dir "$data" --state-dir "$state" \
	--runsc "$runsc" --agent "$bin/orkestr-agent" --template-dir "$templates" \
	--pool-size 0 --config "$data/config.yaml" --log-level info \
	>"$data/orkestrd.out" 2>"$data/orkestrd.log" &
server_pid=$!
for _ in $(seq 1 600); do
	python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/v1/openapi.yaml" 2>/dev/null && break
	kill -0 "$server_pid" 2>/dev/null || { echo "orkestrd exited at start" >&2; exit 1; }
	sleep 0.1
done

admin() { "$bin/orkestrd" admin "$@" --data-dir "$data" --config "$data/config.yaml"; }
admin account create fuzz --plan fuzz >/dev/null
key=$(admin key create --account fuzz --scopes sandboxes:write | tail -n 1)
[[ $key =~ ^ork_[0-9A-Za-z]{43}$ ]] || { echo "no API key: $key" >&2; exit 1; }

args=(run "$url/v1/openapi.yaml" --url "$url"
	-H "Authorization: Bearer $key"
	--checks all --exclude-checks use_after_free --seed "$seed" --max-examples "$examples"
	--phases examples,coverage,fuzzing,stateful
	--workers 1 --request-timeout 120 --no-color
	--generation-database none
	--report junit --report-dir "$data/report")
[ -n "$max_time" ] && args+=(--max-time "$max_time")
# CONTRACT_EXCLUDE leaves out the paths matching it (local use; every
# operation runs by default).
[ -n "${CONTRACT_EXCLUDE:-}" ] && args+=(--exclude-path-regex "$CONTRACT_EXCLUDE")
# CONTRACT_INCLUDE narrows a run to the paths matching it (local use, e.g.
# CONTRACT_INCLUDE='^/v1/sandboxes$|/processes' run.sh quick: a sandbox must be
# created for the others to have one).
[ -n "${CONTRACT_INCLUDE:-}" ] && args+=(--include-path-regex "$CONTRACT_INCLUDE")

cd "$here"
set +e
SCHEMATHESIS_HOOKS=hooks "$venv/bin/schemathesis" "${args[@]}"
st=$?
set -e
if [ $st -ne 0 ]; then
	echo "schemathesis failed (exit $st); the server's data and log stay in $data" >&2
	exit $st
fi
