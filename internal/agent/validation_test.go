package agent

import (
	"errors"
	"flag"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Every way the command line can be wrong, each with an error that names the flag.
func TestParseArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the error
	}{
		{[]string{"--sync-period", "0s"}, "--sync-period"},
		{[]string{"--min-sync-interval", "1m", "--sync-period", "30s"}, "--min-sync-interval"},
		{[]string{"--manifests", "/tmp/m", "--kubeconfig", "/tmp/k"}, "--manifests and --kubeconfig"},
		{[]string{"--node-name", " "}, "--node-name"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--lb-algorithm", "roundrobin"}, "--lb-algorithm"},
		{[]string{"--lb-algorithm", "maglev", "--maglev-table-size", "1000"}, "--maglev-table-size"},
		{[]string{"--maglev-table-size", "0"}, "maglev-table-size"},
		{[]string{"--xdp-mode", "fast"}, "--xdp-mode"},
		{[]string{"--tc-attach", "ebpf"}, "--tc-attach"},
		{[]string{"--nodeport-range", "32000-31000"}, "--nodeport-range"},
		{[]string{"--snat-port-range", "70000-80000"}, "--snat-port-range"},
		{[]string{"--nodeport-addresses", "10.0.0.0/33"}, "--nodeport-addresses"},
		{[]string{"--nodeport-addresses", "fe80::/64%eth0"}, "--nodeport-addresses"},
		{[]string{"--ipv6", "yes"}, "--ipv6"},
		{[]string{"--ct-udp-timeout", "500ms"}, "UDP timeout"},
		{[]string{"--max-services", "-1"}, "max-services"},
		{[]string{"--healthz-bind-address", "10256"}, "--healthz-bind-address"},
		{[]string{"--healthz-bind-address", "node1:10256"}, "--healthz-bind-address"},
		{[]string{"--healthz-bind-address", "0.0.0.0:70000"}, "--healthz-bind-address"},
		{[]string{"--healthz-bind-address", "0.0.0.0:0"}, "--healthz-bind-address"},
		{[]string{"--healthz-bind-address", "0.0.0.0:9871"}, "--metrics-addr"},
		{[]string{"--kube-proxy-replacement"}, "needs --k8s-api-server"},
		{[]string{"--k8s-api-server", "10.0.0.1:6443"}, "--k8s-api-server"},
		{[]string{"--k8s-api-server", "https://10.0.0.1:6443", "--manifests", "/tmp/m"}, "--manifests and --k8s-api-server"},
		{[]string{"--socket-lb-hostns-only"}, "needs --socket-lb-cgroup"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"stray"}, "unexpected arguments"},
	} {
		_, err := ParseArgs(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one mentioning %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if _, err := ParseArgs([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestParseArgsValid(t *testing.T) {
	o, err := ParseArgs([]string{"--devices", "eth0, eth1,", "--nodeport-addresses", "10.89.0.0/24,fd00::/64", "--lb-algorithm", "maglev",
		"--maglev-table-size", "251", "--snat-port-range", "20000-20007", "--bpffs", "/sys/fs/bpf/x"})
	if err != nil {
		t.Fatal(err)
	}
	if got := o.DeviceList(); len(got) != 2 || got[0] != "eth0" || got[1] != "eth1" {
		t.Errorf("devices %q", got)
	}
	if !o.maglev || o.DP.MaglevSize != 251 || o.DP.SNATPortMin != 20000 || o.DP.SNATPortMax != 20007 || o.DP.PinPath != "/sys/fs/bpf/x" {
		t.Errorf("parsed %+v", o)
	}
	if len(o.nodePortCIDRs) != 2 {
		t.Errorf("CIDRs %v", o.nodePortCIDRs)
	}
	// --healthz-bind-address as kube-proxy's: IP:port, or an IP alone on kube-proxy's port.
	for in, want := range map[string]string{"0.0.0.0:10256": "0.0.0.0:10256", "10.89.0.11": "10.89.0.11:10256",
		"[::]:10256": "[::]:10256", "": ""} {
		if o, err := ParseArgs([]string{"--healthz-bind-address", in}); err != nil {
			t.Errorf("--healthz-bind-address %q: %v", in, err)
		} else if o.healthzAddr != want {
			t.Errorf("--healthz-bind-address %q: %q, want %q", in, o.healthzAddr, want)
		}
	}
	// --cleanup and --version need nothing else to be valid.
	if _, err := ParseArgs([]string{"--cleanup", "--lb-algorithm", "nonsense"}); err != nil {
		t.Errorf("--cleanup: %v", err)
	}
}

// The default node name is the hostname as the kubelet names its Node.
func TestNodeNameOf(t *testing.T) {
	if got := NodeNameOf(" Worker-1.Example.COM\n"); got != "worker-1.example.com" {
		t.Errorf("NodeNameOf = %q", got)
	}
}

// --nodeport-addresses primary serves the Node's own addresses, or each device's primary one
// while the Node is unknown; never a secondary address such as a floating VIP.
func TestNodePortAddressesPrimary(t *testing.T) {
	o, err := ParseArgs([]string{"--nodeport-addresses", "primary"})
	if err != nil || !o.nodePortPrimary || o.nodePortCIDRs != nil {
		t.Fatalf("parsed %v, %v", o, err)
	}
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	devAddrs := []netip.Addr{a("10.89.0.11"), a("10.89.0.100"), a("192.168.1.5")} // .100: a VIP
	if got := primaryAddresses(devAddrs, []netip.Addr{a("10.89.0.11"), a("fd00::11")}, nil); !slices.Equal(got, []netip.Addr{a("10.89.0.11")}) {
		t.Errorf("with the Node known: %v", got)
	}
	if got := primaryAddresses(devAddrs, nil, []netip.Addr{a("10.89.0.11"), a("192.168.1.5")}); !slices.Equal(got, []netip.Addr{a("10.89.0.11"), a("192.168.1.5")}) {
		t.Errorf("before the Node is known: %v", got)
	}
	// Each family apart: a Node with an IPv4 address only still has its devices' primary IPv6.
	dual := append(slices.Clone(devAddrs), a("fd00::11"), a("fd00::100"))
	if got := primaryAddresses(dual, []netip.Addr{a("10.89.0.11")}, []netip.Addr{a("fd00::11")}); !slices.Equal(got, []netip.Addr{a("10.89.0.11"), a("fd00::11")}) {
		t.Errorf("dual-stack, the Node's IPv4 only: %v", got)
	}
}

// --nodeport-addresses filters each family by its own CIDRs; a family it names no CIDR of is
// served on all its addresses (kube-proxy's NewNodePortAddresses adds 0.0.0.0/0 or ::/0).
func TestNodePortAddressesByFamily(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	addrs := []netip.Addr{a("10.89.0.11"), a("192.168.1.5"), a("fd00::11"), a("2001:db8::11")}
	for _, c := range []struct {
		flag string
		want []netip.Addr
	}{
		{"", addrs},
		{"10.89.0.0/16", []netip.Addr{a("10.89.0.11"), a("fd00::11"), a("2001:db8::11")}},
		{"fd00::/64", []netip.Addr{a("10.89.0.11"), a("192.168.1.5"), a("fd00::11")}},
		{"10.89.0.0/16,2001:db8::/32", []netip.Addr{a("10.89.0.11"), a("2001:db8::11")}},
	} {
		o, err := ParseArgs([]string{"--nodeport-addresses", c.flag})
		if err != nil {
			t.Fatal(err)
		}
		if got := filterAddresses(addrs, o.nodePortCIDRs); !slices.Equal(got, c.want) {
			t.Errorf("--nodeport-addresses %q: %v, want %v", c.flag, got, c.want)
		}
	}
}

// Beside kube-proxy (a cluster migrating to sluice), the agent must start: its default
// address for /metrics, /healthz and /readyz is none of the ports kube-proxy or the kubelet
// listen on (before, 127.0.0.1:10249, and the agent exited "address already in use").
func TestDefaultsStayClearOfKubeProxy(t *testing.T) {
	o := NewOptions("node1")
	taken := map[string]string{"10249": "kube-proxy metrics", "10256": "kube-proxy healthz",
		"10248": "kubelet healthz", "10250": "kubelet", "10255": "kubelet read-only"}
	_, port, err := net.SplitHostPort(o.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if who, ok := taken[port]; ok {
		t.Errorf("--metrics-addr defaults to %s, %s's port", o.MetricsAddr, who)
	}
	// kube-proxy's node health server is sluice's only when asked for.
	if o.HealthzBindAddress != "" {
		t.Errorf("--healthz-bind-address defaults to %s, want none", o.HealthzBindAddress)
	}
}

func TestParseArgsKubeProxyReplacement(t *testing.T) {
	for _, args := range [][]string{
		{"--kube-proxy-replacement", "--k8s-api-server", "https://10.0.0.1:6443"},
		{"--kube-proxy-replacement", "--kubeconfig", "/etc/k"},
		{"--kube-proxy-replacement", "--manifests", "/tmp/m"},
	} {
		if o, err := ParseArgs(args); err != nil || !o.KubeProxyReplacement {
			t.Errorf("%q: %v", args, err)
		}
	}
}
