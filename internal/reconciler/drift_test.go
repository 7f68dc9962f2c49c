package reconciler

import (
	"maps"
	"net/netip"
	"testing"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/lb"
	smaps "github.com/sluicelb/sluice/internal/maps"
)

// Entries changed, deleted or added behind the agent are found by Repair and put right by the
// next Apply, which otherwise diffs only against what it believes it wrote.
func TestRepairPutsBackWhatChangedBehindTheAgent(t *testing.T) {
	f := smaps.NewFake()
	r := New(f, 100, 100, zap.NewNop())
	st := state([]netip.Addr{node1}, svc(30080, lb.TCP, be("10.244.1.10", 80), be("10.244.2.10", 80)), svc(30053, lb.UDP, be("10.244.1.10", 53)))
	apply(t, r, st)
	wantFE, wantSlots, wantBE := maps.Clone(f.FrontendMap), maps.Clone(f.SlotMap), maps.Clone(f.BackendMap)

	// Behind the agent: a frontend's count changed, a slot deleted, a backend's port changed,
	// a stray frontend and a stray slot added.
	var fk lb.FrontendKey
	for k := range f.FrontendMap {
		fk = k
		break
	}
	fe := f.FrontendMap[fk]
	fe.Count = 9
	f.FrontendMap[fk] = fe
	var sk smaps.SlotKey
	for k := range f.SlotMap {
		sk = k
		break
	}
	delete(f.SlotMap, sk)
	var bid uint32
	for id := range f.BackendMap {
		bid = id
		break
	}
	b := f.BackendMap[bid]
	b.Port = 1
	f.BackendMap[bid] = b
	f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 31999, Proto: lb.TCP}] = lb.Frontend{ServiceID: 77, Count: 1}
	f.SlotMap[smaps.SlotKey{ServiceID: 77, Slot: 1}] = bid

	n, err := r.Repair()
	if err != nil || n != 5 {
		t.Fatalf("Repair found %d differences (%v), want 5", n, err)
	}
	apply(t, r, st)
	if !maps.Equal(f.FrontendMap, wantFE) || !maps.Equal(f.SlotMap, wantSlots) || !maps.Equal(f.BackendMap, wantBE) {
		t.Errorf("after repair:\nfrontends %v\nwant      %v\nslots %v\nwant  %v\nbackends %v\nwant     %v",
			f.FrontendMap, wantFE, f.SlotMap, wantSlots, f.BackendMap, wantBE)
	}
	// Nothing differs now; the backends' reference counts survived (none pruned, none kept).
	if n, err := r.Repair(); err != nil || n != 0 {
		t.Errorf("second Repair: %d, %v", n, err)
	}
	apply(t, r, state([]netip.Addr{node1}))
	if len(f.BackendMap)+len(f.SlotMap)+len(f.FrontendMap) != 0 {
		t.Errorf("left after removing everything: %v %v %v", f.BackendMap, f.SlotMap, f.FrontendMap)
	}
}
