package reconciler

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

var (
	node1 = netip.MustParseAddr("10.89.0.11")
	node2 = netip.MustParseAddr("192.168.7.11")
)

func be(addr string, port uint16) lb.Backend {
	return lb.Backend{Addr: netip.MustParseAddr(addr), Port: port}
}

func state(addrs []netip.Addr, svcs ...*desired.Service) desired.State {
	st := desired.State{Addresses: addrs, Services: map[desired.ServiceKey]*desired.Service{}}
	for _, s := range svcs {
		st.Services[s.Key] = s
	}
	return st
}

func svc(port uint16, proto lb.Proto, backends ...lb.Backend) *desired.Service {
	return &desired.Service{Key: desired.ServiceKey{NodePort: port, Proto: proto}, Name: "default/svc" + string(rune('a'+port%26)), Backends: backends}
}

func apply(t *testing.T, r *Reconciler, st desired.State) {
	t.Helper()
	if err := r.Apply(st); err != nil {
		t.Fatal(err)
	}
}

// indexOf finds the first write with the prefix.
func indexOf(t *testing.T, writes []string, prefix string) int {
	t.Helper()
	for i, w := range writes {
		if strings.HasPrefix(w, prefix) {
			return i
		}
	}
	t.Fatalf("no write %q in %q", prefix, writes)
	return -1
}

func TestApplyOrdersWritesAndIsIdempotent(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	local := be("10.244.1.10", 80)
	local.Local = true
	st := state([]netip.Addr{node1, node2}, svc(30080, lb.TCP, local, be("10.244.2.10", 8080)))
	apply(t, r, st)
	if !f.BackendPorts[80] || !f.BackendPorts[8080] {
		t.Errorf("prefilter backend ports %v: want the local and the remote backend's", f.BackendPorts)
	}

	w := f.Writes
	if indexOf(t, w, "backend") > indexOf(t, w, "slot") || indexOf(t, w, "slot") > indexOf(t, w, "frontend") {
		t.Errorf("want backends, then slots, then frontends: %q", w)
	}
	if len(f.FrontendMap) != 2 || len(f.SlotMap) != 2 || len(f.BackendMap) != 2 {
		t.Fatalf("maps: %v %v %v", f.FrontendMap, f.SlotMap, f.BackendMap)
	}
	if indexOf(t, w, "prefilter frontend port 30080") > indexOf(t, w, "frontend ") {
		t.Errorf("the prefilter must pass the port before the frontend exists: %q", w)
	}
	fe := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30080, Proto: lb.TCP}]
	if fe.Count != 2 || fe.ServiceID == 0 {
		t.Errorf("frontend %+v", fe)
	}

	f.Writes = nil
	apply(t, r, st)
	if len(f.Writes) != 0 {
		t.Errorf("second apply of the same state wrote %q", f.Writes)
	}
}

func TestScaleDownShrinksCountBeforeDeletingSlots(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	apply(t, r, state([]netip.Addr{node1}, svc(30080, lb.TCP, be("10.244.1.10", 80), be("10.244.2.10", 80), be("10.244.3.10", 80))))
	f.Writes = nil
	apply(t, r, state([]netip.Addr{node1}, svc(30080, lb.TCP, be("10.244.2.10", 80))))

	w := f.Writes
	if indexOf(t, w, "frontend") > indexOf(t, w, "delete slot") {
		t.Errorf("count must shrink before slots go: %q", w)
	}
	if len(f.SlotMap) != 1 || len(f.BackendMap) != 1 {
		t.Errorf("slots %v backends %v", f.SlotMap, f.BackendMap)
	}
	for _, id := range f.SlotMap {
		if f.BackendMap[id] != be("10.244.2.10", 80) {
			t.Errorf("slot names %v", f.BackendMap[id])
		}
	}
}

func TestRemoveServiceDeletesFrontendsFirstAndPrunes(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	keep := svc(30081, lb.UDP, be("10.244.1.10", 53))
	apply(t, r, state([]netip.Addr{node1}, svc(30080, lb.TCP, be("10.244.1.10", 80)), keep))
	f.Writes = nil
	apply(t, r, state([]netip.Addr{node1}, keep))

	w := f.Writes
	if indexOf(t, w, "delete frontend") > indexOf(t, w, "delete slot") || indexOf(t, w, "delete slot") > indexOf(t, w, "delete backend") {
		t.Errorf("want frontends, slots, then backends deleted: %q", w)
	}
	if len(f.FrontendMap) != 1 || len(f.SlotMap) != 1 || len(f.BackendMap) != 1 {
		t.Errorf("left: %v %v %v", f.FrontendMap, f.SlotMap, f.BackendMap)
	}
}

func TestNoEndpointsKeepsFrontendWithZeroCount(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	apply(t, r, state([]netip.Addr{node1}, svc(30090, lb.TCP)))
	fe, ok := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30090, Proto: lb.TCP}]
	if !ok || fe.Count != 0 {
		t.Fatalf("a service without endpoints needs a frontend with count 0 (to reject): %v %v", fe, ok)
	}
}

func TestAddressesFollowTheNode(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	s := svc(30080, lb.TCP, be("10.244.1.10", 80))
	apply(t, r, state([]netip.Addr{node1}, s))
	apply(t, r, state([]netip.Addr{node2}, s))
	if _, ok := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30080, Proto: lb.TCP}]; ok {
		t.Error("frontend on the old address is left")
	}
	if _, ok := f.FrontendMap[lb.FrontendKey{Addr: node2, Port: 30080, Proto: lb.TCP}]; !ok {
		t.Error("no frontend on the new address")
	}
}

func TestRestoreWritesNothingForUnchangedStateAndPrunesLeftovers(t *testing.T) {
	f := maps.NewFake()
	old := New(f, 100, 100, zap.NewNop())
	a := svc(30080, lb.TCP, be("10.244.1.10", 80), be("10.244.2.10", 80))
	gone := svc(30085, lb.TCP, be("10.244.9.9", 80))
	apply(t, old, state([]netip.Addr{node1}, a, gone))
	// A stray slot from a crashed agent.
	if err := f.UpdateSlot(maps.SlotKey{ServiceID: 77, Slot: 1}, 1); err != nil {
		t.Fatal(err)
	}

	r := New(f, 100, 100, zap.NewNop())
	n, err := r.Restore()
	if err != nil || n != 2 {
		t.Fatalf("restore: %d services, %v", n, err)
	}
	f.Writes = nil
	apply(t, r, state([]netip.Addr{node1}, a))
	for _, w := range f.Writes {
		if !strings.HasPrefix(w, "delete") {
			t.Errorf("restored state rewritten: %q", w)
		}
	}
	if len(f.FrontendMap) != 1 || len(f.SlotMap) != 2 || len(f.BackendMap) != 2 {
		t.Errorf("after prune: %v %v %v", f.FrontendMap, f.SlotMap, f.BackendMap)
	}
	if id, _ := r.ServiceID(a.Key); id != f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30080, Proto: lb.TCP}].ServiceID {
		t.Error("service ID changed across restore")
	}
}

func TestFullMapReportsServiceAndKeepsOthers(t *testing.T) {
	f := maps.NewFake()
	f.MaxBackends = 2
	r := New(f, 100, 100, zap.NewNop())
	big := svc(30082, lb.TCP, be("10.244.1.1", 80), be("10.244.1.2", 80), be("10.244.1.3", 80))
	big.Name = "default/big:http"
	small := svc(30080, lb.TCP, be("10.244.2.1", 80))
	err := r.Apply(state([]netip.Addr{node1}, small, big))
	if err == nil || !errors.Is(err, maps.ErrFull) || !strings.Contains(err.Error(), "default/big:http") {
		t.Fatalf("want a full-map error naming the service, got %v", err)
	}
	if _, ok := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30080, Proto: lb.TCP}]; !ok {
		t.Error("the service that fits was not applied")
	}
	if _, ok := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30082, Proto: lb.TCP}]; ok {
		t.Error("the service that does not fit got a frontend (half-written)")
	}
	// Room again: the next apply completes it.
	f.MaxBackends = 0
	apply(t, r, state([]netip.Addr{node1}, small, big))
	if fe := f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30082, Proto: lb.TCP}]; fe.Count != 3 {
		t.Errorf("after retry: %+v", fe)
	}
}

func TestServiceIDsAreReused(t *testing.T) {
	f := maps.NewFake()
	r := New(f, 3, 100, zap.NewNop()) // IDs 1 and 2 only
	apply(t, r, state([]netip.Addr{node1}, svc(30080, lb.TCP), svc(30081, lb.TCP)))
	if err := r.Apply(state([]netip.Addr{node1}, svc(30080, lb.TCP), svc(30081, lb.TCP), svc(30082, lb.TCP))); !errors.Is(err, maps.ErrFull) {
		t.Fatalf("third service: %v", err)
	}
	apply(t, r, state([]netip.Addr{node1}, svc(30082, lb.TCP)))
	ids := []uint32{}
	for _, fe := range f.FrontendMap {
		ids = append(ids, fe.ServiceID)
	}
	if len(ids) != 1 || !slices.Contains([]uint32{1, 2}, ids[0]) {
		t.Errorf("ids %v", ids)
	}
}

// A crash mid-publish leaves a service's frontends disagreeing on the count: after a restore
// they are all rewritten, and removing the service removes every one.
func TestRestoreRepairsDisagreeingFrontends(t *testing.T) {
	f := maps.NewFake()
	a := svc(30080, lb.TCP, be("10.244.1.10", 80), be("10.244.2.10", 80))
	apply(t, New(f, 100, 100, zap.NewNop()), state([]netip.Addr{node1, node2}, a))
	k2 := lb.FrontendKey{Addr: node2, Port: 30080, Proto: lb.TCP}
	fe := f.FrontendMap[k2]
	fe.Count = 1 // as if the crash hit between the two frontend writes
	f.FrontendMap[k2] = fe

	r := New(f, 100, 100, zap.NewNop())
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	apply(t, r, state([]netip.Addr{node1, node2}, a))
	if got := f.FrontendMap[k2].Count; got != 2 {
		t.Errorf("stale frontend not rewritten: count %d", got)
	}
	apply(t, r, state([]netip.Addr{node1, node2}))
	if len(f.FrontendMap) != 0 {
		t.Errorf("frontends left after the service went: %v", f.FrontendMap)
	}
}
