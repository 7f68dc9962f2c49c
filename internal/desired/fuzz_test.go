package desired

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// FuzzBuild feeds arbitrary Service and EndpointSlice objects to Build: it must never panic,
// and whatever it keeps must be servable (a NodePort in range, a known protocol, backends
// sorted without duplicates); everything else must come back as a problem, not vanish.
func FuzzBuild(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"web","namespace":"default"},"spec":{"type":"NodePort","ports":[{"name":"http","protocol":"TCP","port":80,"nodePort":30080}]}}`),
		[]byte(`{"metadata":{"name":"web-1","namespace":"default","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","ports":[{"name":"http","protocol":"TCP","port":8080}],"endpoints":[{"addresses":["10.244.1.10"],"nodeName":"node1"},{"addresses":["10.244.1.10"]},{"addresses":["fd00::1"]},{"addresses":["bogus"]}]}`))
	f.Add([]byte(`{"metadata":{"name":"x","namespace":"a"},"spec":{"type":"LoadBalancer","ports":[{"protocol":"SCTP","nodePort":31000},{"protocol":"UDP","nodePort":99999},{"nodePort":-1}]}}`),
		[]byte(`{"metadata":{"name":"x","namespace":"a","labels":{"kubernetes.io/service-name":"x"}},"addressType":"IPv4","ports":[{"port":0},{"port":70000}],"endpoints":[{"addresses":[]},{"conditions":{"ready":false,"serving":true,"terminating":true},"addresses":["1.2.3.4"]}]}`))
	f.Fuzz(func(t *testing.T, svcJSON, sliceJSON []byte) {
		var svc v1.Service
		var sl discoveryv1.EndpointSlice
		if yaml.Unmarshal(svcJSON, &svc) != nil || json.Unmarshal(sliceJSON, &sl) != nil {
			return
		}
		in := Input{Options: Options{NodeName: "node1", NodePortRange: PortRange{30000, 32767}}, Addresses: []netip.Addr{netip.MustParseAddr("10.89.0.11")},
			Services: map[types.NamespacedName]*v1.Service{{Namespace: svc.Namespace, Name: svc.Name}: &svc},
			Slices:   map[types.NamespacedName]*discoveryv1.EndpointSlice{{Namespace: sl.Namespace, Name: sl.Name}: &sl}}
		st, problems := Build(in)
		kept := 0
		for k, s := range st.Services {
			kept++
			if (!in.NodePortRange.Contains(k.NodePort) && (k.NodePort != 0 || k.Name == "" || len(s.ExternalIPs)+len(s.LoadBalancerIPs) == 0)) || (k.Proto != 6 && k.Proto != 17 && k.Proto != 132) || s.Key != k {
				t.Fatalf("kept an unservable port: %+v", s)
			}
			if !slices.IsSortedFunc(s.Backends, compareBackends) {
				t.Fatalf("backends not sorted: %v", s.Backends)
			}
			for i := 1; i < len(s.Backends); i++ {
				if compareBackends(s.Backends[i-1], s.Backends[i]) == 0 {
					t.Fatalf("duplicate backend: %v", s.Backends)
				}
			}
			for _, b := range s.Backends {
				if !b.Addr.Is4() || b.Port == 0 {
					t.Fatalf("unusable backend %v", b)
				}
			}
		}
		if wantService(&svc, Options{}) {
			nodePorts := 0
			for _, p := range svc.Spec.Ports {
				if p.NodePort != 0 {
					nodePorts++
				}
			}
			if kept+len(problems) < nodePorts {
				t.Fatalf("%d node ports, %d kept and %d problems: some vanished", nodePorts, kept, len(problems))
			}
		}
	})
}
