package datapath_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// An agent upgrade over pins an older build made: maps whose layout or size changed are
// created anew with their entries carried over, and pinned in place once the new programs run.
func TestMigratePinnedMaps(t *testing.T) {
	testutil.RequirePrivileges(t)
	dir := filepath.Join("/sys/fs/bpf", testutil.UniqueName("sl-migrate-"))
	if err := datapath.EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// What v0.1 pinned: 8-byte frontends, 13 reason counters, and (a flag change) a smaller
	// connection table.
	mk := func(ms *ebpf.MapSpec) *ebpf.Map {
		ms.Pinning = ebpf.PinByName
		m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: dir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	oldFE := mk(&ebpf.MapSpec{Name: "sluice_frontends", Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 65536, Flags: 1})
	oldCT := mk(&ebpf.MapSpec{Name: "sluice_ct", Type: ebpf.LRUHash, KeySize: 16, ValueSize: 32, MaxEntries: 1024})
	oldReasons := mk(&ebpf.MapSpec{Name: "sluice_reasons", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 13})
	// v0.2's service info: a 112-byte name, then node port, protocol, flags, pad, updated.
	oldInfo := mk(&ebpf.MapSpec{Name: "sluice_svc_info", Type: ebpf.Hash, KeySize: 4, ValueSize: 128, MaxEntries: 65536, Flags: 1})
	infoVal := make([]byte, 128)
	copy(infoVal, "default/web:http")
	binary.NativeEndian.PutUint16(infoVal[112:], 30080)
	infoVal[114] = 6
	binary.NativeEndian.PutUint64(infoVal[120:], 12345)
	must(t, oldInfo.Update(uint32(7), infoVal, ebpf.UpdateAny))

	fk := datapath.SluiceFrontendKey{Addr: maps.Addr4(nodeIP), Port: maps.Port16(30080), Proto: 6}
	oldVal := make([]byte, 8)
	binary.NativeEndian.PutUint32(oldVal[0:], 7) // svc_id
	binary.NativeEndian.PutUint16(oldVal[4:], 3) // count
	must(t, oldFE.Update(&fk, oldVal, ebpf.UpdateAny))
	ctVal := datapath.SluiceCtEntry{NatSaddr: 1, NatDaddr: 2, SvcId: 7, BackendId: 9, Flags: 1, LastSeen: 42}
	for i := uint16(0); i < 100; i++ {
		k := datapath.SluiceCtKey{Saddr: 5, Daddr: 6, Sport: i, Dport: 80, Proto: 6}
		must(t, oldCT.Update(&k, &ctVal, ebpf.UpdateAny))
	}
	ncpu, err := ebpf.PossibleCPU()
	must(t, err)
	counters := make([]uint64, ncpu)
	counters[0] = 11
	reason := uint32(datapath.SluiceReasonREASON_DROP_NO_ROUTE)
	must(t, oldReasons.Update(&reason, counters, ebpf.UpdateAny))

	dp, err := datapath.Load(datapath.Config{PinPath: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	mig := dp.Migration
	if mig == nil || len(mig.Maps) != 4 {
		t.Fatalf("migration %+v, want frontends, ct, reasons and service info", mig)
	}
	for _, mm := range mig.Maps {
		if mm.Dropped != 0 || mm.Copied == 0 {
			t.Errorf("%s: copied %d, dropped %d (%s)", mm.Name, mm.Copied, mm.Dropped, mm.Reason)
		}
	}
	km := maps.NewKernel(&dp.Objs.SluiceMaps)
	fe, ok := km.LookupFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30080, Proto: lb.TCP})
	if !ok || fe != (lb.Frontend{ServiceID: 7, Count: 3}) {
		t.Errorf("converted frontend %+v (found %v)", fe, ok)
	}
	infos, err := km.ServiceInfos()
	must(t, err)
	if i := infos[7]; i.Name != "default/web:http" || i.NodePort != 30080 || i.Proto != lb.TCP || i.Updated.UnixNano() != 12345 {
		t.Errorf("converted service info %+v", i)
	}
	r, err := km.Reasons()
	must(t, err)
	if r[datapath.SluiceReasonREASON_DROP_NO_ROUTE] != 11 {
		t.Errorf("reason counter %d, want 11 carried over", r[datapath.SluiceReasonREASON_DROP_NO_ROUTE])
	}

	// Until Commit the old pins stay (the old programs still run on them); a flow the old
	// programs open meanwhile is carried over by Commit.
	late := datapath.SluiceCtKey{Saddr: 5, Daddr: 6, Sport: 999, Dport: 80, Proto: 6}
	must(t, oldCT.Update(&late, &ctVal, ebpf.UpdateAny))
	must(t, mig.Commit())
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sluice_frontends"), nil)
	must(t, err)
	defer pinned.Close()
	if pinned.ValueSize() != 16 {
		t.Errorf("pinned frontends have %d-byte values after Commit, want the new 16", pinned.ValueSize())
	}
	var got datapath.SluiceCtEntry
	must(t, dp.Objs.SluiceCt.Lookup(&late, &got))
	if n := countEntries(t, dp.Objs.SluiceCt); n != 101 {
		t.Errorf("new connection table has %d entries, want 101", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "sluice_frontends_new")); !os.IsNotExist(err) {
		t.Errorf("temporary pin left behind: %v", err)
	}

	// The next start finds everything in this build's layout.
	dp2, err := datapath.Load(datapath.Config{PinPath: dir}, nil)
	must(t, err)
	defer dp2.Close()
	if dp2.Migration != nil {
		t.Errorf("second load migrated again: %+v", dp2.Migration.Maps)
	}
	if n := countEntries(t, dp2.Objs.SluiceCt); n != 101 {
		t.Errorf("reloaded connection table has %d entries", n)
	}
}

func countEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	must(t, it.Err())
	return n
}
