package maps_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// What the reconciler writes is what it reads back when it restores.
func TestKernelRoundTrip(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{})
	fk := lb.FrontendKey{Addr: netip.MustParseAddr("10.89.0.11"), Port: 30080, Proto: lb.TCP}
	fe := lb.Frontend{ServiceID: 7, Count: 2}
	be := lb.Backend{Addr: netip.MustParseAddr("10.244.1.10"), Port: 8080, Local: true}
	sk := maps.SlotKey{ServiceID: 7, Slot: 2}
	for _, err := range []error{k.UpdateFrontend(fk, fe), k.UpdateBackend(3, be), k.UpdateSlot(sk, 3), k.ResetServiceStats(7)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	fes, err := k.Frontends()
	if err != nil || len(fes) != 1 || fes[fk] != fe {
		t.Errorf("frontends %v %v", fes, err)
	}
	bes, err := k.Backends()
	if err != nil || len(bes) != 1 || bes[3] != be {
		t.Errorf("backends %v %v", bes, err)
	}
	slots, err := k.Slots()
	if err != nil || len(slots) != 1 || slots[sk] != 3 {
		t.Errorf("slots %v %v", slots, err)
	}
	if s, err := k.ServiceStats(7); err != nil || s != (maps.ServiceStats{}) {
		t.Errorf("stats %v %v", s, err)
	}
	// Deletes are idempotent.
	for i := 0; i < 2; i++ {
		if err := errors.Join(k.DeleteFrontend(fk), k.DeleteSlot(sk), k.DeleteBackend(3)); err != nil {
			t.Fatal(err)
		}
	}
	if fes, _ := k.Frontends(); len(fes) != 0 {
		t.Errorf("left: %v", fes)
	}
}

// A full map is reported as ErrFull, naming the entry, not silently dropped.
func TestKernelFullMap(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{MaxFrontends: 2})
	for p := uint16(30000); p < 30002; p++ {
		if err := k.UpdateFrontend(lb.FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: p, Proto: lb.TCP}, lb.Frontend{ServiceID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	err := k.UpdateFrontend(lb.FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30002, Proto: lb.TCP}, lb.Frontend{ServiceID: 1})
	if !errors.Is(err, maps.ErrFull) {
		t.Fatalf("third frontend: %v, want ErrFull", err)
	}
	t.Log(err)
}

// Service names up to Kubernetes' limits (a 63-character namespace and name, a 15-character
// port name: 143 bytes) are kept whole: two that differ only at the end are two names (cut
// to the map's old 112 bytes they were one, and /metrics answered 500 on the duplicate label).
func TestKernelKeepsLongServiceNames(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{})
	long := func(last string) string {
		return strings.Repeat("n", 63) + "/" + strings.Repeat("s", 62) + last + ":" + strings.Repeat("p", 15)
	}
	a, b := long("a"), long("b")
	if len(a) != 143 {
		t.Fatalf("test name is %d bytes", len(a))
	}
	for id, name := range map[uint32]string{1: a, 2: b} {
		if err := k.UpdateServiceInfo(id, maps.ServiceInfo{Name: name, Proto: lb.TCP}); err != nil {
			t.Fatal(err)
		}
	}
	infos, err := k.ServiceInfos()
	if err != nil {
		t.Fatal(err)
	}
	if infos[1].Name != a || infos[2].Name != b {
		t.Errorf("names read back as %q and %q", infos[1].Name, infos[2].Name)
	}
	// Longer than any valid name: refused, not cut.
	if err := k.UpdateServiceInfo(3, maps.ServiceInfo{Name: a + "x"}); err == nil {
		t.Error("a 144-byte name was accepted")
	}
}

// The service info and frontend keys carry what tells one service port's entries apart: the
// scope in the info's flags, the socket entry in the key's scope byte.
func TestKernelKeepsScopes(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{})
	for scope := uint8(0); scope < 3; scope++ {
		info := maps.ServiceInfo{Name: "default/web:http", Proto: lb.TCP, Scope: scope, ExternalLocal: scope == 0}
		if err := k.UpdateServiceInfo(uint32(scope+1), info); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.UpdateServiceInfo(9, maps.ServiceInfo{Name: "x", Scope: 4}); err == nil {
		t.Error("a scope the flags cannot hold was accepted")
	}
	infos, err := k.ServiceInfos()
	if err != nil {
		t.Fatal(err)
	}
	for scope := uint8(0); scope < 3; scope++ {
		if got := infos[uint32(scope+1)]; got.Scope != scope || got.ExternalLocal != (scope == 0) {
			t.Errorf("info %d read back as %+v", scope+1, got)
		}
	}
	addr := netip.MustParseAddr("10.89.0.11")
	pkt, sock := lb.FrontendKey{Addr: addr, Port: 30080, Proto: lb.TCP}, lb.FrontendKey{Addr: addr, Port: 30080, Proto: lb.TCP, Socket: true}
	if err := k.UpdateFrontend(pkt, lb.Frontend{ServiceID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := k.UpdateFrontend(sock, lb.Frontend{ServiceID: 2}); err != nil {
		t.Fatal(err)
	}
	fes, err := k.Frontends()
	if err != nil {
		t.Fatal(err)
	}
	if len(fes) != 2 || fes[pkt].ServiceID != 1 || fes[sock].ServiceID != 2 {
		t.Errorf("frontends read back as %v", fes)
	}
}
