package maps_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// IPv6 entries go to the IPv6 object's maps and come back from the same dumps as IPv4's, one
// by one and batched; without the IPv6 maps they are refused, never written into IPv4's.
func TestKernelIPv6RoundTrip(t *testing.T) {
	testutil.RequirePrivileges(t)
	dp, err := datapath.Load(datapath.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })

	fk6 := lb.FrontendKey{Addr: netip.MustParseAddr("fd00::1"), Port: 30080, Proto: lb.TCP}
	be6 := lb.Backend{Addr: netip.MustParseAddr("fd00:244::10"), Port: 8080, Local: true}
	k := maps.NewKernel(&dp.Objs.SluiceMaps)
	if err := k.UpdateFrontend(fk6, lb.Frontend{ServiceID: 9}); !errors.Is(err, maps.ErrNoIPv6) {
		t.Fatalf("IPv6 frontend without the IPv6 maps: %v, want ErrNoIPv6", err)
	}
	if err := k.UpdateBackend(4, be6); !errors.Is(err, maps.ErrNoIPv6) {
		t.Fatalf("IPv6 backend without the IPv6 maps: %v, want ErrNoIPv6", err)
	}

	v6, err := dp.LoadIPv6()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v6.Close() })
	k.WithIPv6(&v6.Objs.Sluice6Maps)
	fk4 := lb.FrontendKey{Addr: netip.MustParseAddr("10.89.0.11"), Port: 30080, Proto: lb.TCP}
	be4 := lb.Backend{Addr: netip.MustParseAddr("10.244.1.10"), Port: 8080}
	fe6 := lb.Frontend{ServiceID: 9, Count: 1, SNATAddr: netip.MustParseAddr("fd00::1")}
	for _, batched := range []bool{false, true} {
		if batched {
			k.Begin()
		}
		for _, err := range []error{k.UpdateFrontend(fk4, lb.Frontend{ServiceID: 7, Count: 1}), k.UpdateBackend(3, be4),
			k.UpdateSlot(maps.SlotKey{ServiceID: 7, Slot: 1}, 3), k.UpdateFrontend(fk6, fe6), k.UpdateBackend(4, be6),
			k.UpdateSlot(maps.SlotKey{ServiceID: 9, Slot: 1}, 4), k.Flush()} {
			if err != nil {
				t.Fatal(err)
			}
		}
		fes, err := k.Frontends()
		if err != nil || len(fes) != 2 || fes[fk6] != fe6 {
			t.Fatalf("batched=%v: frontends %v %v", batched, fes, err)
		}
		bes, err := k.Backends()
		if err != nil || len(bes) != 2 || bes[4] != be6 || bes[3] != be4 {
			t.Fatalf("batched=%v: backends %v %v", batched, bes, err)
		}
		if got, ok := k.LookupFrontend(fk6); !ok || got != fe6 {
			t.Errorf("batched=%v: lookup %v %v", batched, got, ok)
		}
		if got, ok := k.LookupSlotBackend(maps.SlotKey{ServiceID: 9, Slot: 1}); !ok || got != be6 {
			t.Errorf("batched=%v: slot's backend %v %v", batched, got, ok)
		}
		for _, err := range []error{k.DeleteFrontend(fk6), k.DeleteBackend(4), k.DeleteFrontend(fk4), k.DeleteBackend(3)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		if fes, _ := k.Frontends(); len(fes) != 0 {
			t.Fatalf("left: %v", fes)
		}
	}
}

// loadBalancerSourceRanges of either family, in their family's trie.
func TestKernelIPv6SourceRanges(t *testing.T) {
	testutil.RequirePrivileges(t)
	dp, err := datapath.Load(datapath.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	k := maps.NewKernel(&dp.Objs.SluiceMaps)
	r6 := maps.SourceRange{ServiceID: 9, Prefix: netip.MustParsePrefix("2001:db8::/32")}
	if err := k.UpdateSourceRange(r6); !errors.Is(err, maps.ErrNoIPv6) {
		t.Fatalf("IPv6 range without the IPv6 maps: %v, want ErrNoIPv6", err)
	}
	v6, err := dp.LoadIPv6()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v6.Close() })
	k.WithIPv6(&v6.Objs.Sluice6Maps)
	r4 := maps.SourceRange{ServiceID: 7, Prefix: netip.MustParsePrefix("10.0.0.0/8")}
	if err := errors.Join(k.UpdateSourceRange(r4), k.UpdateSourceRange(r6)); err != nil {
		t.Fatal(err)
	}
	got, err := k.SourceRanges()
	if err != nil || len(got) != 2 || !got[r4] || !got[r6] {
		t.Fatalf("source ranges %v %v", got, err)
	}
	if err := errors.Join(k.DeleteSourceRange(r4), k.DeleteSourceRange(r6)); err != nil {
		t.Fatal(err)
	}
	if got, _ := k.SourceRanges(); len(got) != 0 {
		t.Fatalf("left: %v", got)
	}
}

// A service ID's family is in its info, so a restarted agent keys each side of a dual-stack
// port apart; an endpoint's IPv6 UDP flows are flushed from the IPv6 connection table.
func TestKernelIPv6InfoAndFlush(t *testing.T) {
	testutil.RequirePrivileges(t)
	dp, err := datapath.Load(datapath.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	v6, err := dp.LoadIPv6()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v6.Close() })
	k := maps.NewKernel(&dp.Objs.SluiceMaps).WithIPv6(&v6.Objs.Sluice6Maps)
	i4 := maps.ServiceInfo{Name: "default/web:dns", NodePort: 30053, Proto: lb.UDP, Scope: 1}
	i6 := i4
	i6.Family = lb.IPv6
	if err := errors.Join(k.UpdateServiceInfo(1, i4), k.UpdateServiceInfo(2, i6)); err != nil {
		t.Fatal(err)
	}
	infos, err := k.ServiceInfos()
	if err != nil || infos[1].Family != lb.IPv4 || infos[2].Family != lb.IPv6 || infos[2].Scope != 1 {
		t.Fatalf("infos %+v %v", infos, err)
	}

	a := func(s string) datapath.Sluice6AddrT { return maps.Addr6(netip.MustParseAddr(s)) }
	gone := netip.MustParseAddrPort("[fd00:244::10]:5353")
	fwd := datapath.Sluice6CtKey{Saddr: a("2001:db8::5"), Daddr: a("fd00::1"), Sport: maps.Port16(40000), Dport: maps.Port16(30053), Proto: uint8(lb.UDP)}
	fwdV := datapath.Sluice6CtEntry{NatSaddr: a("2001:db8::5"), NatDaddr: a("fd00:244::10"), NatDport: maps.Port16(5353), SvcId: 2}
	rev := datapath.Sluice6CtKey{Saddr: a("fd00:244::10"), Daddr: a("2001:db8::5"), Sport: maps.Port16(5353), Dport: maps.Port16(40000), Proto: uint8(lb.UDP)}
	revV := datapath.Sluice6CtEntry{SvcId: 2, Flags: maps.CTReply}
	other := datapath.Sluice6CtKey{Saddr: a("2001:db8::6"), Daddr: a("fd00::1"), Sport: maps.Port16(40001), Dport: maps.Port16(30053), Proto: uint8(lb.UDP)}
	otherV := datapath.Sluice6CtEntry{NatDaddr: a("fd00:244::11"), NatDport: maps.Port16(5353), SvcId: 2}
	for _, e := range []struct {
		k datapath.Sluice6CtKey
		v datapath.Sluice6CtEntry
	}{{fwd, fwdV}, {rev, revV}, {other, otherV}} {
		if err := v6.Objs.SluiceCt6.Put(&e.k, &e.v); err != nil {
			t.Fatal(err)
		}
	}
	n, err := k.FlushFlows(lb.UDP, map[maps.FlowTarget]bool{{ServiceID: 2, Backend: gone}: true})
	if err != nil || n != 2 {
		t.Fatalf("flushed %d %v, want both entries of the flow", n, err)
	}
	var v datapath.Sluice6CtEntry
	if err := v6.Objs.SluiceCt6.Lookup(&other, &v); err != nil {
		t.Errorf("another endpoint's flow went: %v", err)
	}
}
