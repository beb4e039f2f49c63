#!/usr/bin/env bash
# The third-party licences of what the release ships, listed by go-licenses
# (pinned in tools/go-licenses) rather than by hand:
#   THIRD_PARTY_LICENSES.csv        the Go packages compiled into orkestrd,
#                                   orkestr and orkestr-agent (linux amd64+arm64)
#   THIRD_PARTY_LICENSES.runsc.csv  the packages compiled into gVisor's runsc
#                                   at the version the Makefile pins
#
#   scripts/licenses.sh write   regenerate both files (make licenses)
#   scripts/licenses.sh check   fail if either file is stale, or if any
#                               dependency has a forbidden, restricted
#                               (GPL/LGPL-style) or unrecognised licence
#                               (make licenses-check, part of make test)
#
# Needs GO_LICENSES (the tool) and RUNSC_VERSION in the environment, and
# /usr/share/common-licenses (Debian base-files) for the self-test.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: licenses.sh write|check}"
: "${GO_LICENSES:?set GO_LICENSES to the go-licenses binary (make licenses builds it)}"
: "${RUNSC_VERSION:?set RUNSC_VERSION as the Makefile pins it}"
# A -trimpath build of go-licenses does not know GOROOT and would then take
# every package for the standard library (and report nothing).
export GOROOT="${GOROOT:-$(go env GOROOT)}"
# Our own module is Apache-2.0 (LICENSE); the report lists third parties.
# The forbidden types are the ones whose terms a binary distribution of an
# Apache-2.0 project cannot meet: "forbidden" (e.g. AGPL, SSPL, WTFPL),
# "restricted" (GPL, LGPL) and "unknown" (no recognisable licence file).
# MPL-2.0 (reciprocal; hashicorp/yamux) is allowed: the files are used
# unmodified and their source is public at the listed version.
DISALLOWED=forbidden,restricted,unknown
header='package,version,license'
template=$(mktemp); tmp=$(mktemp -d)
trap 'rm -rf "$template" "$tmp"' EXIT
printf '{{range .}}{{.Name}},{{.Version}},{{.LicenseName}}\n{{end}}' > "$template"

report() { # report OUT DIR PKG... (in DIR, for linux amd64 and arm64)
	local out=$1 dir=$2; shift 2
	{
		echo "$header"
		for arch in amd64 arm64; do
			# The licence URLs are looked up on the network; they are not in
			# the report, so failures to reach the hosts are noise.
			(cd "$dir" && GOOS=linux GOARCH=$arch CGO_ENABLED=0 "$GO_LICENSES" report --template "$template" \
				--ignore github.com/orkestr-eu/orkestr "$@" 2>"$tmp/report.log") ||
				{ cat "$tmp/report.log" >&2; echo "go-licenses report failed in $dir for $*" >&2; exit 1; }
		done | LC_ALL=C sort -u
	} > "$out"
}
check() { # check DIR PKG...
	local dir=$1; shift
	for arch in amd64 arm64; do
		(cd "$dir" && GOOS=linux GOARCH=$arch CGO_ENABLED=0 "$GO_LICENSES" check --disallowed_types=$DISALLOWED \
			--ignore github.com/orkestr-eu/orkestr "$@" 2>"$tmp/check.log") ||
			{ grep -v 'Error discovering license URL' "$tmp/check.log" >&2;
			  echo "a dependency of $* (linux/$arch) has a licence of a disallowed type ($DISALLOWED)" >&2; exit 1; }
	done
}

# runsc is built from the Go module proxy, outside this module: list it from
# a throwaway module that requires gVisor at the pinned version.
runscmod="$tmp/runsc"
mkdir -p "$runscmod"
(cd "$runscmod" && go mod init licenses.local/runsc >/dev/null 2>&1 &&
	printf 'package x\n\nimport _ "gvisor.dev/gvisor/runsc"\n' > x.go &&
	GOFLAGS=-mod=mod go get "gvisor.dev/gvisor@$RUNSC_VERSION" >"$tmp/get.log" 2>&1) ||
	{ cat "$tmp/get.log" >&2; exit 1; }

report "$tmp/THIRD_PARTY_LICENSES.csv" . ./cmd/...
GOFLAGS=-mod=mod report "$tmp/THIRD_PARTY_LICENSES.runsc.csv" "$runscmod" gvisor.dev/gvisor/runsc
case $mode in
write)
	cp "$tmp/THIRD_PARTY_LICENSES.csv" "$tmp/THIRD_PARTY_LICENSES.runsc.csv" .
	echo "wrote THIRD_PARTY_LICENSES.csv ($(($(wc -l < THIRD_PARTY_LICENSES.csv) - 1)) entries) and THIRD_PARTY_LICENSES.runsc.csv ($(($(wc -l < THIRD_PARTY_LICENSES.runsc.csv) - 1)) entries)"
	;;
check)
	for f in THIRD_PARTY_LICENSES.csv THIRD_PARTY_LICENSES.runsc.csv; do
		diff -u "$f" "$tmp/$f" >&2 || { echo "$f is stale (the dependencies changed): run make licenses and commit it" >&2; exit 1; }
	done
	check . ./cmd/...
	GOFLAGS=-mod=mod check "$runscmod" gvisor.dev/gvisor/runsc
	# The policy itself must bite: a module whose one dependency is BSD
	# passes, and the same with GPL-3.0 (Debian's copies of the texts) fails.
	gpl="$tmp/gpl"
	mkdir -p "$gpl/dep"
	printf 'module licenses.local/app\n\ngo 1.22\n\nrequire licenses.local/dep v0.0.0\n\nreplace licenses.local/dep => ./dep\n' > "$gpl/go.mod"
	printf 'package main\n\nimport _ "licenses.local/dep"\n\nfunc main() {}\n' > "$gpl/main.go"
	printf 'module licenses.local/dep\n\ngo 1.22\n' > "$gpl/dep/go.mod"
	printf 'package dep\n' > "$gpl/dep/dep.go"
	cp /usr/share/common-licenses/Apache-2.0 "$gpl/LICENSE"
	cp /usr/share/common-licenses/BSD "$gpl/dep/LICENSE"
	(check "$gpl" .) || { echo "licence policy self-test: a BSD dependency was refused" >&2; exit 1; }
	cp /usr/share/common-licenses/GPL-3 "$gpl/dep/LICENSE"
	if (check "$gpl" . 2>/dev/null); then
		echo "licence policy self-test: a GPL-3.0 dependency was not refused" >&2; exit 1
	fi
	echo "third-party licences: reports current, no forbidden/restricted/unknown licence (a GPL-3.0 dependency is refused)"
	;;
*) echo "usage: licenses.sh write|check" >&2; exit 2 ;;
esac
