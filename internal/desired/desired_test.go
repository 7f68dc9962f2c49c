package desired

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/lb"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ptr[T any](v T) *T { return &v }

var nodeAddr = netip.MustParseAddr("10.89.0.11")

func service(name string, typ v1.ServiceType, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       v1.ServiceSpec{Type: typ, Ports: ports, ClusterIP: "10.96.0.10"},
	}
}

func port(name string, proto v1.Protocol, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: 80, NodePort: nodePort}
}

type ep struct {
	addr              string
	node              string
	ready, term, serv *bool
}

func slice(name, svc string, ports []discoveryv1.EndpointPort, eps ...ep) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
	}
	for _, e := range eps {
		var node *string
		if e.node != "" {
			node = ptr(e.node)
		}
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			NodeName:   node,
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Terminating: e.term, Serving: e.serv},
		})
	}
	return sl
}

func sport(name string, proto v1.Protocol, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(p)}
}

func b(addr string, port uint16, local bool) lb.Backend {
	return lb.Backend{Addr: netip.MustParseAddr(addr), Port: port, Local: local}
}

func build(svcs []*v1.Service, slices []*discoveryv1.EndpointSlice) (State, []Problem) {
	return buildWith(Options{}, svcs, slices)
}

func TestBuild(t *testing.T) {
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	yes, no := ptr(true), ptr(false)
	for _, tc := range []struct {
		name     string
		svcs     []*v1.Service
		slices   []*discoveryv1.EndpointSlice
		want     map[ServiceKey][]lb.Backend
		problems []string
	}{
		{
			name:   "NodePort joins slices by label and ports by name, marks local endpoints",
			svcs:   []*v1.Service{service("web", v1.ServiceTypeNodePort, port("http", tcp, 30080), port("dns", udp, 30053))},
			slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", []discoveryv1.EndpointPort{sport("http", tcp, 8080), sport("dns", udp, 5353)}, ep{addr: "10.244.1.10", node: "node1"}, ep{addr: "10.244.2.10", node: "node2"})},
			want: map[ServiceKey][]lb.Backend{
				{NodePort: 30080, Proto: lb.TCP}: {b("10.244.1.10", 8080, true), b("10.244.2.10", 8080, false)},
				{NodePort: 30053, Proto: lb.UDP}: {b("10.244.1.10", 5353, true), b("10.244.2.10", 5353, false)},
			},
		},
		{
			name: "endpoints merged across slices, duplicates dropped, sorted",
			svcs: []*v1.Service{service("web", v1.ServiceTypeNodePort, port("", tcp, 30080))},
			slices: []*discoveryv1.EndpointSlice{
				slice("web-2", "web", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.2.10"}, ep{addr: "10.244.1.10"}),
				slice("web-1", "web", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.10"}),
			},
			want: map[ServiceKey][]lb.Backend{{NodePort: 30080, Proto: lb.TCP}: {b("10.244.1.10", 80, false), b("10.244.2.10", 80, false)}},
		},
		{
			name:   "not-ready endpoints are left out; no endpoints still makes a frontend (reject)",
			svcs:   []*v1.Service{service("web", v1.ServiceTypeNodePort, port("", tcp, 30080))},
			slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.10", ready: no})},
			want:   map[ServiceKey][]lb.Backend{{NodePort: 30080, Proto: lb.TCP}: nil},
		},
		{
			name: "serving terminating endpoints used only when none is ready",
			svcs: []*v1.Service{service("web", v1.ServiceTypeNodePort, port("", tcp, 30080)), service("api", v1.ServiceTypeNodePort, port("", tcp, 30081))},
			slices: []*discoveryv1.EndpointSlice{
				slice("web-1", "web", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.10", ready: no, serv: yes, term: yes}, ep{addr: "10.244.1.11", ready: yes}),
				slice("api-1", "api", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.20", ready: no, serv: yes, term: yes}, ep{addr: "10.244.1.21", ready: no, serv: no, term: yes}),
			},
			want: map[ServiceKey][]lb.Backend{{NodePort: 30080, Proto: lb.TCP}: {b("10.244.1.11", 80, false)}, {NodePort: 30081, Proto: lb.TCP}: {{Addr: netip.MustParseAddr("10.244.1.20"), Port: 80, Terminating: true}}},
		},
		{
			// As kube-proxy reads conditions: ready alone says ready (a terminating endpoint
			// of a publishNotReadyAddresses service is ready), and a missing serving is true.
			name: "ready alone decides; serving defaults to true",
			svcs: []*v1.Service{service("pnra", v1.ServiceTypeNodePort, port("", tcp, 30080)), service("old", v1.ServiceTypeNodePort, port("", tcp, 30081))},
			slices: []*discoveryv1.EndpointSlice{
				slice("pnra-1", "pnra", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.10", ready: yes, term: yes}, ep{addr: "10.244.1.11", ready: yes}),
				slice("old-1", "old", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.20", ready: no, term: yes}),
			},
			want: map[ServiceKey][]lb.Backend{{NodePort: 30080, Proto: lb.TCP}: {b("10.244.1.10", 80, false), b("10.244.1.11", 80, false)}, {NodePort: 30081, Proto: lb.TCP}: {{Addr: netip.MustParseAddr("10.244.1.20"), Port: 80, Terminating: true}}},
		},
		{
			name:     "names longer than Kubernetes allows (only a manifest can have one) are refused",
			svcs:     []*v1.Service{service(strings.Repeat("x", 140), v1.ServiceTypeNodePort, port("http", tcp, 30080))},
			want:     map[ServiceKey][]lb.Backend{},
			problems: []string{`Service default/` + strings.Repeat("x", 140) + `: port "http": name`},
		},
		{
			// kube-proxy's IPv4 proxier leaves a single-stack IPv6 service alone: its
			// endpoints are IPv6, and rejecting on IPv4 NodePorts would answer for nothing.
			name: "single-stack IPv6 services are not served; dual-stack ones are",
			svcs: []*v1.Service{
				func() *v1.Service {
					s := service("v6", v1.ServiceTypeNodePort, port("", tcp, 30200))
					s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
					return s
				}(),
				func() *v1.Service {
					s := service("dual", v1.ServiceTypeNodePort, port("", tcp, 30201))
					s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
					return s
				}(),
			},
			want: map[ServiceKey][]lb.Backend{{NodePort: 30201, Proto: lb.TCP}: nil},
		},
		{
			name: "LoadBalancer nodePorts served; ClusterIP, ExternalName, other proxies' services ignored",
			svcs: []*v1.Service{
				service("lb", v1.ServiceTypeLoadBalancer, port("", tcp, 30100)),
				service("cip", v1.ServiceTypeClusterIP, port("", tcp, 0)),
				service("ext", v1.ServiceTypeExternalName),
				func() *v1.Service {
					s := service("other", v1.ServiceTypeNodePort, port("", tcp, 30101))
					s.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
					return s
				}(),
			},
			want: map[ServiceKey][]lb.Backend{{NodePort: 30100, Proto: lb.TCP}: nil},
		},
		{
			name:     "invalid ports are reported by name and skipped, the rest served",
			svcs:     []*v1.Service{service("bad", v1.ServiceTypeNodePort, port("quic", "QUIC", 30200), port("low", tcp, 80), port("ok", tcp, 30201), port("sctp", v1.ProtocolSCTP, 30202))},
			want:     map[ServiceKey][]lb.Backend{{NodePort: 30201, Proto: lb.TCP}: nil, {NodePort: 30202, Proto: lb.SCTP}: nil},
			problems: []string{`Service default/bad: port "quic": protocol "QUIC"`, `Service default/bad: port "low": nodePort 80 outside`},
		},
		{
			name: "a NodePort claimed twice goes to the older service",
			svcs: func() []*v1.Service {
				a, b := service("a", v1.ServiceTypeNodePort, port("", tcp, 30300)), service("b", v1.ServiceTypeNodePort, port("", tcp, 30300))
				a.CreationTimestamp = metav1.NewTime(time.Unix(200, 0))
				b.CreationTimestamp = metav1.NewTime(time.Unix(100, 0))
				return []*v1.Service{a, b}
			}(),
			want:     map[ServiceKey][]lb.Backend{{NodePort: 30300, Proto: lb.TCP}: nil},
			problems: []string{`Service default/a: port "": nodePort 30300/TCP already used by default/b:`},
		},
		{
			name: "slices of other services, IPv6 slices and wrong-protocol ports do not match",
			svcs: []*v1.Service{service("web", v1.ServiceTypeNodePort, port("", tcp, 30080))},
			slices: []*discoveryv1.EndpointSlice{slice("x", "other", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.9.9"}), slice("y", "web", []discoveryv1.EndpointPort{sport("", udp, 80)}, ep{addr: "10.244.9.8"}), func() *discoveryv1.EndpointSlice {
				s := slice("z", "web", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "fd00::1"})
				s.AddressType = discoveryv1.AddressTypeIPv6
				return s
			}()},
			want: map[ServiceKey][]lb.Backend{{NodePort: 30080, Proto: lb.TCP}: nil},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, problems := build(tc.svcs, tc.slices)
			if len(st.Services) != len(tc.want) {
				t.Fatalf("services %v, want %v", st.Services, tc.want)
			}
			for k, want := range tc.want {
				got, ok := st.Services[k]
				if !ok {
					t.Fatalf("missing %s", k)
				}
				if len(got.Backends) != len(want) {
					t.Fatalf("%s backends %v, want %v", k, got.Backends, want)
				}
				for i := range want {
					if got.Backends[i] != want[i] {
						t.Errorf("%s backend %d: %v, want %v", k, i, got.Backends[i], want[i])
					}
				}
			}
			if len(problems) != len(tc.problems) {
				t.Fatalf("problems %v, want %v", problems, tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.HasPrefix(problems[i].Error(), p) {
					t.Errorf("problem %q, want prefix %q", problems[i].Error(), p)
				}
			}
		})
	}
}

func TestParsePortRange(t *testing.T) {
	if r, err := ParsePortRange("30000-32767"); err != nil || r != (PortRange{30000, 32767}) {
		t.Errorf("%v %v", r, err)
	}
	for _, bad := range []string{"", "5-1", "0-10", "x-y", "1-70000"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
