// Package cluster owns the real cluster on one machine (make cluster-up, cluster-down,
// e2e-k8s): a Kubernetes control plane and two nodes, each node a network namespace on a
// bridge, with its own mount namespace (its own bpffs, as a kind node has), cgroup parent,
// containerd, runc, CNI bridge and kubelet, so that two nodes share one kernel without seeing
// each other's pins, pods or mounts. sluice is deployed into it from manifests/, beside the real
// kube-proxy (iptables mode) or with none, and judged by the upstream e2e suite (e2e.go).
//
//	client 10.90.0.10 ─┐                    sluice-gw: br0 10.90.0.1, etcd, kube-apiserver
//	node1  10.90.0.11 ─┼─ br0 10.90.0.1       (:6443), controller manager, scheduler
//	node2  10.90.0.12 ─┘                    nodes: cni0 + pods in the node's podCIDR (10.244.x.0/24)
//
// Everything it makes is named or placed so that Down finds it again without a record of the
// run: namespaces sluice-*, state under Dir, cgroups under /sluice-node*, sysctls restored from
// Dir. The binaries come from build.sh (BinDir).
package cluster

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/sluicelb/sluice/tools/controlplane"
)

// Addresses and names: fixed, since one cluster runs per machine and its namespaces keep it
// away from the host's network.
const (
	gwNS     = "sluice-gw"
	clientNS = "sluice-client"
	apiPort  = 6443
	podCIDR  = "10.244.0.0/16"
	svcCIDR  = "10.96.0.0/16"
	// A dual-stack cluster's IPv6 sides (Config.DualStack): a /64 per node, IPv4 first.
	podCIDR6 = "fd00:244::/56"
	svcCIDR6 = "fd00:96::/112"
	dnsIP    = "10.96.0.10"
	// HostRelay is where the API server answers on the host's loopback (kubectl, e2e.test).
	HostRelay = "127.0.0.1:16443"
)

var (
	gwIP     = netip.MustParseAddr("10.90.0.1")
	clientIP = netip.MustParseAddr("10.90.0.10")
	// The IPv6 addresses of a dual-stack cluster (br0's, the client's).
	gwIP6     = netip.MustParseAddr("fd00:90::1")
	clientIP6 = netip.MustParseAddr("fd00:90::10")
	apiIP     = netip.MustParseAddr("10.96.0.1") // the kubernetes Service
)

// Node is one worker.
type Node struct {
	Name string     // the Node object's name and its network namespace's
	IP   netip.Addr // eth0's address, the Node's InternalIP
	IP6  netip.Addr // eth0's IPv6 address in a dual-stack cluster, its second InternalIP
}

// Nodes are the cluster's workers.
var Nodes = []Node{
	{"sluice-node1", netip.MustParseAddr("10.90.0.11"), netip.MustParseAddr("fd00:90::11")},
	{"sluice-node2", netip.MustParseAddr("10.90.0.12"), netip.MustParseAddr("fd00:90::12")},
}

// KubeProxy modes: beside sluice, as users migrate, or none (sluice alone); none-hostns is
// none with socket LB for the nodes' own processes only (--socket-lb-hostns-only, as some
// service meshes need), so that the pods' service traffic is translated at their devices.
const (
	KubeProxyIPTables   = "iptables"
	KubeProxyNone       = "none"
	KubeProxyNoneHostNS = "none-hostns"
)

// WithoutKubeProxy reports whether mode runs no kube-proxy (sluice serves ClusterIPs too).
func WithoutKubeProxy(mode string) bool { return mode == KubeProxyNone || mode == KubeProxyNoneHostNS }

// Config says how to bring the cluster up.
type Config struct {
	Dir       string // state: certs, data, logs, kubeconfigs (default DefaultDir)
	Bin       string // what build.sh built (default BinDir())
	Src       string // sluice's source tree: manifests/ (default ".")
	Version   string // sluice's version: the image's tag and VERSION build arg (default "dev")
	NoSluice  bool   // a cluster without sluice (kube-proxy alone), for side-by-side runs
	KubeProxy string // KubeProxyIPTables (default) or KubeProxyNone
	// DualStack: IPv6 beside IPv4 everywhere (nodes, pods, services), IPv4 first, as a
	// dual-stack kind cluster.
	DualStack bool
	// RelayCmd starts the host relay to the API server (a detached `sluice-cluster relay`);
	// empty: no relay, the API server is reachable only from the cluster's namespaces.
	RelayCmd []string
	Logf     func(format string, args ...any)
}

// DefaultDir is where a cluster keeps its state.
const DefaultDir = "/var/lib/sluice-cluster"

// BinDir holds what build.sh built (beside tools/controlplane's, in the same cache).
func BinDir() string { return filepath.Join(controlplane.Cache(), "cluster", "bin") }

func (c *Config) defaults() error {
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.Bin == "" {
		c.Bin = BinDir()
	}
	if c.Src == "" {
		c.Src = "."
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.KubeProxy == "" {
		c.KubeProxy = KubeProxyIPTables
	}
	if c.KubeProxy != KubeProxyIPTables && !WithoutKubeProxy(c.KubeProxy) {
		return fmt.Errorf("check config: kube-proxy mode %q is not %q, %q or %q", c.KubeProxy, KubeProxyIPTables, KubeProxyNone, KubeProxyNoneHostNS)
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	for _, p := range []*string{&c.Dir, &c.Bin, &c.Src} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("check config: %w", err)
		}
		*p = abs
	}
	return nil
}

func (c *Config) bin(name string) string { return filepath.Join(c.Bin, name) }

// Kubeconfig is the admin kubeconfig for the host (through the relay).
func (c *Config) Kubeconfig() string { return filepath.Join(c.Dir, "kubeconfig") }

// InnerKubeconfig is the admin kubeconfig for the cluster's namespaces (the client's, say).
func (c *Config) InnerKubeconfig() string { return filepath.Join(c.Dir, "pki", "admin.kubeconfig") }

func (c *Config) nodeDir(n Node) string { return filepath.Join(c.Dir, n.Name) }
