package reconciler

import (
	"net/netip"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// One service port's three scopes share a name and a NodePort: each gets its own ID and
// frontends (the node scope's marked for the socket hooks), and a restarted agent tells them
// apart and rewrites nothing.
func TestScopesAppliedAndRestored(t *testing.T) {
	f := maps.NewFake()
	old := New(f, 100, 100, zap.NewNop())
	cip := netip.MustParseAddr("10.96.0.11")
	remote := be("10.244.2.10", 8080)
	local := be("10.244.1.10", 8080)
	local.Local = true
	ext := &desired.Service{Key: desired.ServiceKey{NodePort: 30081, Proto: lb.TCP}, Name: "default/web:http", Port: 80,
		ExternalLocal: true, DropEmpty: true}
	node := &desired.Service{Key: desired.ServiceKey{NodePort: 30081, Proto: lb.TCP, Scope: desired.ScopeNode}, Name: "default/web:http", Port: 80,
		Backends: []lb.Backend{local, remote}}
	internal := &desired.Service{Key: desired.ServiceKey{Proto: lb.TCP, Name: "default/web:http", Scope: desired.ScopeInternal}, Name: "default/web:http",
		Port: 80, ClusterIPs: []netip.Addr{cip}, Backends: []lb.Backend{local, remote}}
	st := state([]netip.Addr{node1}, ext, node, internal)
	apply(t, old, st)

	pkt := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30081, Proto: lb.TCP}]
	sock := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30081, Proto: lb.TCP, Socket: true}]
	clusterIP := f.FrontendMap[lb.FrontendKey{Addr: cip, Port: 80, Proto: lb.TCP}]
	if pkt.Count != 0 || pkt.Flags&lb.FrontendDropEmpty == 0 || sock.Count != 2 || clusterIP.Count != 2 {
		t.Fatalf("frontends: packets %+v, socket %+v, ClusterIP %+v", pkt, sock, clusterIP)
	}
	if pkt.ServiceID == sock.ServiceID || sock.ServiceID == clusterIP.ServiceID || pkt.ServiceID == clusterIP.ServiceID {
		t.Errorf("scopes share IDs: %d %d %d", pkt.ServiceID, sock.ServiceID, clusterIP.ServiceID)
	}
	if !f.FrontendPorts[30081] || !f.FrontendPorts[80] {
		t.Errorf("prefilter frontend ports %v: want the NodePort and the ClusterIP's port", f.FrontendPorts)
	}

	r := New(f, 100, 100, zap.NewNop())
	if n, err := r.Restore(); err != nil || n != 3 {
		t.Fatalf("restore: %d services, %v", n, err)
	}
	f.Writes = nil
	apply(t, r, st)
	for _, w := range f.Writes {
		if !strings.HasPrefix(w, "delete") {
			t.Errorf("restored state rewritten: %q", w)
		}
	}
	for _, s := range []*desired.Service{ext, node, internal} {
		if _, ok := r.ServiceID(s.Key); !ok {
			t.Errorf("%s not restored", s.Key)
		}
	}
	if len(f.FrontendMap) != 3 {
		t.Errorf("frontends after restore: %v", f.FrontendMap)
	}
}
