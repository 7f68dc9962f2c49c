#!/usr/bin/env bash
# Builds kube-apiserver and kube-proxy v1.37.2 from the k8s.io/kubernetes module (served by the Go
# module proxy) into $SLUICE_CACHE/k8s/bin, and installs Debian's etcd. Idempotent: a second run
# with the binaries in place does nothing. About 5 minutes cold on 2 cores.
#
# The module zip lacks staging/: each `replace k8s.io/X => ./staging/src/k8s.io/X` becomes a
# requirement of the published k8s.io/X v0.37.2 (the sample-* replaces are dropped). The
# binaries carry the release's version stamp (ldflags.sh).
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
CACHE=${SLUICE_CACHE:-/var/cache/sluice}
SRC=$CACHE/k8s/src-$K8S_VERSION
BIN=$CACHE/k8s/bin
HERE=$(cd "$(dirname "$0")" && pwd)
# .version says what was built (tools/bench reports it); .build also changes with how, so that
# binaries built before the version stamp are built again once.
BUILD="$K8S_VERSION+ver+static"

if ! command -v etcd >/dev/null 2>&1; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-proxy" ] && [ "$(cat "$BIN/.build" 2>/dev/null)" = "$BUILD" ]; then
	exit 0
fi
mkdir -p "$CACHE/k8s" "$BIN"
if [ ! -f "$SRC/.ready" ]; then
	dir=$(cd /tmp && GOWORK=off GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] || { echo "build.sh: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
	rm -rf "$SRC"
	cp -r "$dir" "$SRC"
	chmod -R u+w "$SRC"
	# replace k8s.io/X => ./staging/src/k8s.io/X  ->  require k8s.io/X v0.37.2
	awk -v ver="$STAGING_VERSION" '
		/^replace \($/ { inrep = 1; next }
		inrep && /^\)$/ { inrep = 0; next }
		inrep {
			if ($1 ~ /sample-(cli-plugin|controller)/) next
			if ($2 == "=>" && $3 ~ /^\.\/staging\//) { extra[$1] = 1; next }
			print "replace " $0; next
		}
		/^replace k8s.io\/.* => \.\/staging\// { if ($2 !~ /sample-(cli-plugin|controller)/) extra[$2] = 1; next }
		{ print }
		END { print "require ("; for (m in extra) print "\t" m " " ver; print ")" }
	' "$SRC/go.mod" > "$SRC/go.mod.new"
	mv "$SRC/go.mod.new" "$SRC/go.mod"
	# Requirements already present at v0.0.0 are bumped by the later require block's version.
	sed -i -E "s#^(\s+k8s\.io/[a-z0-9-]+) v0\.0\.0\$#\1 $STAGING_VERSION#" "$SRC/go.mod"
	# Its go.work points at staging/, which is not there.
	rm -f "$SRC/go.work" "$SRC/go.work.sum"
	touch "$SRC/.ready"
fi
cd "$SRC"
rm -f go.work go.work.sum
export GOCACHE=$CACHE/k8s/gocache GOFLAGS=-mod=mod GOWORK=off
ldflags=$(bash "$HERE/ldflags.sh")
# Built beside the old binaries and renamed over them: one that is running is replaced, not
# written over (which fails with "text file busy", or corrupts it).
tmp=$(mktemp -d "$BIN/.new.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Static and -trimpath, as tools/cluster/build.sh builds the other Kubernetes binaries in the
# same GOCACHE: the packages they share are compiled once.
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" ./cmd/kube-apiserver ./cmd/kube-proxy
mv -f "$tmp"/* "$BIN/"
echo "$K8S_VERSION" > "$BIN/.version"
echo "$BUILD" > "$BIN/.build"
