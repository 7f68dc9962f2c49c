package agent

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
)

// Options are sluice-agent's flags. Validate checks them and fills in the parsed values
// (the fields after "Parsed by Validate").
type Options struct {
	Manifests      string
	Kubeconfig     string
	APIServer      string
	NodePortAddrs  string
	APIQPS         float64
	APIBurst       int
	Devices        string
	NodeName       string
	BPFFS          string
	ProcFS         string
	SocketLBCgroup string
	// KubeProxyReplacement: serve ClusterIPs too, as kube-proxy does; it can then go.
	KubeProxyReplacement bool
	// LocalhostNodePorts: with socket LB, NodePorts on 127.0.0.0/8 for the node's processes.
	LocalhostNodePorts bool
	// SocketLBHostOnly: socket LB for the node's processes only, not its pods'.
	SocketLBHostOnly bool
	// PodDevices: with KubeProxyReplacement, the pod programs on the pods' devices.
	PodDevices bool
	// IPv6: auto, true or false: whether the IPv6 side of services is served.
	IPv6          string
	XDPMode       string
	TCAttach      string
	NodePortRange string
	SNATPorts     string
	LogLevel      string
	MetricsAddr   string
	Cleanup       bool
	Version       bool
	LBAlgorithm   string
	SyncPeriod    time.Duration
	MinSync       time.Duration

	// HealthzBindAddress is where kube-proxy's node health server is served (its flag).
	HealthzBindAddress string
	// DP is the datapath's configuration; its SNAT ports and pin path come from the flags.
	DP datapath.Config

	// Parsed by Validate.
	maglev        bool
	xdp           datapath.XDPMode
	tc            datapath.TCMode
	portRange     desired.PortRange
	nodePortCIDRs []netip.Prefix
	// nodePortPrimary: --nodeport-addresses primary.
	nodePortPrimary bool
	deviceList      []string
	// healthzAddr: --healthz-bind-address with its port (kube-proxy's 10256 if it had none).
	healthzAddr string
	// ipv6: --ipv6 parsed.
	ipv6 ipv6Mode
}

// NewOptions returns the defaults; hostname is the node's (os.Hostname), the default node name.
func NewOptions(hostname string) *Options {
	dp := datapath.Defaults()
	return &Options{
		APIQPS: 50, APIBurst: 100, NodeName: NodeNameOf(hostname), BPFFS: "/sys/fs/bpf/sluice", ProcFS: "/proc",
		XDPMode: "auto", TCAttach: "auto", NodePortRange: "30000-32767",
		SNATPorts: fmt.Sprintf("%d-%d", dp.SNATPortMin, dp.SNATPortMax), LogLevel: "info",
		// Not kube-proxy's 10249 (metrics) or 10256 (healthz): sluice runs beside it while a
		// cluster migrates.
		MetricsAddr: "127.0.0.1:9871", LBAlgorithm: "random", SyncPeriod: 30 * time.Second,
		MinSync: 100 * time.Millisecond, DP: dp, LocalhostNodePorts: true, PodDevices: true, IPv6: "auto",
	}
}

// NodeNameOf is the node name a hostname stands for, as the kubelet and kube-proxy derive it:
// trimmed and lowercased (a Node's name is a DNS subdomain; hostnames may have capitals).
func NodeNameOf(hostname string) string { return strings.ToLower(strings.TrimSpace(hostname)) }

// AddFlags defines the flags on fs, with o's values as defaults.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Manifests, "manifests", o.Manifests, "folder of Service/EndpointSlice/Node manifests to serve (watched for edits) instead of the Kubernetes API")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "kubeconfig to reach the API server (default: in-cluster config)")
	fs.StringVar(&o.APIServer, "k8s-api-server", o.APIServer, "the API server's URL (https://host:port), in place of the in-cluster config's, which is the kubernetes Service's ClusterIP: without kube-proxy, this agent is what serves it (as Cilium's k8s-api-server)")
	fs.Float64Var(&o.APIQPS, "kube-api-qps", o.APIQPS, "API server queries per second")
	fs.IntVar(&o.APIBurst, "kube-api-burst", o.APIBurst, "API server query burst")
	fs.StringVar(&o.NodePortAddrs, "nodeport-addresses", o.NodePortAddrs, "CIDRs (comma-separated) of the device addresses NodePorts are served on, or \"primary\" (the Node's own addresses), as kube-proxy's flag (default: all)")
	fs.StringVar(&o.IPv6, "ipv6", o.IPv6, "serve the IPv6 side of services (single-stack IPv6 and dual-stack ones), as kube-proxy's IPv6 proxier: true, false, or auto (when a device of the node has a global IPv6 address as the agent starts)")
	fs.StringVar(&o.Devices, "devices", o.Devices, "comma-separated devices to attach to; their IPv4 and global IPv6 addresses serve the NodePorts (default: the devices that carry the Node's InternalIP/ExternalIP, else the default route's; followed as they change)")
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "this node's name, as EndpointSlices' nodeName (marks local backends; default: the hostname, lowercased)")
	fs.StringVar(&o.BPFFS, "bpffs", o.BPFFS, "bpffs directory for the pinned maps")
	fs.StringVar(&o.SocketLBCgroup, "socket-lb-cgroup", o.SocketLBCgroup, "a cgroup v2 directory whose processes' connect() and sendmsg() to frontends are balanced at the socket (clients on the node, whose packets cross no device sluice is attached to); empty: off")
	fs.BoolVar(&o.KubeProxyReplacement, "kube-proxy-replacement", o.KubeProxyReplacement, "serve every Service's ClusterIPs too (with internalTrafficPolicy), as kube-proxy does, so that the cluster needs no kube-proxy: clients on the node (its processes, its pods) through --socket-lb-cgroup, packets that reach a ClusterIP through a device at XDP/tc. Off: sluice serves NodePorts, external and load-balancer IPs beside kube-proxy")
	fs.BoolVar(&o.SocketLBHostOnly, "socket-lb-hostns-only", o.SocketLBHostOnly, "with --socket-lb-cgroup, balance the sockets of the node's own network namespace only, not its pods' (some service meshes want pods' connects untouched: their packets are then translated at their devices, see --pod-devices), as Cilium's bpf-lb-sock-hostns-only. Needs Linux 5.14")
	fs.BoolVar(&o.PodDevices, "pod-devices", o.PodDevices, "with --kube-proxy-replacement, attach at tc to the pods' devices (the host side of every veth whose other end is in another network namespace) to translate the service traffic of pods that no socket hook translated: with --socket-lb-hostns-only or no --socket-lb-cgroup, and what pods sent before the hooks were attached. The backend sees the pod's address, as with kube-proxy")
	fs.BoolVar(&o.LocalhostNodePorts, "localhost-nodeports", o.LocalhostNodePorts, "with --socket-lb-cgroup, serve NodePorts on 127.0.0.0/8 to the node's own processes (not to pods, whose loopback is theirs), as kube-proxy's iptables mode does (--iptables-localhost-nodeports, on by default; its nftables mode does not). Needs Linux 5.14 (SO_NETNS_COOKIE): before, off")
	fs.StringVar(&o.ProcFS, "procfs", o.ProcFS, "where the node's procfs is mounted: its sys/net is read and written (a container's own /proc/sys is read-only)")
	fs.StringVar(&o.XDPMode, "xdp-mode", o.XDPMode, "XDP attach mode: auto (per device: native on NIC drivers known to be right with it, tc elsewhere), native, generic, or off (tc ingress only)")
	fs.StringVar(&o.TCAttach, "tc-attach", o.TCAttach, "tc attach mode: auto (TCX on 6.6+, else clsact), tcx, or clsact")
	fs.StringVar(&o.NodePortRange, "nodeport-range", o.NodePortRange, "NodePorts outside this range are refused")
	fs.StringVar(&o.SNATPorts, "snat-port-range", o.SNATPorts, "source ports for SNAT to remote backends (keep clear of net.ipv4.ip_local_port_range)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", o.MetricsAddr, "where /metrics, /healthz and /readyz are served (empty: nowhere)")
	fs.StringVar(&o.HealthzBindAddress, "healthz-bind-address", o.HealthzBindAddress, "IP:port (an IP alone: port 10256) where kube-proxy's node health server is served: /healthz and /livez, what cloud load balancers probe to choose the nodes that get traffic (empty, the default: nowhere, since sluice runs beside kube-proxy, which holds it). 0.0.0.0:10256 is kube-proxy's address: set it when sluice replaces kube-proxy")
	fs.DurationVar(&o.SyncPeriod, "sync-period", o.SyncPeriod, "full resync interval")
	fs.DurationVar(&o.MinSync, "min-sync-interval", o.MinSync, "minimum time between syncs")
	fs.Func("max-services", "service ports the maps hold", uintFlag(&o.DP.MaxServices))
	fs.Func("max-frontends", "frontends (service ports x node addresses) the maps hold", uintFlag(&o.DP.MaxFrontends))
	fs.Func("max-backends", "backends the maps hold", uintFlag(&o.DP.MaxBackends))
	fs.Func("max-slots", "backend slots over all services", uintFlag(&o.DP.MaxSlots))
	fs.Func("max-conntrack", "connection table entries (two per flow; LRU)", uintFlag(&o.DP.MaxConntrack))
	fs.Func("max-affinity", "session affinity entries (one per client and service; LRU)", uintFlag(&o.DP.MaxAffinity))
	fs.StringVar(&o.LBAlgorithm, "lb-algorithm", o.LBAlgorithm, "backend selection: random, or maglev (consistent hashing: every node picks the same backend for a flow); a service's annotation "+desired.AnnotationLBAlgorithm+" overrides it")
	fs.Func("maglev-table-size", fmt.Sprintf("entries of each service's Maglev table, a prime (default %d)", o.DP.MaglevSize), uintFlag(&o.DP.MaglevSize))
	fs.DurationVar(&o.DP.CTTCPTimeout, "ct-tcp-timeout", o.DP.CTTCPTimeout, "idle timeout of established TCP flows")
	fs.DurationVar(&o.DP.CTUDPTimeout, "ct-udp-timeout", o.DP.CTUDPTimeout, "idle timeout of UDP flows")
	fs.DurationVar(&o.DP.CTCloseTimeout, "ct-close-timeout", o.DP.CTCloseTimeout, "timeout of TCP flows after a RST or a FIN both ways")
	fs.DurationVar(&o.DP.CTSYNTimeout, "ct-syn-timeout", o.DP.CTSYNTimeout, "timeout of TCP flows whose SYN is not answered")
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")
	fs.BoolVar(&o.Cleanup, "cleanup", false, "detach sluice from --devices, delete its pins under --bpffs, and exit (as kube-proxy --cleanup)")
}

// ParseArgs parses and validates the command line (flag.ErrHelp for -h). With --version or
// --cleanup only the flags are parsed: those need nothing else to be valid.
func ParseArgs(args []string) (*Options, error) {
	host, _ := os.Hostname()
	o := NewOptions(host)
	fs := flag.NewFlagSet("sluice-agent", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("parse flags: unexpected arguments %q", fs.Args())
	}
	o.deviceList = splitList(o.Devices)
	if o.Version || o.Cleanup {
		return o, nil
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// DeviceList is --devices, split.
func (o *Options) DeviceList() []string { return o.deviceList }

func uintFlag(dst *uint32) func(string) error {
	return func(s string) error {
		var v uint32
		if _, err := fmt.Sscan(s, &v); err != nil || v == 0 {
			return fmt.Errorf("want a positive number, got %q", s)
		}
		*dst = v
		return nil
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
