# sluice: make deps | generate | build | test | test-kernel | demo | bench | cluster-up | e2e-k8s
GO      ?= go
ARCH    := $(shell uname -m)
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
export BPF2GO_CFLAGS := -O2 -g -Wall -Werror -I/usr/include/$(ARCH)-linux-gnu

# Debian packages the build, tests and demo use: package:command-or-file-that-proves-it.
DEB_DEPS := clang:clang llvm:llvm-strip libbpf-dev:/usr/include/bpf/bpf_helpers.h \
	bpftool:bpftool iproute2:ip ethtool:ethtool linux-libc-dev:/usr/include/linux/bpf.h \
	iptables:iptables-restore nftables:nft wrk:wrk iperf3:iperf3 conntrack:conntrack

.PHONY: deps generate check-generate build test test-kernel demo bench bench-quick controlplane image \
	cluster-build cluster-up cluster-down e2e-k8s clean

deps:
	@missing=""; for d in $(DEB_DEPS); do pkg=$${d%%:*}; what=$${d#*:}; \
		if [ "$${what#/}" != "$$what" ]; then [ -e "$$what" ] || missing="$$missing $$pkg"; \
		else command -v $$what >/dev/null 2>&1 || [ -x /usr/sbin/$$what ] || missing="$$missing $$pkg"; fi; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Rebuild the BPF objects and their Go bindings (committed, so `go build` needs no clang).
generate: deps
	$(GO) generate ./internal/datapath/ ./tools/pktgen/ ./tools/bench/xdpfwd/

# Fails if the committed object is not what the C sources compile to. Only bpf2go's output is
# compared: an edit to a hand-written file beside it is not "stale bindings".
GENERATED := ':(glob)internal/datapath/*_bpfel.*' ':(glob)tools/pktgen/*_bpfel.*' ':(glob)tools/bench/xdpfwd/*_bpfel.*'
check-generate: generate
	@git diff --quiet -- $(GENERATED) || { \
		echo "committed BPF objects or bindings are stale; commit the output of 'make generate'"; \
		git diff --stat -- $(GENERATED); exit 1; }

# Static, with the Dockerfile's flags: the binaries are the image's, and the image test
# (tools/image) finds them in the build cache.
build:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/ ./cmd/...

# The agent's image as an OCI archive, as the Dockerfile describes it, with no container engine
# (import it with: ctr -n k8s.io images import bin/sluice-agent-image.tar).
image:
	$(GO) run ./tools/image/cmd/sluice-image --version $(VERSION) --out bin/sluice-agent-image.tar

# Unit, golden-packet (BPF_PROG_TEST_RUN) and end-to-end (netns) tests, then the cluster smoke
# (a real two-node cluster up, sluice Ready on both nodes, one upstream NodePort test, down) on
# its own, after the rest. Needs root.
test: deps check-generate build cluster-build
	CI=$${CI:-} $(GO) test -count=1 -timeout 30m -skip '^TestClusterSmoke$$' ./...
	CI=$${CI:-} $(GO) test -count=1 -timeout 20m -run '^TestClusterSmoke$$' ./tools/cluster/

# The datapath tests in qemu guests on Debian's Linux 6.1 and 5.10 (tools/kvm). Needs root.
test-kernel:
	GO=$(GO) bash tools/kvm/all.sh 6.1 5.10

demo: deps build
	$(GO) run ./tools/demo --agent bin/sluice-agent --sluicectl bin/sluicectl --manifests examples

# kube-apiserver and kube-proxy from source, and etcd (the API tests build them on demand too).
controlplane:
	bash tools/controlplane/build.sh

# The benchmarks (tools/bench, root): on one lab in one run, plain forwarding, kube-proxy
# (iptables and nftables), sluice (XDP and tc) and a bare XDP forwarder side by side (packet
# rate with the live-frames generator, iperf3, wrk), the per-packet cost (BPF_PROG_TEST_RUN)
# from 1 to 100k services, a scale sweep through the API server, and the control plane at 10k
# services (tools/scale). Writes bench/results/<timestamp>.json, docs/benchmarks.md and
# docs/bench-*.svg. About 15 minutes here.
bench: deps build controlplane
	$(GO) build -o bin/ ./tools/bench ./tools/scale
	bin/bench --agent bin/sluice-agent --scale bin/scale --results bench/results --docs docs

# The same, short (about 2 minutes, sweeps to 1k services): a smoke run, its report next to
# its JSON in bench/results/quick/.
bench-quick: deps build controlplane
	$(GO) build -o bin/ ./tools/bench ./tools/scale
	bin/bench --quick --agent bin/sluice-agent --scale bin/scale --results bench/results/quick

# What the real cluster is made of (tools/cluster/build.sh): Kubernetes v1.37.2's node, control
# plane and test binaries, containerd, runc, CoreDNS, cached under /var/cache/sluice/cluster
# (about 30 minutes cold, seconds after).
cluster-build:
	bash tools/cluster/build.sh

# A two-node cluster in network namespaces with sluice deployed from manifests/ beside the real
# kube-proxy. Left running; prints its KUBECONFIG. KUBE_PROXY=none leaves kube-proxy out and
# deploys manifests-kube-proxy-free/: sluice serves every Service alone. KUBE_PROXY=none-hostns
# is that with socket LB for the nodes' own processes only: pods' traffic goes by their devices.
# DUAL_STACK=1: a dual-stack cluster (IPv4 and IPv6, IPv4 first), judged by the upstream
# [Feature:IPv6DualStack] tests in tools/cluster/e2e/dualstack.txt.
KUBE_PROXY ?= iptables
DUAL_STACK ?= 0
DUAL := --dual-stack=$(if $(filter 1,$(DUAL_STACK)),true,false)
cluster-up: deps cluster-build
	$(GO) build -o bin/ ./tools/cluster/cmd/sluice-cluster
	bin/sluice-cluster up --version $(VERSION) --kube-proxy $(KUBE_PROXY) $(DUAL)

# Removes everything cluster-up made, also after a failed or interrupted run.
cluster-down:
	$(GO) build -o bin/ ./tools/cluster/cmd/sluice-cluster
	bin/sluice-cluster down

# Up, the upstream e2e tests in tools/cluster/e2e/nodeport.txt (and clusterip.txt with
# KUBE_PROXY=none or none-hostns), the report in docs/conformance.md, down (also when a step fails or is
# interrupted). About 6 minutes warm, 8 with KUBE_PROXY=none.
e2e-k8s: deps cluster-build
	$(GO) build -o bin/ ./tools/cluster/cmd/sluice-cluster
	trap 'bin/sluice-cluster down' EXIT INT TERM; \
		bin/sluice-cluster up --version $(VERSION) --kube-proxy $(KUBE_PROXY) $(DUAL) && \
		bin/sluice-cluster e2e --version $(VERSION) --kube-proxy $(KUBE_PROXY) $(DUAL) --report docs/conformance.md

clean:
	rm -rf bin
