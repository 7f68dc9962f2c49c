package desired

import (
	"net/netip"
	"slices"
	"sort"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/lb"
)

func buildWith(o Options, svcs []*v1.Service, sls []*discoveryv1.EndpointSlice) (State, []Problem) {
	o.NodeName, o.NodePortRange = "node1", PortRange{30000, 32767}
	in := Input{Options: o, Addresses: []netip.Addr{nodeAddr},
		Services: map[types.NamespacedName]*v1.Service{}, Slices: map[types.NamespacedName]*discoveryv1.EndpointSlice{}}
	for _, s := range svcs {
		in.Services[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	for _, s := range sls {
		in.Slices[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	return Build(in)
}

// scopeRow is what one service port's scope holds: its frontends and backends.
type scopeRow struct {
	key      ServiceKey
	fes      []string // FrontendKey strings, sorted
	backends []string
	drop     bool
}

func rows(st State) []scopeRow {
	var out []scopeRow
	for k, s := range st.Services {
		r := scopeRow{key: k, drop: s.DropEmpty}
		for fk := range s.Frontends(st.Addresses) {
			r.fes = append(r.fes, fk.String())
		}
		sort.Strings(r.fes)
		for _, b := range s.Backends {
			r.backends = append(r.backends, b.String())
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key.Less(out[j].key) })
	return out
}

// Which scopes a service port gets, with which frontends and endpoints, as kube-proxy applies
// the traffic policies: ClusterIPs get internalTrafficPolicy's endpoints; NodePorts
// externalTrafficPolicy's, except for clients on the node, which get the Cluster endpoints.
func TestScopes(t *testing.T) {
	tcp := v1.ProtocolTCP
	local, remote := ep{addr: "10.244.1.10", node: "node1"}, ep{addr: "10.244.2.10", node: "node2"}
	np := service("np", v1.ServiceTypeNodePort, port("http", tcp, 30080))
	npLocal := service("nplocal", v1.ServiceTypeNodePort, port("http", tcp, 30081))
	npLocal.Spec.ClusterIP, npLocal.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"}
	npLocal.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	cip := service("cip", v1.ServiceTypeClusterIP, port("http", tcp, 0))
	cip.Spec.ClusterIP, cip.Spec.ClusterIPs = "10.96.0.12", []string{"10.96.0.12"}
	itp := service("itp", v1.ServiceTypeClusterIP, port("http", tcp, 0))
	itp.Spec.ClusterIP, itp.Spec.ClusterIPs = "10.96.0.13", []string{"10.96.0.13"}
	itp.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
	itpRemote := service("itpremote", v1.ServiceTypeClusterIP, port("http", tcp, 0))
	itpRemote.Spec.ClusterIP, itpRemote.Spec.ClusterIPs = "10.96.0.14", []string{"10.96.0.14"}
	itpRemote.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
	headless := service("headless", v1.ServiceTypeClusterIP, port("http", tcp, 0))
	headless.Spec.ClusterIP = v1.ClusterIPNone
	ports := []discoveryv1.EndpointPort{sport("http", tcp, 8080)}
	sls := []*discoveryv1.EndpointSlice{
		slice("np-1", "np", ports, local, remote),
		slice("nplocal-1", "nplocal", ports, remote),
		slice("cip-1", "cip", ports, local, remote),
		slice("itp-1", "itp", ports, local, remote),
		slice("itpremote-1", "itpremote", ports, remote),
		slice("headless-1", "headless", ports, local),
	}
	svcs := []*v1.Service{np, npLocal, cip, itp, itpRemote, headless}
	both := []string{"10.244.1.10:8080 (local)", "10.244.2.10:8080"}
	for _, tc := range []struct {
		name string
		o    Options
		want []scopeRow
	}{
		{"NodePorts only (beside kube-proxy)", Options{}, []scopeRow{
			{key: ServiceKey{NodePort: 30080, Proto: lb.TCP}, fes: []string{"10.89.0.11:30080/TCP"}, backends: both},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP}, fes: []string{"10.89.0.11:30081/TCP"}, drop: true},
		}},
		{"clients on the node get the Cluster endpoints of a Local NodePort", Options{NodeClients: true}, []scopeRow{
			{key: ServiceKey{NodePort: 30080, Proto: lb.TCP}, fes: []string{"10.89.0.11:30080/TCP"}, backends: both},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP}, fes: []string{"10.89.0.11:30081/TCP"}, drop: true},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP, Scope: ScopeNode}, fes: []string{"10.89.0.11:30081/TCP (socket)"}, backends: []string{"10.244.2.10:8080"}},
		}},
		{"NodePorts on localhost for the node's processes, from the scope they get", Options{NodeClients: true, LocalhostNodePorts: true}, []scopeRow{
			{key: ServiceKey{NodePort: 30080, Proto: lb.TCP}, fes: []string{"10.89.0.11:30080/TCP", "127.0.0.1:30080/TCP (socket)"}, backends: both},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP}, fes: []string{"10.89.0.11:30081/TCP"}, drop: true},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP, Scope: ScopeNode}, fes: []string{"10.89.0.11:30081/TCP (socket)", "127.0.0.1:30081/TCP (socket)"}, backends: []string{"10.244.2.10:8080"}},
		}},
		{"ClusterIPs with internalTrafficPolicy; headless and ExternalName ignored", Options{ClusterIPs: true, NodeClients: true}, []scopeRow{
			{key: ServiceKey{Proto: lb.TCP, Name: "default/cip:http", Scope: ScopeInternal}, fes: []string{"10.96.0.12:80/TCP"}, backends: both},
			{key: ServiceKey{Proto: lb.TCP, Name: "default/itp:http", Scope: ScopeInternal}, fes: []string{"10.96.0.13:80/TCP"}, backends: []string{"10.244.1.10:8080 (local)"}},
			// internalTrafficPolicy Local with endpoints only elsewhere: dropped, as kube-proxy.
			{key: ServiceKey{Proto: lb.TCP, Name: "default/itpremote:http", Scope: ScopeInternal}, fes: []string{"10.96.0.14:80/TCP"}, drop: true},
			{key: ServiceKey{Proto: lb.TCP, Name: "default/np:http", Scope: ScopeInternal}, fes: []string{"10.96.0.10:80/TCP"}, backends: both},
			// externalTrafficPolicy does not apply to the ClusterIP.
			{key: ServiceKey{Proto: lb.TCP, Name: "default/nplocal:http", Scope: ScopeInternal}, fes: []string{"10.96.0.11:80/TCP"}, backends: []string{"10.244.2.10:8080"}},
			{key: ServiceKey{NodePort: 30080, Proto: lb.TCP}, fes: []string{"10.89.0.11:30080/TCP"}, backends: both},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP}, fes: []string{"10.89.0.11:30081/TCP"}, drop: true},
			{key: ServiceKey{NodePort: 30081, Proto: lb.TCP, Scope: ScopeNode}, fes: []string{"10.89.0.11:30081/TCP (socket)"}, backends: []string{"10.244.2.10:8080"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, problems := buildWith(tc.o, svcs, sls)
			if len(problems) != 0 {
				t.Fatalf("problems: %v", problems)
			}
			got := rows(st)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d scopes, want %d:\n%+v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.key != w.key || !slices.Equal(g.fes, w.fes) || !slices.Equal(g.backends, w.backends) || g.drop != w.drop {
					t.Errorf("scope %d:\n got %+v\nwant %+v", i, g, w)
				}
				if s := st.Services[g.key]; !s.Serves(mustKey(t, s, st.Addresses), st.Addresses) {
					t.Errorf("%s does not serve its own frontend", g.key)
				}
			}
		})
	}
}

func mustKey(t *testing.T, s *Service, addrs []netip.Addr) lb.FrontendKey {
	t.Helper()
	for k := range s.Frontends(addrs) {
		return k
	}
	t.Fatalf("%s has no frontend", s.Key)
	return lb.FrontendKey{}
}

// A NodePort outside the range loses its external scope, not its ClusterIP; a node scope
// conflicts with its external scope and is reported once.
func TestScopesProblems(t *testing.T) {
	tcp := v1.ProtocolTCP
	out := service("out", v1.ServiceTypeNodePort, port("http", tcp, 80))
	old := service("old", v1.ServiceTypeNodePort, port("http", tcp, 30080))
	young := service("young", v1.ServiceTypeNodePort, port("http", tcp, 30080))
	young.CreationTimestamp.Time = old.CreationTimestamp.Add(1)
	young.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	st, problems := buildWith(Options{ClusterIPs: true, NodeClients: true}, []*v1.Service{out, old, young}, nil)
	if len(problems) != 2 {
		t.Fatalf("problems %v, want the range and one conflict", problems)
	}
	if _, ok := st.Services[ServiceKey{Proto: lb.TCP, Name: "default/out:http", Scope: ScopeInternal}]; !ok {
		t.Error("the ClusterIP of a service whose NodePort is refused is not served")
	}
	if s := st.Services[ServiceKey{NodePort: 30080, Proto: lb.TCP}]; s == nil || s.Name != "default/old:http" {
		t.Errorf("30080 served by %+v, want old", s)
	}
}
