package datapath_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/testutil"
)

// Packet-flow tests in the style of kube-proxy's (pkg/proxy/iptables runPacketFlowTests):
// Service and EndpointSlice objects go through the agent's own path (desired.Build, the
// reconciler) into a loaded datapath, and packets through the compiled program say what a
// client gets: which backends, masqueraded or not, rejected, dropped, or left to the kernel.

// flowWant is the outcome of a flow: the backends its connections reach ("addr:port"; a
// remote one must see the node's address, a local one the client's), or a verdict.
type flowWant struct {
	backends []string
	verdict  string // "", "reject", "drop", "kernel" (untouched)
}

type packetFlow struct {
	name     string
	src, dst string // "addr" and "addr:port"
	proto    layers.IPProtocol
	want     flowWant
}

func pfService(name string, mod func(*v1.Service)) *v1.Service {
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, ClusterIP: "172.30.0.10",
			Ports: []v1.ServicePort{{Name: "p80", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080}}}}
	if mod != nil {
		mod(s)
	}
	return s
}

// pfSlice has endpoints "addr@node" or "addr@node:terminating" on port p80 -> 80.
func pfSlice(svc string, eps ...string) *discoveryv1.EndpointSlice {
	name, proto, port := "p80", v1.ProtocolTCP, int32(80)
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: svc + "-1",
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}}}
	for _, e := range eps {
		addr, node, _ := strings.Cut(e, "@")
		node, state, _ := strings.Cut(node, ":")
		t, f := true, false
		c := discoveryv1.EndpointConditions{Ready: &t, Serving: &t, Terminating: &f}
		if state == "terminating" {
			c = discoveryv1.EndpointConditions{Ready: &f, Serving: &t, Terminating: &t}
		}
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: &node, Conditions: c})
	}
	return sl
}

const (
	pfLocal  = "10.244.1.10@node1"
	pfLocal2 = "10.244.1.11@node1"
	pfRemote = "10.0.0.2@node2"
)

func TestPacketFlows(t *testing.T) {
	for _, tc := range []struct {
		name   string
		svc    *v1.Service
		slices []*discoveryv1.EndpointSlice
		flows  []packetFlow
	}{
		{
			name:   "NodePort, Cluster policy: both endpoints; only the remote one masqueraded",
			svc:    pfService("web", nil),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfLocal, pfRemote)},
			flows: []packetFlow{
				{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{backends: []string{"10.244.1.10:80", "10.0.0.2:80"}}},
				{"to another port", "10.0.0.9", "10.0.0.1:30081", layers.IPProtocolTCP, flowWant{verdict: "kernel"}},
				{"UDP to a TCP NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolUDP, flowWant{verdict: "kernel"}},
			},
		},
		{
			name:  "no endpoints: rejected",
			svc:   pfService("web", nil),
			flows: []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{verdict: "reject"}}},
		},
		{
			name:   "only terminating endpoints: used",
			svc:    pfService("web", nil),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfLocal+":terminating", pfRemote+":terminating")},
			flows:  []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{backends: []string{"10.244.1.10:80", "10.0.0.2:80"}}}},
		},
		{
			name:   "externalTrafficPolicy Local: the local endpoint, not masqueraded",
			svc:    pfService("web", func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfLocal, pfRemote)},
			flows:  []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{backends: []string{"10.244.1.10:80"}}}},
		},
		{
			name:   "externalTrafficPolicy Local, endpoints only elsewhere: dropped",
			svc:    pfService("web", func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfRemote)},
			flows:  []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{verdict: "drop"}}},
		},
		{
			name:   "externalTrafficPolicy Local: a local terminating endpoint before remote ready ones",
			svc:    pfService("web", func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfLocal+":terminating", pfRemote)},
			flows:  []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{backends: []string{"10.244.1.10:80"}}}},
		},
		{
			name: "LoadBalancer with source ranges: the load-balancer IP only from the ranges; the NodePort from anywhere",
			svc: pfService("web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.8/29"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}}
			}),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfRemote)},
			flows: []packetFlow{
				{"allowed client to the LB IP", "10.0.0.9", "203.0.113.10:80", layers.IPProtocolTCP, flowWant{backends: []string{"10.0.0.2:80"}}},
				{"other client to the LB IP", "10.0.0.99", "203.0.113.10:80", layers.IPProtocolTCP, flowWant{verdict: "drop"}},
				{"other client to the NodePort", "10.0.0.99", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{backends: []string{"10.0.0.2:80"}}},
			},
		},
		{
			name:   "external IPs",
			svc:    pfService("web", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"198.51.100.7"} }),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfRemote)},
			flows: []packetFlow{
				{"to the external IP", "10.0.0.9", "198.51.100.7:80", layers.IPProtocolTCP, flowWant{backends: []string{"10.0.0.2:80"}}},
				{"to the external IP, another port", "10.0.0.9", "198.51.100.7:81", layers.IPProtocolTCP, flowWant{verdict: "kernel"}},
			},
		},
		{
			name:   "session affinity: every flow of a client to one backend",
			svc:    pfService("web", func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfLocal, pfLocal2)},
			flows:  []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{backends: []string{"one of 10.244.1.10:80 10.244.1.11:80"}}}},
		},
		{
			name: "a service another proxy handles: the kernel's",
			svc: pfService("web", func(s *v1.Service) {
				s.Labels = map[string]string{desired.LabelServiceProxyName: "other"}
			}),
			slices: []*discoveryv1.EndpointSlice{pfSlice("web", pfRemote)},
			flows:  []packetFlow{{"to the NodePort", "10.0.0.9", "10.0.0.1:30080", layers.IPProtocolTCP, flowWant{verdict: "kernel"}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newBareEnv(t)
			in := desired.Input{Options: desired.Options{NodeName: "node1", NodePortRange: desired.PortRange{Min: 30000, Max: 32767}},
				Addresses: []netip.Addr{nodeIP},
				Services:  map[types.NamespacedName]*v1.Service{{Namespace: "ns", Name: tc.svc.Name}: tc.svc},
				Slices:    map[types.NamespacedName]*discoveryv1.EndpointSlice{}}
			for _, sl := range tc.slices {
				in.Slices[types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}] = sl
			}
			st, problems := desired.Build(in)
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			if err := reconciler.New(e.m, 100, 100, zap.NewNop()).Apply(st); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.flows {
				t.Run(f.name, func(t *testing.T) { e.checkFlow(t, f) })
			}
		})
	}
}

// newBareEnv is a loaded datapath with nothing in its maps.
func newBareEnv(t *testing.T) *env {
	t.Helper()
	node := testutil.NewNode(t, "sl-flow-", nodeIP, map[netip.Addr]net.HardwareAddr{backendIP: backendMAC, clientIP: clientMAC})
	dp := loadShared(t, datapath.Config{XDPIfindex: uint32(node.Ifindex)})
	return &env{ns: node.Netns, ifindex: node.Ifindex, nodeMAC: node.MAC, dp: dp, m: maps.NewKernel(&dp.Objs.SluiceMaps)}
}

// checkFlow sends 24 SYNs of f (new source ports) and compares what became of them with f.want.
func (e *env) checkFlow(t *testing.T, f packetFlow) {
	t.Helper()
	dst := netip.MustParseAddrPort(f.dst)
	src := netip.MustParseAddr(f.src)
	got := map[string]bool{}
	for i := uint16(0); i < 24; i++ {
		p := e.fromClient(f.proto, 50000+i, dst.Port())
		p.Src, p.Dst, p.Payload = ap(src, 50000+i), dst, nil
		p.SYN = f.proto == layers.IPProtocolTCP
		in := p.Bytes()
		ret, out := e.run(t, e.dp.Objs.SluiceXdp, true, in)
		outcome, err := e.classify(ret, in, out, p)
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		got[outcome] = true
	}
	var want []string
	switch {
	case f.want.verdict != "":
		want = []string{f.want.verdict}
	case len(f.want.backends) == 1 && strings.HasPrefix(f.want.backends[0], "one of "):
		if len(got) != 1 {
			t.Fatalf("flows reached %v, want one backend for the client", keys(got))
		}
		for k := range got {
			if !strings.HasSuffix(k, " direct") || !strings.Contains(f.want.backends[0], strings.TrimSuffix(k, " direct")) {
				t.Fatalf("reached %s, want %s, not masqueraded", k, f.want.backends[0])
			}
		}
		return
	default:
		for _, b := range f.want.backends {
			// Local endpoints are never masqueraded (their replies pass tc egress); remote
			// ones always are (their replies must come back through this node).
			if strings.HasPrefix(b, "10.244.") {
				want = append(want, b+" direct")
			} else {
				want = append(want, b+" masq")
			}
		}
	}
	sort.Strings(want)
	if g := keys(got); !slices.Equal(g, want) {
		t.Errorf("24 flows: %v, want %v", g, want)
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// classify names what the datapath did with p: "addr:port masq|direct" for a translation,
// "reject", "drop" or "kernel" (passed untouched).
func (e *env) classify(ret uint32, in, out []byte, p testutil.Pkt) (string, error) {
	switch ret {
	case xdpDrop:
		return "drop", nil
	case xdpPass:
		if testutil.Diff(trimPadding(in), trimPadding(out)) == "" {
			return "kernel", nil
		}
	}
	if err := testutil.VerifyChecksums(out); err != nil {
		return "", fmt.Errorf("checksums: %w", err)
	}
	pkt := testutil.Decode(out)
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip == nil {
		return "", fmt.Errorf("no IPv4 in the output")
	}
	srcIP, _ := netip.AddrFromSlice(ip.SrcIP.To4())
	dstIP, _ := netip.AddrFromSlice(ip.DstIP.To4())
	if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
		if tcp.RST {
			return "reject", nil
		}
		masq := "direct"
		if srcIP == nodeIP {
			masq = "masq"
		} else if srcIP != p.Src.Addr() || uint16(tcp.SrcPort) != p.Src.Port() {
			return "", fmt.Errorf("source rewritten to %s:%d, neither the client nor the node", srcIP, tcp.SrcPort)
		}
		return fmt.Sprintf("%s %s", netip.AddrPortFrom(dstIP, uint16(tcp.DstPort)), masq), nil
	}
	if _, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		return "reject", nil
	}
	return "", fmt.Errorf("unexpected output %d:\n%s", ret, pkt)
}
