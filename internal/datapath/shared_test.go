package datapath_test

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/sluicelb/sluice/internal/datapath"
)

// Loading verifies every program: well under a second here, but seconds each in the qemu
// guests of make test-kernel (TCG), where a load per test made the suite outgrow the guest's
// timeout. Tests that differ only in what they write to the maps therefore share a datapath
// per Config, emptied before it is handed out again, so each test starts from what Load
// gives. A test that needs a second datapath of the same Config while the first is in use
// gets a fresh one.
var shared struct {
	sync.Mutex
	free map[datapath.Config][]*datapath.Datapath
}

// loadShared returns a datapath loaded with cfg and empty maps, taken back when t ends. Its
// programs' attachments are the test's to close; the datapath itself is never closed.
func loadShared(t testing.TB, cfg datapath.Config) *datapath.Datapath {
	t.Helper()
	if cfg.PinPath != "" {
		t.Fatal("loadShared: a pinned datapath cannot be shared")
	}
	shared.Lock()
	var dp *datapath.Datapath
	if l := shared.free[cfg]; len(l) > 0 {
		dp, shared.free[cfg] = l[len(l)-1], l[:len(l)-1]
	}
	shared.Unlock()
	if dp == nil {
		var err error
		if dp, err = datapath.Load(cfg, nil); err != nil {
			t.Fatal(err)
		}
	} else if err := emptyMaps(&dp.Objs.SluiceMaps); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		shared.Lock()
		defer shared.Unlock()
		if shared.free == nil {
			shared.free = map[datapath.Config][]*datapath.Datapath{}
		}
		shared.free[cfg] = append(shared.free[cfg], dp)
	})
	return dp
}

// emptyMaps brings every map back to its state after Load: hashes and tries lose their
// entries, arrays are zeroed (no map of the object has initial values), program arrays are
// emptied (the IPv6 hand-off: LoadIPv6 fills it).
func emptyMaps(objs *datapath.SluiceMaps) error {
	v := reflect.ValueOf(objs).Elem()
	for i := 0; i < v.NumField(); i++ {
		m, ok := v.Field(i).Interface().(*ebpf.Map)
		if !ok || m == nil {
			continue
		}
		if err := emptyMap(m); err != nil {
			return fmt.Errorf("empty map %s: %w", v.Type().Field(i).Name, err)
		}
	}
	return nil
}

func emptyMap(m *ebpf.Map) error {
	key := make([]byte, m.KeySize())
	switch m.Type() {
	case ebpf.Array, ebpf.PerCPUArray:
		return zeroArray(m)
	case ebpf.ProgramArray:
		for i := uint32(0); i < m.MaxEntries(); i++ {
			if err := m.Delete(i); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
	default:
		// Keys first, then deletes: deleting while iterating a hash can restart the walk.
		var keys [][]byte
		it := m.Iterate()
		var val []byte
		if m.Type() == ebpf.HashOfMaps {
			var id ebpf.MapID
			for it.Next(&key, &id) {
				keys = append(keys, append([]byte(nil), key...))
			}
		} else if isPerCPU(m.Type()) {
			var vals [][]byte
			for it.Next(&key, &vals) {
				keys = append(keys, append([]byte(nil), key...))
			}
		} else {
			for it.Next(&key, &val) {
				keys = append(keys, append([]byte(nil), key...))
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
	}
	return nil
}

// zeroArray writes zeros over every element, in batches where the kernel has them (5.6):
// the per-service statistics alone are 65536 elements.
func zeroArray(m *ebpf.Map) error {
	n := int(m.MaxEntries())
	keys := make([]uint32, n)
	for i := range keys {
		keys[i] = uint32(i)
	}
	vals := reflect.SliceOf(reflect.ArrayOf(int(m.ValueSize()), reflect.TypeOf(byte(0))))
	per := 1
	if m.Type() == ebpf.PerCPUArray {
		var err error
		if per, err = ebpf.PossibleCPU(); err != nil {
			return err
		}
	}
	zero := reflect.MakeSlice(vals, n*per, n*per).Interface()
	_, err := m.BatchUpdate(keys, zero, nil)
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	one := reflect.MakeSlice(vals, per, per)
	for i := range keys {
		var v any = one.Interface()
		if per == 1 {
			v = one.Index(0).Interface()
		}
		if err := m.Update(keys[i], v, ebpf.UpdateExist); err != nil {
			return err
		}
	}
	return nil
}

func isPerCPU(t ebpf.MapType) bool {
	return t == ebpf.PerCPUHash || t == ebpf.LRUCPUHash
}
