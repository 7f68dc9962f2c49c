package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"go.uber.org/zap/zapcore"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maglev"
)

// Validate checks the options together and keeps what it parsed for Run. Every error names
// the flag.
func (o *Options) Validate() error {
	if o.SyncPeriod <= 0 || o.MinSync < 0 || o.MinSync > o.SyncPeriod {
		return fmt.Errorf("validate flags: want 0 <= --min-sync-interval (%v) <= --sync-period (%v), and a positive --sync-period", o.MinSync, o.SyncPeriod)
	}
	if o.Manifests != "" && o.Kubeconfig != "" {
		return errors.New("validate flags: --manifests and --kubeconfig exclude each other")
	}
	if o.APIServer != "" {
		if o.Manifests != "" {
			return errors.New("validate flags: --manifests and --k8s-api-server exclude each other")
		}
		if u, err := url.Parse(o.APIServer); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return fmt.Errorf("validate flags: --k8s-api-server %q: want a URL such as https://10.0.0.1:6443", o.APIServer)
		}
	}
	if o.KubeProxyReplacement && o.Manifests == "" && o.Kubeconfig == "" && o.APIServer == "" {
		// The in-cluster config names the kubernetes Service's ClusterIP, which without
		// kube-proxy nothing serves until this agent has: it would wait for itself.
		return errors.New("validate flags: --kube-proxy-replacement with the in-cluster config needs --k8s-api-server (the API server's own address)")
	}
	if o.SocketLBHostOnly && o.SocketLBCgroup == "" {
		return errors.New("validate flags: --socket-lb-hostns-only needs --socket-lb-cgroup")
	}
	if strings.TrimSpace(o.NodeName) == "" {
		return errors.New("validate flags: --node-name is empty (and so is the hostname)")
	}
	if _, err := zapcore.ParseLevel(o.LogLevel); err != nil {
		return fmt.Errorf("validate flags: --log-level: %w", err)
	}
	switch o.LBAlgorithm {
	case "random":
		o.maglev = false
	case "maglev":
		o.maglev = true
	default:
		return fmt.Errorf("validate flags: --lb-algorithm %q: want random or maglev", o.LBAlgorithm)
	}
	if err := maglev.ValidTableSize(o.DP.MaglevSize); err != nil {
		return fmt.Errorf("validate flags: --maglev-table-size: %w", err)
	}
	var err error
	if o.xdp, err = datapath.ParseXDPMode(o.XDPMode); err != nil {
		return fmt.Errorf("validate flags: --xdp-mode: %w", err)
	}
	if o.tc, err = datapath.ParseTCMode(o.TCAttach); err != nil {
		return fmt.Errorf("validate flags: --tc-attach: %w", err)
	}
	if o.portRange, err = desired.ParsePortRange(o.NodePortRange); err != nil {
		return fmt.Errorf("validate flags: --nodeport-range: %w", err)
	}
	snat, err := desired.ParsePortRange(o.SNATPorts)
	if err != nil {
		return fmt.Errorf("validate flags: --snat-port-range: %w", err)
	}
	o.nodePortPrimary = strings.TrimSpace(o.NodePortAddrs) == "primary"
	if o.nodePortPrimary {
		o.nodePortCIDRs = nil
	} else if o.nodePortCIDRs, err = parseCIDRs(o.NodePortAddrs); err != nil {
		return err
	}
	if o.ipv6, err = parseIPv6Mode(o.IPv6); err != nil {
		return err
	}
	if o.healthzAddr, err = parseHealthzAddr(o.HealthzBindAddress, o.MetricsAddr); err != nil {
		return err
	}
	o.DP.SNATPortMin, o.DP.SNATPortMax = snat.Min, snat.Max
	o.DP.PinPath = o.BPFFS
	if err := o.DP.Validate(); err != nil {
		return fmt.Errorf("validate flags: %w", err)
	}
	return nil
}

// parseCIDRs parses --nodeport-addresses: CIDRs of either family (a family none names is served
// on all its addresses, as kube-proxy's proxier of that family does).
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil || p.Addr().Zone() != "" {
			return nil, fmt.Errorf("validate flags: --nodeport-addresses: %q is not a CIDR", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ipv6Mode is --ipv6.
type ipv6Mode uint8

const (
	ipv6Auto ipv6Mode = iota
	ipv6On
	ipv6Off
)

func parseIPv6Mode(s string) (ipv6Mode, error) {
	switch strings.TrimSpace(s) {
	case "auto", "":
		return ipv6Auto, nil
	case "true":
		return ipv6On, nil
	case "false":
		return ipv6Off, nil
	}
	return 0, fmt.Errorf("validate flags: --ipv6 %q: want auto, true or false", s)
}

// kubeProxyHealthzPort is kube-proxy's node health port (pkg/cluster/ports ProxyHealthzPort).
const kubeProxyHealthzPort = 10256

// parseHealthzAddr checks --healthz-bind-address as kube-proxy checks its own: IP:port, or an
// IP alone, which gets kube-proxy's port. It must not be --metrics-addr's port on an address
// both would listen on: one of the two servers could never start.
func parseHealthzAddr(s, metricsAddr string) (string, error) {
	if s = strings.TrimSpace(s); s == "" {
		return "", nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, kubeProxyHealthzPort).String(), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" {
		return "", fmt.Errorf("validate flags: --healthz-bind-address %q: want IP:port (kube-proxy's is 0.0.0.0:10256)", s)
	}
	if ap.Port() == 0 {
		return "", fmt.Errorf("validate flags: --healthz-bind-address %q: want a port from 1 to 65535", s)
	}
	if m, err := netip.ParseAddrPort(metricsAddr); err == nil && m.Port() == ap.Port() &&
		(m.Addr() == ap.Addr() || m.Addr().IsUnspecified() || ap.Addr().IsUnspecified()) {
		return "", fmt.Errorf("validate flags: --healthz-bind-address %s and --metrics-addr %s are the same port", s, metricsAddr)
	}
	return ap.String(), nil
}
