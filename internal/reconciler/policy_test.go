package reconciler

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maglev"
	"github.com/sluicelb/sluice/internal/maps"
)

var (
	lbIP  = netip.MustParseAddr("203.0.113.10")
	extIP = netip.MustParseAddr("198.51.100.7")
)

func policySvc() *desired.Service {
	s := svc(30080, lb.TCP, be("10.244.1.10", 80), be("10.244.2.10", 80), be("10.244.3.10", 80))
	s.Port = 80
	s.LoadBalancerIPs = []netip.Addr{lbIP}
	s.ExternalIPs = []netip.Addr{extIP}
	return s
}

// lastIndex finds the last write with the prefix.
func lastIndex(t *testing.T, writes []string, prefix string) int {
	t.Helper()
	rev := slices.Clone(writes)
	slices.Reverse(rev)
	return len(writes) - 1 - indexOf(t, rev, prefix)
}

func TestPolicyFrontendsOnEveryAddress(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	s := policySvc()
	s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.89.0.0/24")}
	s.AffinityTimeout = 60
	apply(t, r, state([]netip.Addr{node1}, s))

	want := map[lb.FrontendKey]lb.FrontendFlags{
		{Addr: node1, Port: 30080, Proto: lb.TCP}: lb.FrontendAffinity,
		{Addr: extIP, Port: 80, Proto: lb.TCP}:    lb.FrontendAffinity,
		// Source ranges apply to the load-balancer IP only, as in kube-proxy.
		{Addr: lbIP, Port: 80, Proto: lb.TCP}: lb.FrontendAffinity | lb.FrontendSourceRanges,
	}
	if len(f.FrontendMap) != len(want) {
		t.Fatalf("frontends %v", f.FrontendMap)
	}
	for k, flags := range want {
		fe, ok := f.FrontendMap[k]
		if !ok || fe.Flags != flags || fe.Count != 3 || fe.AffinityTimeout != 60 || fe.SNATAddr != node1 {
			t.Errorf("frontend %s = %+v, want flags %s", k, fe, flags)
		}
	}
	if !f.FrontendPorts[30080] || !f.FrontendPorts[80] {
		t.Errorf("prefilter ports %v: want the NodePort and the service port", f.FrontendPorts)
	}
	if len(f.Affinity) != 3 || len(f.Ranges) != 1 {
		t.Errorf("affinity backends %v, source ranges %v", f.Affinity, f.Ranges)
	}
	w := f.Writes
	first := indexOf(t, w, "frontend ")
	if indexOf(t, w, "affinity backend") > first || indexOf(t, w, "source range") > first {
		t.Errorf("policy entries must exist before a frontend carries the flag: %q", w)
	}

	// The same state again writes nothing.
	n := len(f.Writes)
	apply(t, r, state([]netip.Addr{node1}, s))
	if len(f.Writes) != n {
		t.Errorf("idempotent apply wrote %q", f.Writes[n:])
	}

	// A restarted agent restores all of it, grouping the load-balancer and external IP
	// frontends (on the service port) with their NodePort, and writes nothing either.
	r2 := New(f, 100, 100, zap.NewNop())
	if _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	apply(t, r2, state([]netip.Addr{node1}, s))
	if len(f.Writes) != n {
		t.Errorf("apply after restore wrote %q", f.Writes[n:])
	}

	// Policy off: frontends lose the flags first, then the entries go.
	off := policySvc()
	apply(t, r2, state([]netip.Addr{node1}, off))
	w = f.Writes[n:]
	lastFE := lastIndex(t, w, "frontend ")
	if indexOf(t, w, "delete affinity backend") < lastFE || indexOf(t, w, "delete source range") < lastFE {
		t.Errorf("policy entries must go after the frontends drop the flags: %q", w)
	}
	if len(f.Affinity) != 0 || len(f.Ranges) != 0 {
		t.Errorf("left: affinity backends %v, source ranges %v", f.Affinity, f.Ranges)
	}

	// The service goes: every frontend with it.
	apply(t, r2, state([]netip.Addr{node1}))
	if len(f.FrontendMap) != 0 || len(f.SlotMap) != 0 {
		t.Errorf("left: frontends %v slots %v", f.FrontendMap, f.SlotMap)
	}
}

func TestPolicyAffinityFollowsBackends(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	s := policySvc()
	s.AffinityTimeout = 10800
	apply(t, r, state([]netip.Addr{node1}, s))
	a := r.services[s.Key]
	gone := a.backends[2]

	s2 := policySvc()
	s2.AffinityTimeout = 10800
	s2.Backends = s2.Backends[:2]
	n := len(f.Writes)
	apply(t, r, state([]netip.Addr{node1}, s2))
	if f.Affinity[maps.AffinityMatch{ServiceID: a.id, BackendID: gone}] || len(f.Affinity) != 2 {
		t.Errorf("affinity backends %v: the removed backend must go", f.Affinity)
	}
	w := f.Writes[n:]
	if indexOf(t, w, "delete affinity backend") < lastIndex(t, w, "frontend ") {
		t.Errorf("a removed backend leaves the affinity set after the count shrinks: %q", w)
	}
}

func TestPolicyMaglevTable(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	r.MaglevSize = 251
	s := policySvc()
	s.Maglev = true
	apply(t, r, state([]netip.Addr{node1}, s))
	a := r.services[s.Key]
	table := f.Maglev[a.id]
	if len(table) != 251 {
		t.Fatalf("table of %d entries", len(table))
	}
	// The table names backend IDs, laid out as the maglev package does for these addresses.
	idx, err := maglev.Table([]string{"10.244.1.10:80", "10.244.2.10:80", "10.244.3.10:80"}, nil, 251)
	if err != nil {
		t.Fatal(err)
	}
	for i := range table {
		if table[i] != a.backends[idx[i]] {
			t.Fatalf("entry %d = backend %d, want %d", i, table[i], a.backends[idx[i]])
		}
	}
	if indexOf(t, f.Writes, "maglev table") > indexOf(t, f.Writes, "frontend ") {
		t.Errorf("the table must exist before a frontend carries the flag: %q", f.Writes)
	}
	fe := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30080, Proto: lb.TCP}]
	if fe.Flags != lb.FrontendMaglev {
		t.Errorf("frontend flags %s", fe.Flags)
	}

	// Unchanged backends: no new table. Restored: rewritten once (its content is not read).
	n := len(f.Writes)
	apply(t, r, state([]netip.Addr{node1}, s))
	if len(f.Writes) != n {
		t.Errorf("wrote %q", f.Writes[n:])
	}
	r = New(f, 100, 100, zap.NewNop())
	r.MaglevSize = 251
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	apply(t, r, state([]netip.Addr{node1}, s))
	if got := f.Writes[n:]; len(got) != 1 || got[0] != "maglev table 1 (251 entries)" {
		t.Errorf("after restore wrote %q", got)
	}

	// Back to random: the frontends first, then the table goes.
	n = len(f.Writes)
	apply(t, r, state([]netip.Addr{node1}, policySvc()))
	w := f.Writes[n:]
	if indexOf(t, w, "delete maglev table") < lastIndex(t, w, "frontend ") || len(f.Maglev) != 0 {
		t.Errorf("writes %q, tables left %d", w, len(f.Maglev))
	}
}

func TestPolicyExternalIPConflictKeepsFirst(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	a := policySvc()
	b := svc(30081, lb.TCP, be("10.244.9.9", 80))
	b.Port = 80
	b.ExternalIPs = []netip.Addr{extIP}
	apply(t, r, state([]netip.Addr{node1}, a))
	apply(t, r, state([]netip.Addr{node1}, a, b))
	k := lb.FrontendKey{Addr: extIP, Port: 80, Proto: lb.TCP}
	if got, want := f.FrontendMap[k].ServiceID, r.services[a.Key].id; got != want {
		t.Errorf("%s went to service %d, want the first holder %d", k, got, want)
	}
	// The holder goes: the other service takes the key on the next apply.
	apply(t, r, state([]netip.Addr{node1}, b))
	apply(t, r, state([]netip.Addr{node1}, b))
	if got, want := f.FrontendMap[k].ServiceID, r.services[b.Key].id; got != want {
		t.Errorf("%s = service %d, want %d", k, got, want)
	}
}

// A service that wanted a key its holder lets go takes it in the same apply, also when it
// comes first in order (before, the key stayed unserved until that service changed again).
func TestPolicyReleasedKeyGoesToTheWaitingService(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	holder := svc(30082, lb.TCP, be("10.244.9.9", 80))
	waiter := svc(30081, lb.TCP, be("10.244.9.8", 80))
	holder.Port, waiter.Port = 80, 80
	holder.ExternalIPs = []netip.Addr{extIP}
	apply(t, r, state([]netip.Addr{node1}, holder, waiter))
	w2 := *waiter
	w2.ExternalIPs = []netip.Addr{extIP}
	apply(t, r, state([]netip.Addr{node1}, holder, &w2))
	h2 := *holder
	h2.ExternalIPs = nil
	apply(t, r, state([]netip.Addr{node1}, &h2, &w2))
	k := lb.FrontendKey{Addr: extIP, Port: 80, Proto: lb.TCP}
	if fe, ok := f.FrontendMap[k]; !ok || fe.ServiceID != r.services[waiter.Key].id {
		t.Errorf("%s = %+v (present %v), want service %d", k, fe, ok, r.services[waiter.Key].id)
	}
}

func TestPolicyOrphansDeleted(t *testing.T) {
	f := maps.NewFake()
	f.Affinity[maps.AffinityMatch{ServiceID: 7, BackendID: 1}] = true
	f.Ranges[maps.SourceRange{ServiceID: 7, Prefix: netip.MustParsePrefix("10.0.0.0/8")}] = true
	f.Maglev[7] = make([]uint32, 251)
	r := New(f, 100, 100, zap.NewNop())
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	apply(t, r, state([]netip.Addr{node1}))
	if len(f.Affinity)+len(f.Ranges)+len(f.Maglev) != 0 {
		t.Errorf("leftovers: %v %v %d", f.Affinity, f.Ranges, len(f.Maglev))
	}
}

// A UDP service that drops a backend has that backend's flows flushed, after its frontends stop
// picking it (kube-proxy clears conntrack the same way); TCP flows are left to end.
func TestDroppedUDPBackendsFlowsFlushed(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	udp := svc(30053, lb.UDP, be("10.244.1.10", 53), be("10.244.2.10", 53))
	tcp := svc(30080, lb.TCP, be("10.244.1.10", 80), be("10.244.2.10", 80))
	apply(t, r, state([]netip.Addr{node1}, udp, tcp))
	n := len(f.Writes)

	apply(t, r, state([]netip.Addr{node1}, svc(30053, lb.UDP, be("10.244.1.10", 53)), svc(30080, lb.TCP, be("10.244.1.10", 80))))
	w := f.Writes[n:]
	want := fmt.Sprintf("flush UDP flows of %d/10.244.2.10:53", r.services[udp.Key].id)
	if i := indexOf(t, w, want); i < lastIndex(t, w, "frontend ") {
		t.Errorf("flows flushed before the frontends stopped picking the backend: %q", w)
	}
	for _, x := range w {
		if strings.HasPrefix(x, "flush TCP") {
			t.Errorf("TCP flows flushed: %q", w)
		}
	}
	// The service goes: its remaining backend's flows too.
	n = len(f.Writes)
	apply(t, r, state([]netip.Addr{node1}))
	indexOf(t, f.Writes[n:], "flush UDP flows of")
}

// An endpoint that no longer gets new flows but still serves (it started terminating while
// others are ready; externalTrafficPolicy Local set it aside) keeps its UDP flows, as
// kube-proxy keeps their conntrack entries; when it stops serving they are flushed.
func TestUDPFlowsKeptWhileTheEndpointServes(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	udp := svc(30053, lb.UDP, be("10.244.1.10", 53), be("10.244.2.10", 53))
	udp.Serving = []netip.AddrPort{ap("10.244.1.10:53"), ap("10.244.2.10:53")}
	apply(t, r, state([]netip.Addr{node1}, udp))

	n := len(f.Writes)
	setAside := svc(30053, lb.UDP, be("10.244.1.10", 53))
	setAside.Serving = udp.Serving // 10.244.2.10 still serves
	apply(t, r, state([]netip.Addr{node1}, setAside))
	for _, w := range f.Writes[n:] {
		if strings.HasPrefix(w, "flush") {
			t.Errorf("flows of an endpoint still serving flushed: %q", f.Writes[n:])
		}
	}
	n = len(f.Writes)
	stopped := svc(30053, lb.UDP, be("10.244.1.10", 53))
	stopped.Serving = []netip.AddrPort{ap("10.244.1.10:53")}
	apply(t, r, state([]netip.Addr{node1}, stopped))
	indexOf(t, f.Writes[n:], fmt.Sprintf("flush UDP flows of %d/10.244.2.10:53", r.services[udp.Key].id))
}

func TestPortWithoutNodePortRestored(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	s := &desired.Service{Key: desired.ServiceKey{Proto: lb.TCP, Name: "default/cip:http"}, Name: "default/cip:http", Port: 80,
		ExternalIPs: []netip.Addr{extIP}, Backends: []lb.Backend{be("10.244.1.10", 80)}}
	apply(t, r, state([]netip.Addr{node1}, s))
	if len(f.FrontendMap) != 1 || f.FrontendPorts[0] {
		t.Fatalf("frontends %v, prefilter %v: want the external IP only", f.FrontendMap, f.FrontendPorts)
	}
	n := len(f.Writes)
	r2 := New(f, 100, 100, zap.NewNop())
	if _, err := r2.Restore(); err != nil {
		t.Fatal(err)
	}
	apply(t, r2, state([]netip.Addr{node1}, s))
	if len(f.Writes) != n {
		t.Errorf("apply after restore wrote %q", f.Writes[n:])
	}
}
