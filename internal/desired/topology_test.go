package desired

import (
	"slices"
	"testing"

	"github.com/sluicelb/sluice/internal/lb"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Topology hints, as kube-proxy's CategorizeEndpoints applies them to Cluster traffic: the
// EndpointSlice controller writes them for trafficDistribution (PreferClose, PreferSameZone:
// zone hints; PreferSameNode: node hints) and topology-aware routing; they are used only when
// every ready endpoint has one and at least one names this node (or its zone).
func TestTopologyHints(t *testing.T) {
	type hinted struct {
		addr, node string
		zones      []string
		nodes      []string
		ready      bool
	}
	mk := func(eps ...hinted) *discoveryv1.EndpointSlice {
		tcp, p, name := v1.ProtocolTCP, int32(80), ""
		sl := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &p}}}
		sl.Namespace, sl.Name, sl.Labels = "default", "web-1", map[string]string{discoveryv1.LabelServiceName: "web"}
		for _, e := range eps {
			ep := discoveryv1.Endpoint{Addresses: []string{e.addr}, NodeName: ptr(e.node)}
			if !e.ready {
				f, tr := false, true
				ep.Conditions = discoveryv1.EndpointConditions{Ready: &f, Serving: &tr, Terminating: &tr}
			}
			if len(e.zones)+len(e.nodes) > 0 {
				ep.Hints = &discoveryv1.EndpointHints{}
				for _, z := range e.zones {
					ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
				}
				for _, n := range e.nodes {
					ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
				}
			}
			sl.Endpoints = append(sl.Endpoints, ep)
		}
		return sl
	}
	for _, tc := range []struct {
		name  string
		zone  string // node1's topology.kubernetes.io/zone
		slice *discoveryv1.EndpointSlice
		local bool // externalTrafficPolicy Local
		want  []string
	}{
		{"zone hints: this zone's endpoints", "a",
			mk(hinted{"10.244.1.10", "node1", []string{"a"}, nil, true}, hinted{"10.244.2.10", "node2", []string{"b"}, nil, true}, hinted{"10.244.3.10", "node3", []string{"a"}, nil, true}),
			false, []string{"10.244.1.10", "10.244.3.10"}},
		{"not every ready endpoint hinted: all", "a",
			mk(hinted{"10.244.1.10", "node1", []string{"a"}, nil, true}, hinted{"10.244.2.10", "node2", nil, nil, true}),
			false, []string{"10.244.1.10", "10.244.2.10"}},
		{"a not-ready endpoint without hints does not count", "a",
			mk(hinted{"10.244.1.10", "node1", []string{"a"}, nil, true}, hinted{"10.244.2.10", "node2", []string{"b"}, nil, true}, hinted{"10.244.4.10", "node4", nil, nil, false}),
			false, []string{"10.244.1.10"}},
		{"no endpoint for this zone: all", "c",
			mk(hinted{"10.244.1.10", "node1", []string{"a"}, nil, true}, hinted{"10.244.2.10", "node2", []string{"b"}, nil, true}),
			false, []string{"10.244.1.10", "10.244.2.10"}},
		{"node without a zone label: all", "",
			mk(hinted{"10.244.1.10", "node1", []string{"a"}, nil, true}, hinted{"10.244.2.10", "node2", []string{"b"}, nil, true}),
			false, []string{"10.244.1.10", "10.244.2.10"}},
		{"node hints (PreferSameNode): this node's first", "a",
			mk(hinted{"10.244.1.10", "node1", []string{"a"}, []string{"node1"}, true}, hinted{"10.244.3.10", "node3", []string{"a"}, []string{"node3"}, true}),
			false, []string{"10.244.1.10"}},
		{"node hints, none for this node: zone hints", "a",
			mk(hinted{"10.244.2.10", "node2", []string{"a"}, []string{"node2"}, true}, hinted{"10.244.3.10", "node3", []string{"b"}, []string{"node3"}, true}),
			false, []string{"10.244.2.10"}},
		{"externalTrafficPolicy Local: local endpoints, hints aside", "a",
			mk(hinted{"10.244.1.10", "node1", []string{"b"}, nil, true}, hinted{"10.244.2.10", "node2", []string{"a"}, nil, true}),
			true, []string{"10.244.1.10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := service("web", v1.ServiceTypeNodePort, port("", v1.ProtocolTCP, 30080))
			if tc.local {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}
			x := NewIndex(Options{NodeName: "node1", NodeZone: tc.zone, NodePortRange: PortRange{30000, 32767}})
			x.Set(nn("web"), s, []*discoveryv1.EndpointSlice{tc.slice})
			var got []string
			for _, b := range x.Services[ServiceKey{NodePort: 30080, Proto: lb.TCP}].Backends {
				got = append(got, b.Addr.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("backends %v, want %v", got, tc.want)
			}
		})
	}
}
