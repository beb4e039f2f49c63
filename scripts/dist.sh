#!/usr/bin/env bash
# Release artifacts (make dist VERSION=…): for each architecture of ARCHES
# (linux amd64 and arm64 by default) in DIST_DIR (default dist/):
#   orkestr_V_linux_ARCH/              the staged tree (bin/, docs, licences, sbom/)
#   orkestr_V_linux_ARCH.tar.gz        that tree as a tarball
#   orkestr_V_ARCH.deb                 the Debian package of the one-box server (nfpm)
#   orkestr_V_linux_ARCH/sbom/*.cdx.json  a CycloneDX SBOM per binary (cyclonedx-gomod)
# and for all architectures together:
#   orkestr_V_oci/ and orkestr_V_oci.tar  the OCI image index of the server (an
#                                     OCI layout, built without a container engine)
#   SHA256SUMS                        of every file above
# Binaries are static (CGO_ENABLED=0) and stamped with the version and
# commit; runsc is built from the Go module proxy at RUNSC_VERSION for each
# architecture (cached in bin/dist-cache). Outputs are reproducible: file
# times are the commit's time, SBOMs carry no timestamp or serial.
#
# Environment: VERSION (required), RUNSC_VERSION, TOOLS_BIN (nfpm and
# cyclonedx-gomod), ARCHES, DIST_DIR, IMAGE_PUSH (optional: push the image
# index to this reference, e.g. registry.example.com/orkestr:1.2.3).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${VERSION:-}" ]; then echo "set VERSION, e.g. make dist VERSION=1.2.3" >&2; exit 2; fi
: "${RUNSC_VERSION:?set RUNSC_VERSION as the Makefile pins it}"
: "${TOOLS_BIN:?set TOOLS_BIN to the directory with nfpm and cyclonedx-gomod}"
ARCHES=${ARCHES:-amd64 arm64}
DIST_DIR=${DIST_DIR:-dist}
# The version becomes file names, a Debian version and an image label:
# semantic-version characters only.
if ! [[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+~][0-9A-Za-z.~+-]+)?$ ]]; then
	echo "VERSION=$VERSION is not a release version like 1.2.3 or 1.2.3-rc.1" >&2; exit 2
fi
for arch in $ARCHES; do
	case $arch in amd64|arm64) ;; *) echo "ARCHES: $arch is not supported (amd64, arm64)" >&2; exit 2 ;; esac
done
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit="$commit-dirty"; fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
mkdir -p "$DIST_DIR"
DIST_DIR=$(cd "$DIST_DIR" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Both names are stamped: internal/buildinfo and orkestrd's own main.version
# (whichever the binary has; -X of an absent symbol is ignored).
ldflags="-s -w -X github.com/orkestr-eu/orkestr/internal/buildinfo.Version=$VERSION -X github.com/orkestr-eu/orkestr/internal/buildinfo.Commit=$commit"
ldflags="$ldflags -X main.version=$VERSION -X main.commit=$commit -X main.runscPinned=$RUNSC_VERSION"

runsc_for() { # runsc_for ARCH OUT: runsc at RUNSC_VERSION, static, cached
	local arch=$1 out=$2 cache="$root/bin/dist-cache/runsc-$RUNSC_VERSION-$arch"
	# make setup's bin/runsc is the same static build for the host's
	# architecture.
	local built; built=$(readlink -f "$root/bin/runsc" 2>/dev/null || true)
	if [ ! -x "$cache" ] && [ "$arch" = "$(go env GOARCH)" ] && [ -x "$built" ] &&
		[ "$(cat "$(dirname "$built")/.runsc-version" 2>/dev/null)" = "$RUNSC_VERSION" ]; then
		cp "$built" "$out"
		return
	fi
	if [ ! -x "$cache" ]; then
		echo "building runsc $RUNSC_VERSION for linux/$arch from the Go module proxy (about 2-4 minutes)"
		local mod="$tmp/runsc-$arch"
		mkdir -p "$mod" "$(dirname "$cache")"
		(cd "$mod" && go mod init dist.local/runsc >/dev/null 2>&1 &&
			printf 'package x\n\nimport _ "gvisor.dev/gvisor/runsc"\n' > x.go &&
			GOFLAGS=-mod=mod go get "gvisor.dev/gvisor@$RUNSC_VERSION" >/dev/null 2>&1 &&
			CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w' -o "$cache.tmp" gvisor.dev/gvisor/runsc)
		mv "$cache.tmp" "$cache"
	fi
	cp "$cache" "$out"
}

for arch in $ARCHES; do
	name="orkestr_${VERSION}_linux_$arch"
	stage="$DIST_DIR/$name"
	rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/sbom" "$stage/systemd"
	echo "== linux/$arch: binaries"
	for cmd in orkestrd orkestr orkestr-agent; do
		CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags="$ldflags" -o "$stage/bin/$cmd" "./cmd/$cmd"
	done
	runsc_for "$arch" "$stage/bin/runsc"
	cp LICENSE NOTICE THIRD_PARTY_LICENSES.csv THIRD_PARTY_LICENSES.runsc.csv README.md docs/operating.md "$stage/"
	cp deploy/package/config.yaml "$stage/config.yaml"
	cp deploy/systemd/* "$stage/systemd/"
	echo "== linux/$arch: SBOMs"
	for b in orkestrd orkestr orkestr-agent runsc; do
		v=$VERSION; [ $b = runsc ] && v=$RUNSC_VERSION
		"$TOOLS_BIN/cyclonedx-gomod" bin -json -noserial -notimestamp -version "$v" -output "$stage/sbom/$b.cdx.json" "$stage/bin/$b" 2>"$tmp/sbom.log" ||
			{ cat "$tmp/sbom.log" >&2; exit 1; }
	done
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	echo "== linux/$arch: tarball"
	tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner -C "$DIST_DIR" -cf - "$name" | gzip -n > "$DIST_DIR/$name.tar.gz"
	echo "== linux/$arch: Debian package"
	# The package installs to /usr/bin (make install uses /usr/local/bin):
	# every unit of deploy/systemd/ with its paths changed.
	rm -rf "$tmp/units" && mkdir -p "$tmp/units"
	for u in deploy/systemd/*; do sed 's|/usr/local/bin/|/usr/bin/|g' "$u" > "$tmp/units/$(basename "$u")"; done
	sed -e "s|\${DEB_ARCH}|$arch|g" -e "s|\${DEB_VERSION}|$VERSION|g" -e "s|\${STAGE}|$stage|g" \
		-e "s|\${PKG_UNITS}|$tmp/units|g" -e "s|\${PKG_SCRIPTS}|$root/deploy/package|g" \
		deploy/package/nfpm.yaml > "$tmp/nfpm.yaml"
	rm -f "$DIST_DIR/orkestr_${VERSION}_$arch.deb"
	"$TOOLS_BIN/nfpm" package --config "$tmp/nfpm.yaml" --packager deb --target "$DIST_DIR/orkestr_${VERSION}_$arch.deb" >"$tmp/nfpm.log" 2>&1 ||
		{ cat "$tmp/nfpm.log" >&2; exit 1; }
done

echo "== OCI image ($ARCHES)"
stages=()
for arch in $ARCHES; do stages+=(--stage "$arch=$DIST_DIR/orkestr_${VERSION}_linux_$arch"); done
rm -rf "$DIST_DIR/orkestr_${VERSION}_oci"
go run ./internal/release/imagetool --version "$VERSION" --commit "$commit" --epoch "$SOURCE_DATE_EPOCH" \
	--ca-bundle /etc/ssl/certs/ca-certificates.crt "${stages[@]}" \
	--layout "$DIST_DIR/orkestr_${VERSION}_oci" ${IMAGE_PUSH:+--push "$IMAGE_PUSH"}
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner -C "$DIST_DIR/orkestr_${VERSION}_oci" -cf "$DIST_DIR/orkestr_${VERSION}_oci.tar" .

echo "== SHA256SUMS"
(cd "$DIST_DIR" && sha256sum -- orkestr_"${VERSION}"_*.tar.gz orkestr_"${VERSION}"_*.deb orkestr_"${VERSION}"_oci.tar orkestr_"${VERSION}"_linux_*/sbom/*.cdx.json > SHA256SUMS)
echo "release $VERSION ($commit) in $DIST_DIR:"
(cd "$DIST_DIR" && ls -l orkestr_"${VERSION}"_*.tar.gz orkestr_"${VERSION}"_*.deb orkestr_"${VERSION}"_oci.tar SHA256SUMS)
