#!/usr/bin/env bash
# Builds what a real cluster on this machine is made of, into $SLUICE_CACHE/cluster/bin, from Go
# modules (the Go module proxy) and Debian's packages; idempotent: a part whose binaries are in
# place at its version is skipped, so a second run takes seconds.
#
#   Kubernetes v1.37.2 (the source tree tools/controlplane/build.sh prepares): kubelet,
#     kube-controller-manager, kube-scheduler, kubectl, e2e.test, agnhost, and the pause image's
#     binary from build/pause/linux/pause.c (static, gcc); ginkgo at the version Kubernetes pins.
#   containerd v2.4.2 (the release Kubernetes 1.37 is paired with; Debian bookworm's 1.6.20 is
#     older than any it supports) with its runc shim and ctr, and runc v1.5.2 (containerd's CI
#     runc), all without cgo-only extras (btrfs, devmapper, zfs, seccomp).
#   Debian: containernetworking-plugins (bridge, host-local, loopback) and etcd.
#
# Usage: build.sh [part...]   parts: k8s containerd runc debian (default: all)
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.5.2}
CACHE=${SLUICE_CACHE:-/var/cache/sluice}
BIN=$CACHE/cluster/bin
SRC=$CACHE/k8s/src-$K8S_VERSION
HERE=$(cd "$(dirname "$0")" && pwd)
export GOCACHE=${GOCACHE_CLUSTER:-$CACHE/cluster/gocache} GOFLAGS=-mod=mod GOWORK=off
mkdir -p "$BIN"

stamp() { [ "$(cat "$BIN/.$1" 2>/dev/null)" = "$2" ]; }
done_() { echo "$2" > "$BIN/.$1"; }
log() { echo "cluster/build.sh: $*" >&2; }

part_debian() {
	local missing=()
	[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
	command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
}

part_k8s() {
	stamp k8s "$K8S_VERSION" && return 0
	bash "$HERE/../controlplane/build.sh" # prepares $SRC (and builds kube-apiserver, kube-proxy)
	cd "$SRC"
	log "building Kubernetes $K8S_VERSION node and test binaries (about 15 minutes cold)"
	CGO_ENABLED=0 go build -trimpath -o "$BIN/" ./cmd/kubelet ./cmd/kube-controller-manager ./cmd/kube-scheduler \
		./cmd/kubectl ./test/images/agnhost
	CGO_ENABLED=0 go test -c -trimpath -o "$BIN/e2e.test" ./test/e2e
	local ginkgo
	ginkgo=$(go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
	GOBIN=$BIN CGO_ENABLED=0 go install "github.com/onsi/ginkgo/v2/ginkgo@$ginkgo"
	gcc -Os -static -Wall -Werror -DVERSION="\"$K8S_VERSION\"" -o "$BIN/pause" build/pause/linux/pause.c
	cp "$CACHE/k8s/bin/kube-apiserver" "$CACHE/k8s/bin/kube-proxy" "$BIN/"
	done_ k8s "$K8S_VERSION"
}

part_containerd() {
	stamp containerd "$CONTAINERD_VERSION" && return 0
	log "building containerd $CONTAINERD_VERSION"
	(cd /tmp && GOBIN=$BIN CGO_ENABLED=0 go install -trimpath -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION")
	done_ containerd "$CONTAINERD_VERSION"
}

part_runc() {
	stamp runc "$RUNC_VERSION" && return 0
	log "building runc $RUNC_VERSION"
	(cd /tmp && GOBIN=$BIN CGO_ENABLED=1 go install -trimpath -tags urfave_cli_no_docs \
		-ldflags "-X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION")
	done_ runc "$RUNC_VERSION"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(debian containerd runc k8s)
for p in "${parts[@]}"; do
	"part_$p"
done
