package reconciler

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

func bigState(n int) desired.State {
	st := desired.State{Addresses: []netip.Addr{node1}, Services: map[desired.ServiceKey]*desired.Service{}}
	for i := 0; i < n; i++ {
		var bs []lb.Backend
		for j := 0; j < 3; j++ {
			bs = append(bs, be(fmt.Sprintf("10.%d.%d.%d", 100+j, i/256, i%256), 80))
		}
		k := desired.ServiceKey{NodePort: uint16(20000 + i), Proto: lb.TCP}
		st.Services[k] = &desired.Service{Key: k, Name: fmt.Sprintf("default/s%d:http", i), Backends: bs}
	}
	return st
}

// A large apply goes through batched writes and leaves the same maps as one at a time.
func TestBatchedApply(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{})
	r := New(k, 1000, 10000, zap.NewNop())
	if err := r.Apply(bigState(400)); err != nil {
		t.Fatal(err)
	}
	fes, _ := k.Frontends()
	slots, _ := k.Slots()
	bes, _ := k.Backends()
	if len(fes) != 400 || len(slots) != 1200 || len(bes) != 1200 {
		t.Fatalf("frontends %d slots %d backends %d", len(fes), len(slots), len(bes))
	}
	fe, ok := k.LookupFrontend(lb.FrontendKey{Addr: node1, Port: 20007, Proto: lb.TCP})
	b, ok2 := k.LookupSlotBackend(maps.SlotKey{ServiceID: fe.ServiceID, Slot: 3})
	if !ok || !ok2 || fe.Count != 3 || b.Addr != netip.MustParseAddr("10.102.0.7") {
		t.Errorf("service 7: %+v %+v", fe, b)
	}
	// A restarted agent restores it and writes nothing.
	r2 := New(k, 1000, 10000, zap.NewNop())
	if n, err := r2.Restore(); err != nil || n != 400 {
		t.Fatalf("restore: %d %v", n, err)
	}
	if err := r2.Apply(bigState(400)); err != nil {
		t.Fatal(err)
	}
}

// When a batch does not fit, the services that do are applied and the others named.
func TestBatchedApplyFullMap(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{MaxFrontends: 300})
	r := New(k, 1000, 10000, zap.NewNop())
	err := r.Apply(bigState(400))
	if failed := FailedKeys(err); len(failed) != 100 {
		t.Fatalf("%d services reported failed, want 100: %v", len(failed), err)
	}
	if fes, _ := k.Frontends(); len(fes) != 300 {
		t.Errorf("%d frontends, want 300", len(fes))
	}
}

// 100k services with 10 backends each (1M backends) fit maps sized for them and load in one
// batched apply.
func TestScale100kServices1MBackends(t *testing.T) {
	const services, per = 100000, 10
	k := testutil.KernelMaps(t, datapath.Config{MaxServices: 131072, MaxFrontends: 131072,
		MaxBackends: 1<<20 + 1<<16, MaxSlots: 1<<20 + 1<<16})
	st := desired.State{Addresses: []netip.Addr{node1}, Services: make(map[desired.ServiceKey]*desired.Service, services)}
	for i := 0; i < services; i++ {
		bs := make([]lb.Backend, per)
		for j := range bs {
			n := i*per + j
			bs[j] = lb.Backend{Addr: netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), Port: 8080}
		}
		proto := lb.TCP
		if i >= 50000 {
			proto = lb.UDP
		}
		k := desired.ServiceKey{NodePort: uint16(10000 + i%50000), Proto: proto}
		st.Services[k] = &desired.Service{Key: k, Name: fmt.Sprintf("default/s%d:p", i), Backends: bs}
	}
	r := New(k, 131072, 1<<20+1<<16, zap.NewNop())
	start := time.Now()
	if err := r.Apply(st); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	fill, err := k.Fill()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, f := range fill {
		got[f.Name] = f.Entries
	}
	if got["sluice_frontends"] != services || got["sluice_backends"] != services*per || got["sluice_slots"] != services*per {
		t.Errorf("maps hold %v", got)
	}
	t.Logf("applied %d services and %d backends in %v", services, services*per, took)
}

// After a failed batch is recovered from, every frontend names slots that exist: the
// restore's leftovers are not deleted from under services that took their IDs again.
func TestBatchedRecoveryKeepsEveryPublishedSlot(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{MaxSlots: 900})
	r := New(k, 1000, 10000, zap.NewNop())
	err := r.Apply(bigState(400))
	if len(FailedKeys(err)) == 0 {
		t.Fatalf("want some services not to fit: %v", err)
	}
	fes, _ := k.Frontends()
	slots, _ := k.Slots()
	bes, _ := k.Backends()
	for fk, fe := range fes {
		for s := uint32(1); s <= uint32(fe.Count); s++ {
			id, ok := slots[maps.SlotKey{ServiceID: fe.ServiceID, Slot: s}]
			if _, okb := bes[id]; !ok || !okb {
				t.Fatalf("frontend %s (svc %d, count %d): slot %d missing or names no backend", fk, fe.ServiceID, fe.Count, s)
			}
		}
	}
	t.Logf("%d services published, %d reported", len(fes), len(FailedKeys(err)))
}
