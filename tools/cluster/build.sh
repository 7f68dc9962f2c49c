#!/usr/bin/env bash
# Builds what a real cluster on this machine is made of, into $SLUICE_CACHE/cluster/bin, from Go
# modules (the Go module proxy) and Debian's packages; idempotent: a part whose binaries are in
# place at its version is skipped, so a second run takes seconds.
#
#   Kubernetes v1.37.2 (the source tree tools/controlplane/build.sh prepares): kubelet,
#     kube-controller-manager, kube-scheduler, kubectl, e2e.test with the release's version stamp
#     (tools/controlplane/ldflags.sh), the e2e images' programs agnhost and regression-issue-74839
#     as test/images/image-util.sh builds them, and the pause image's binary from
#     build/pause/linux/pause.c (static, gcc); ginkgo at the version Kubernetes pins.
#   containerd v2.4.2 (the release Kubernetes 1.37 is paired with; Debian bookworm's 1.6.20 is
#     older than any it supports) with its runc shim and ctr, and runc v1.5.2 (containerd's CI
#     runc), containerd without cgo-only extras (btrfs, devmapper, zfs); runc with seccomp.
#   CoreDNS v1.14.6, the release kubeadm 1.37 deploys (CoreDNSVersion in
#     cmd/kubeadm/app/constants), as its Makefile builds it: static, -tags grpcnotrace, -s -w.
#   Debian: containernetworking-plugins (bridge, host-local, loopback) and etcd; busybox-static,
#     dash, curl, netcat-openbsd, iproute2 and wget for the test images (images.go).
#
# Usage: build.sh [part...]   parts: k8s containerd runc coredns debian (default: all)
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
# The k8s stamp changes with how the part builds, not only with the version: a change rebuilds.
K8S_BUILD="$K8S_VERSION+ver+static"
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.5.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.6}
CACHE=${SLUICE_CACHE:-/var/cache/sluice}
BIN=$CACHE/cluster/bin
SRC=$CACHE/k8s/src-$K8S_VERSION
HERE=$(cd "$(dirname "$0")" && pwd)
export GOCACHE=${GOCACHE_CLUSTER:-$CACHE/cluster/gocache} GOFLAGS=-mod=mod GOWORK=off
mkdir -p "$BIN"

stamp() { [ "$(cat "$BIN/.$1" 2>/dev/null)" = "$2" ]; }
done_() { echo "$2" > "$BIN/.$1"; }
log() { echo "cluster/build.sh: $*" >&2; }
# A part builds into $NEW, beside $BIN, and install_ renames its files into $BIN: a binary that
# is running (a cluster that is up) is replaced, never written over ("text file busy").
NEWS=()
trap 'rm -rf "${NEWS[@]}"' EXIT
new() { NEW=$(mktemp -d "$BIN/.new.XXXXXX") && NEWS+=("$NEW"); }
install_() { mv -f "$NEW"/* "$BIN/"; }

part_debian() {
	local missing=()
	[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
	command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
	# The test images' shell and tools (images.go): a static busybox, not the dynamic one.
	dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
	[ -x /usr/bin/curl ] || missing+=(curl)
	[ -x /bin/nc.openbsd ] || missing+=(netcat-openbsd)
	[ -x /usr/bin/ss ] || missing+=(iproute2)
	[ -x /usr/bin/wget ] || missing+=(wget)
	[ -x /bin/dash ] || missing+=(dash)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
}

part_k8s() {
	stamp k8s "$K8S_BUILD" && return 0
	bash "$HERE/../controlplane/build.sh" # prepares $SRC (and builds kube-apiserver, kube-proxy)
	cd "$SRC"
	# controlplane/build.sh's cache, with its flags: what kube-apiserver compiled is reused.
	local -x GOCACHE=$CACHE/k8s/gocache
	log "building Kubernetes $K8S_VERSION node and test binaries (about 15 minutes cold)"
	local ldflags ginkgo pause
	ldflags=$(bash "$HERE/../controlplane/ldflags.sh")
	new
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$NEW/" ./cmd/kubelet ./cmd/kube-controller-manager \
		./cmd/kube-scheduler ./cmd/kubectl
	CGO_ENABLED=0 go test -c -trimpath -ldflags "$ldflags" -o "$NEW/e2e.test" ./test/e2e
	# As image-util.sh builds the e2e images' programs: -w, and agnhost's own version.
	CGO_ENABLED=0 go build -trimpath -ldflags "-w -X main.Version=$(cat test/images/agnhost/VERSION)" \
		-o "$NEW/" ./test/images/agnhost
	CGO_ENABLED=0 go build -trimpath -ldflags "-w" -o "$NEW/" ./test/images/regression-issue-74839
	ginkgo=$(go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
	GOBIN=$NEW CGO_ENABLED=0 go install "github.com/onsi/ginkgo/v2/ginkgo@$ginkgo"
	# pause -v says the pause image's tag, as its Makefile builds it (stripped).
	pause=$(sed -n 's/^TAG ?= *//p' build/pause/Makefile)
	gcc -Os -static -Wall -Werror -DVERSION="v$pause" -o "$NEW/pause" build/pause/linux/pause.c
	strip "$NEW/pause"
	cp "$CACHE/k8s/bin/kube-apiserver" "$CACHE/k8s/bin/kube-proxy" "$NEW/"
	install_
	done_ k8s "$K8S_BUILD"
}

part_containerd() {
	stamp containerd "$CONTAINERD_VERSION" && return 0
	log "building containerd $CONTAINERD_VERSION"
	new
	(cd /tmp && GOBIN=$NEW CGO_ENABLED=0 go install -trimpath -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION")
	install_
	done_ containerd "$CONTAINERD_VERSION"
}

part_runc() {
	# With seccomp (cgo, libseccomp): containerd gives every sandbox its default profile, and the
	# e2e suite's pods ask for RuntimeDefault; a runc without it refuses to start them.
	stamp runc "$RUNC_VERSION+seccomp" && return 0
	[ -f /usr/include/seccomp.h ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev pkg-config >/dev/null; }
	log "building runc $RUNC_VERSION"
	local tmp
	tmp=$(mktemp -d)
	(cd /tmp && GOBIN=$tmp CGO_ENABLED=1 go install -trimpath -tags "seccomp urfave_cli_no_docs" \
		-ldflags "-X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION")
	mv "$tmp/runc" "$BIN/runc" # a rename: a node of a running cluster may be executing the old one
	rmdir "$tmp"
	done_ runc "$RUNC_VERSION+seccomp"
}

part_coredns() {
	stamp coredns "$COREDNS_VERSION" && return 0
	local kubeadm
	kubeadm=$(sed -n 's/^\tCoreDNSVersion = "\(.*\)"$/\1/p' "$SRC/cmd/kubeadm/app/constants/constants.go" 2>/dev/null || true)
	[ -z "$kubeadm" ] || [ "$kubeadm" = "$COREDNS_VERSION" ] ||
		log "note: kubeadm $K8S_VERSION deploys CoreDNS $kubeadm; building $COREDNS_VERSION"
	log "building CoreDNS $COREDNS_VERSION"
	new
	(cd /tmp && GOBIN=$NEW CGO_ENABLED=0 go install -trimpath -tags grpcnotrace -ldflags "-s -w" \
		"github.com/coredns/coredns@$COREDNS_VERSION")
	install_
	done_ coredns "$COREDNS_VERSION"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(debian containerd runc k8s coredns)
for p in "${parts[@]}"; do
	"part_$p"
done
