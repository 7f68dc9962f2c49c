package desired

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/lb"
)

var nodeAddr6 = netip.MustParseAddr("fd00:89::11")

func slice6(name, svc string, ports []discoveryv1.EndpointPort, eps ...ep) *discoveryv1.EndpointSlice {
	sl := slice(name, svc, ports, eps...)
	sl.AddressType = discoveryv1.AddressTypeIPv6
	return sl
}

func dualStack(name string, typ v1.ServiceType, fams []v1.IPFamily, ips []string, ports ...v1.ServicePort) *v1.Service {
	s := service(name, typ, ports...)
	s.Spec.IPFamilies, s.Spec.ClusterIPs, s.Spec.ClusterIP = fams, ips, ips[0]
	return s
}

// buildFamilies builds on a node with an IPv4 and an IPv6 address.
func buildFamilies(o Options, svcs []*v1.Service, sls []*discoveryv1.EndpointSlice) (State, []Problem) {
	o.NodeName, o.NodePortRange = "node1", PortRange{30000, 32767}
	in := Input{Options: o, Addresses: []netip.Addr{nodeAddr6, nodeAddr},
		Services: map[types.NamespacedName]*v1.Service{}, Slices: map[types.NamespacedName]*discoveryv1.EndpointSlice{}}
	for _, s := range svcs {
		in.Services[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	for _, s := range sls {
		in.Slices[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	return Build(in)
}

// A dual-stack service is one entry per family, as kube-proxy runs a proxier per family: each
// family's entry has that family's frontends (node addresses, ClusterIP, external and
// load-balancer IPs, source ranges) and that family's EndpointSlices' endpoints, and the
// NodePort is the same on both.
func TestFamilies(t *testing.T) {
	tcp := v1.ProtocolTCP
	ports := []discoveryv1.EndpointPort{sport("http", tcp, 8080)}
	dual := dualStack("dual", v1.ServiceTypeLoadBalancer, []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol},
		[]string{"fd00:96::10", "10.96.0.10"}, port("http", tcp, 30080))
	dual.Spec.ExternalIPs = []string{"192.0.2.7", "2001:db8::7"}
	dual.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.1"}, {IP: "2001:db8:1::1"}}
	dual.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
	v6 := dualStack("v6", v1.ServiceTypeNodePort, []v1.IPFamily{v1.IPv6Protocol}, []string{"fd00:96::11"}, port("http", tcp, 30081))
	v4 := service("v4", v1.ServiceTypeNodePort, port("http", tcp, 30082))
	sls := []*discoveryv1.EndpointSlice{
		slice("dual-a", "dual", ports, ep{addr: "10.244.1.10", node: "node1"}),
		slice6("dual-b", "dual", ports, ep{addr: "fd00:244:1::10", node: "node1"}, ep{addr: "fd00:244:2::10", node: "node2"}),
		slice6("v6-a", "v6", ports, ep{addr: "fd00:244:1::11", node: "node1"}),
		// An IPv4 address in an IPv6 slice (a manifest's mistake) is no backend of either.
		slice6("v4-a", "v4", ports, ep{addr: "10.244.1.12", node: "node1"}),
	}
	st, problems := buildFamilies(Options{IPv6: true, ClusterIPs: true}, []*v1.Service{dual, v6, v4}, sls)
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	var got []string
	for _, r := range rows(st) {
		got = append(got, r.key.String()+" "+strings.Join(r.fes, ",")+" -> "+strings.Join(r.backends, ","))
	}
	want := []string{
		"default/dual:http/TCP/internal 10.96.0.10:80/TCP -> 10.244.1.10:8080 (local)",
		"default/dual:http/TCP/internal/IPv6 [fd00:96::10]:80/TCP -> [fd00:244:1::10]:8080 (local),[fd00:244:2::10]:8080",
		"default/v4:http/TCP/internal 10.96.0.10:80/TCP -> ",
		"default/v6:http/TCP/internal/IPv6 [fd00:96::11]:80/TCP -> [fd00:244:1::11]:8080 (local)",
		"30080/TCP 10.89.0.11:30080/TCP,192.0.2.7:80/TCP,198.51.100.1:80/TCP -> 10.244.1.10:8080 (local)",
		"30080/TCP/IPv6 [2001:db8:1::1]:80/TCP,[2001:db8::7]:80/TCP,[fd00:89::11]:30080/TCP -> [fd00:244:1::10]:8080 (local),[fd00:244:2::10]:8080",
		"30081/TCP/IPv6 [fd00:89::11]:30081/TCP -> [fd00:244:1::11]:8080 (local)",
		"30082/TCP 10.89.0.11:30082/TCP -> ",
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// kube-proxy filters loadBalancerSourceRanges by family: IPv4 ranges only leave IPv6 open.
	k4, k6 := ServiceKey{NodePort: 30080, Proto: lb.TCP}, ServiceKey{NodePort: 30080, Proto: lb.TCP, Family: lb.IPv6}
	if sr := st.Services[k4].SourceRanges; len(sr) != 1 || sr[0] != netip.MustParsePrefix("203.0.113.0/24") {
		t.Errorf("IPv4 source ranges %v", sr)
	}
	if sr := st.Services[k6].SourceRanges; len(sr) != 0 {
		t.Errorf("IPv6 source ranges %v, want none", sr)
	}
	// Remote IPv6 backends see the node's IPv6 address.
	for fk, fe := range st.Services[k6].Frontends(st.Addresses) {
		if lb.FamilyOf(fe.SNATAddr) != lb.IPv6 || !fe.SNATAddr.IsValid() {
			t.Errorf("%s: SNAT address %s", fk, fe.SNATAddr)
		}
	}
	if !st.Services[k6].Serves(lb.FrontendKey{Addr: nodeAddr6, Port: 30080, Proto: lb.TCP}, st.Addresses) ||
		st.Services[k6].Serves(lb.FrontendKey{Addr: nodeAddr, Port: 30080, Proto: lb.TCP}, st.Addresses) {
		t.Error("the IPv6 entry serves the IPv6 NodePort only")
	}

	// Without IPv6 (an IPv4-only node), only the IPv4 side, as kube-proxy's IPv4 proxier.
	st, _ = buildFamilies(Options{ClusterIPs: true}, []*v1.Service{dual, v6, v4}, sls)
	for k := range st.Services {
		if k.Family != lb.IPv4 {
			t.Errorf("IPv6 entry %s without IPv6", k)
		}
	}
	if _, ok := st.Services[k4]; !ok {
		t.Error("the dual-stack service's IPv4 side is missing without IPv6")
	}
}

// A NodePort on 127.0.0.1 has no IPv6 twin on ::1: kube-proxy serves localhost NodePorts in
// IPv4 only.
func TestLocalhostIsIPv4(t *testing.T) {
	dual := dualStack("dual", v1.ServiceTypeNodePort, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol},
		[]string{"10.96.0.10", "fd00:96::10"}, port("http", v1.ProtocolTCP, 30080))
	st, _ := buildFamilies(Options{IPv6: true, NodeClients: true, LocalhostNodePorts: true}, []*v1.Service{dual}, nil)
	if !st.Services[ServiceKey{NodePort: 30080, Proto: lb.TCP}].Localhost || st.Services[ServiceKey{NodePort: 30080, Proto: lb.TCP, Family: lb.IPv6}].Localhost {
		t.Error("localhost NodePort: want IPv4's only")
	}
}

// The health check counts each family's local endpoints apart, and a probe gets the count of
// the family it came over, as kube-proxy's proxier of that family answers it.
func TestHealthCheckByFamily(t *testing.T) {
	tcp := v1.ProtocolTCP
	svc := dualStack("hc", v1.ServiceTypeLoadBalancer, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol},
		[]string{"10.96.0.10", "fd00:96::10"}, port("http", tcp, 30080))
	svc.Spec.ExternalTrafficPolicy, svc.Spec.HealthCheckNodePort = v1.ServiceExternalTrafficPolicyLocal, 32000
	ports := []discoveryv1.EndpointPort{sport("http", tcp, 8080)}
	sls := []*discoveryv1.EndpointSlice{
		slice("hc-a", "hc", ports, ep{addr: "10.244.1.10", node: "node1"}),
		slice6("hc-b", "hc", ports, ep{addr: "fd00:244:1::10", node: "node1"}, ep{addr: "fd00:244:1::11", node: "node1"}),
	}
	hc, ok := HealthCheckOf(svc, sls, "node1")
	if !ok || hc.For(lb.IPv4) != 1 || hc.For(lb.IPv6) != 2 || hc.LocalEndpoints != 1 {
		t.Errorf("health check %+v: want 1 over IPv4, 2 over IPv6", hc)
	}
	svc.Spec.IPFamilies, svc.Spec.ClusterIPs = []v1.IPFamily{v1.IPv6Protocol}, []string{"fd00:96::10"}
	if hc, _ := HealthCheckOf(svc, sls, "node1"); hc.For(lb.IPv4) != 2 || hc.DualStack {
		t.Errorf("single-stack IPv6 health check %+v: want 2 over either family", hc)
	}
}
