package desired

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/lb"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Policy as kube-proxy reads it from the same objects: session affinity, externalTrafficPolicy
// Local (with its terminating fallback and drop), load-balancer and external IPs with source
// ranges, and the algorithm annotation.
func TestBuildPolicy(t *testing.T) {
	tcp := v1.ProtocolTCP
	yes, no := ptr(true), ptr(false)
	key := ServiceKey{NodePort: 30080, Proto: lb.TCP}
	web := func(mod func(*v1.Service)) []*v1.Service {
		s := service("web", v1.ServiceTypeLoadBalancer, port("", tcp, 30080))
		mod(s)
		return []*v1.Service{s}
	}
	eps := func(e ...ep) []*discoveryv1.EndpointSlice {
		return []*discoveryv1.EndpointSlice{slice("web-1", "web", []discoveryv1.EndpointPort{sport("", tcp, 8080)}, e...)}
	}
	local, remote := ep{addr: "10.244.1.10", node: "node1"}, ep{addr: "10.244.2.10", node: "node2"}
	localTerm := ep{addr: "10.244.1.11", node: "node1", ready: no, serv: yes, term: yes}
	proxy := v1.LoadBalancerIPModeProxy
	for _, tc := range []struct {
		name    string
		svcs    []*v1.Service
		slices  []*discoveryv1.EndpointSlice
		want    func(s *Service) string // "" if s is right
		problem string
	}{
		{
			name:   "ClientIP affinity with the default timeout",
			svcs:   web(func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }),
			slices: eps(local),
			want: func(s *Service) string {
				if s.AffinityTimeout != 10800 {
					return "timeout not 10800"
				}
				return ""
			},
		},
		{
			name: "ClientIP affinity with a timeout",
			svcs: web(func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr(int32(30))}}
			}),
			slices: eps(local),
			want: func(s *Service) string {
				if s.AffinityTimeout != 30 {
					return "timeout not 30"
				}
				return ""
			},
		},
		{
			name: "a timeout out of range is a problem, not a silent default",
			svcs: web(func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr(int32(0))}}
			}),
			problem: "timeoutSeconds 0",
		},
		{
			name:   "externalTrafficPolicy Local: this node's endpoints only",
			svcs:   web(func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: eps(local, remote, localTerm),
			want: func(s *Service) string {
				if !s.ExternalLocal || s.DropEmpty || !slices.Equal(s.Backends, []lb.Backend{b("10.244.1.10", 8080, true)}) {
					return "want the local ready endpoint only"
				}
				return ""
			},
		},
		{
			name:   "Local: this node's serving terminating endpoints when none here is ready, even if others are",
			svcs:   web(func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: eps(remote, localTerm),
			want: func(s *Service) string {
				want := []lb.Backend{{Addr: netip.MustParseAddr("10.244.1.11"), Port: 8080, Local: true, Terminating: true}}
				if !slices.Equal(s.Backends, want) || s.DropEmpty {
					return "want the local terminating endpoint"
				}
				return ""
			},
		},
		{
			name:   "Local with endpoints only elsewhere: drop",
			svcs:   web(func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: eps(remote),
			want: func(s *Service) string {
				if len(s.Backends) != 0 || !s.DropEmpty {
					return "want no backends and drop"
				}
				return ""
			},
		},
		{
			name:   "Local with no endpoints anywhere: reject, as any service",
			svcs:   web(func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
			slices: eps(),
			want: func(s *Service) string {
				if len(s.Backends) != 0 || s.DropEmpty {
					return "want no backends and reject"
				}
				return ""
			},
		},
		{
			name: "load-balancer IPs (not ipMode Proxy, not IPv6), external IPs and source ranges",
			svcs: web(func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"198.51.100.7", "2001:db8::1", "198.51.100.7"}
				s.Spec.LoadBalancerSourceRanges = []string{"10.89.0.0/24", " 192.168.1.7/16"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}, {IP: "203.0.113.11", IPMode: &proxy}, {Hostname: "lb.example"}}
			}),
			slices: eps(local),
			want: func(s *Service) string {
				if !slices.Equal(s.LoadBalancerIPs, []netip.Addr{netip.MustParseAddr("203.0.113.10")}) ||
					!slices.Equal(s.ExternalIPs, []netip.Addr{netip.MustParseAddr("198.51.100.7")}) ||
					!slices.Equal(s.SourceRanges, []netip.Prefix{netip.MustParsePrefix("10.89.0.0/24"), netip.MustParsePrefix("192.168.0.0/16")}) || s.Port != 80 {
					return "wrong addresses"
				}
				fes := s.Frontends([]netip.Addr{nodeAddr})
				lbFE := fes[lb.FrontendKey{Addr: netip.MustParseAddr("203.0.113.10"), Port: 80, Proto: lb.TCP}]
				np := fes[lb.FrontendKey{Addr: nodeAddr, Port: 30080, Proto: lb.TCP}]
				if len(fes) != 3 || lbFE.Flags != lb.FrontendSourceRanges || np.Flags != 0 || lbFE.SNATAddr != nodeAddr || np.SNATAddr != nodeAddr {
					return "wrong frontends"
				}
				return ""
			},
		},
		{
			name:    "a source range that does not parse is a problem (an empty list would open the service)",
			svcs:    web(func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/33"} }),
			problem: "loadBalancerSourceRanges",
		},
		{
			name:   "maglev by annotation",
			svcs:   web(func(s *v1.Service) { s.Annotations = map[string]string{AnnotationLBAlgorithm: "maglev"} }),
			slices: eps(local),
			want: func(s *Service) string {
				if !s.Maglev {
					return "not maglev"
				}
				return ""
			},
		},
		{
			name:    "an unknown algorithm is a problem",
			svcs:    web(func(s *v1.Service) { s.Annotations = map[string]string{AnnotationLBAlgorithm: "round-robin"} }),
			problem: "round-robin",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, problems := build(tc.svcs, tc.slices)
			if tc.problem != "" {
				if len(problems) != 1 || !strings.Contains(problems[0].Error(), tc.problem) || len(st.Services) != 0 {
					t.Fatalf("problems %v, services %d: want one mentioning %q and no service", problems, len(st.Services), tc.problem)
				}
				return
			}
			if len(problems) != 0 {
				t.Fatalf("problems: %v", problems)
			}
			s := st.Services[key]
			if s == nil {
				t.Fatal("no service")
			}
			if msg := tc.want(s); msg != "" {
				t.Errorf("%s: %s", msg, s.Describe())
			}
		})
	}
}

func TestBuildDefaultAlgorithm(t *testing.T) {
	s := service("web", v1.ServiceTypeNodePort, port("", v1.ProtocolTCP, 30080))
	random := service("api", v1.ServiceTypeNodePort, port("", v1.ProtocolTCP, 30081))
	random.Annotations = map[string]string{AnnotationLBAlgorithm: "random"}
	in := Input{Options: Options{NodeName: "node1", NodePortRange: PortRange{30000, 32767}, Maglev: true}, Addresses: []netip.Addr{nodeAddr},
		Services: map[types.NamespacedName]*v1.Service{{Namespace: "default", Name: "web"}: s, {Namespace: "default", Name: "api"}: random}}
	st, _ := Build(in)
	if !st.Services[ServiceKey{NodePort: 30080, Proto: lb.TCP}].Maglev || st.Services[ServiceKey{NodePort: 30081, Proto: lb.TCP}].Maglev {
		t.Errorf("--lb-algorithm maglev: want maglev unless annotated random")
	}
}

func TestHealthCheckCountsLocalReadyEndpoints(t *testing.T) {
	tcp := v1.ProtocolTCP
	yes, no := ptr(true), ptr(false)
	s := service("web", v1.ServiceTypeLoadBalancer, port("", tcp, 30080))
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	s.Spec.HealthCheckNodePort = 32000
	sl := slice("web-1", "web", []discoveryv1.EndpointPort{sport("", tcp, 8080)},
		ep{addr: "10.244.1.10", node: "node1"},
		ep{addr: "10.244.1.11", node: "node1", ready: no, serv: yes, term: yes},
		ep{addr: "10.244.1.12", node: "node1", ready: yes, term: yes}, // publishNotReadyAddresses: ready counts
		ep{addr: "10.244.2.10", node: "node2"})
	hc, ok := HealthCheckOf(s, []*discoveryv1.EndpointSlice{sl}, "node1")
	if !ok || hc != (HealthCheck{Port: 32000, LocalEndpoints: 2}) {
		t.Errorf("health check %+v %v, want port 32000 with 2 local ready endpoints", hc, ok)
	}
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	if _, ok := HealthCheckOf(s, nil, "node1"); ok {
		t.Error("a Cluster service has no health check")
	}
}

// Ports without a NodePort are served on their external and load-balancer IPs only, keyed by
// name: a ClusterIP service with externalIPs, a LoadBalancer without node ports.
func TestBuildPortsWithoutNodePort(t *testing.T) {
	tcp := v1.ProtocolTCP
	cip := service("cip", v1.ServiceTypeClusterIP, port("http", tcp, 0))
	cip.Spec.ExternalIPs = []string{"198.51.100.7"}
	plain := service("plain", v1.ServiceTypeClusterIP, port("http", tcp, 0))
	lbSvc := service("lb", v1.ServiceTypeLoadBalancer, port("http", tcp, 0))
	lbSvc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}}
	st, problems := build([]*v1.Service{cip, plain, lbSvc}, []*discoveryv1.EndpointSlice{
		slice("cip-1", "cip", []discoveryv1.EndpointPort{sport("http", tcp, 8080)}, ep{addr: "10.244.1.10", node: "node1"}),
	})
	if len(problems) != 0 || len(st.Services) != 2 {
		t.Fatalf("problems %v, services %v", problems, st.Services)
	}
	s := st.Services[ServiceKey{Proto: lb.TCP, Name: "default/cip:http"}]
	if s == nil || len(s.Backends) != 1 {
		t.Fatalf("the ClusterIP service's external IP port: %+v", s)
	}
	fes := s.Frontends([]netip.Addr{nodeAddr})
	if len(fes) != 1 {
		t.Errorf("frontends %v: want the external IP only, no NodePort", fes)
	}
	if _, ok := fes[lb.FrontendKey{Addr: netip.MustParseAddr("198.51.100.7"), Port: 80, Proto: lb.TCP}]; !ok {
		t.Errorf("frontends %v", fes)
	}
	if st.Services[ServiceKey{Proto: lb.TCP, Name: "default/lb:http"}] == nil {
		t.Error("a LoadBalancer without node ports is served on its ingress IP")
	}
}

// Serves agrees with Frontends: every frontend is served, and nothing else.
func TestServesAgreesWithFrontends(t *testing.T) {
	addrs := []netip.Addr{nodeAddr, netip.MustParseAddr("192.168.7.11")}
	s := &Service{Key: ServiceKey{NodePort: 30080, Proto: lb.TCP}, Port: 80,
		ExternalIPs: []netip.Addr{netip.MustParseAddr("198.51.100.7")}, LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}}
	fes := s.Frontends(addrs)
	for k := range fes {
		if !s.Serves(k, addrs) {
			t.Errorf("frontend %s not served", k)
		}
	}
	for _, k := range []lb.FrontendKey{
		{Addr: nodeAddr, Port: 30080, Proto: lb.UDP},
		{Addr: nodeAddr, Port: 80, Proto: lb.TCP},
		{Addr: netip.MustParseAddr("203.0.113.10"), Port: 30080, Proto: lb.TCP},
		{Addr: netip.MustParseAddr("10.0.0.9"), Port: 30080, Proto: lb.TCP},
	} {
		if s.Serves(k, addrs) {
			t.Errorf("%s served, though no frontend", k)
		}
	}
	noNodePort := *s
	noNodePort.Key = ServiceKey{Proto: lb.TCP, Name: "default/x:http"}
	if noNodePort.Serves(lb.FrontendKey{Addr: nodeAddr, Port: 0, Proto: lb.TCP}, addrs) {
		t.Error("a port without a NodePort served on a node address")
	}
}
