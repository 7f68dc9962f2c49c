package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
)

// A newer build may change a map's layout (a field added to a value) or its size (a flag).
// Such a pinned map cannot be reused, and refusing to start would leave the node on the old
// build; deleting it would cut every flow. Instead Load creates the map anew, unpinned, and
// copies the old one's entries into it, converting them where the layout changed. The agent
// then swaps its programs in (bpf_link update: the old programs run on the old maps until that
// instant) and calls Commit, which copies the flows the old programs opened meanwhile and pins
// the new maps in the old ones' place.

// converter turns an entry of an older layout into this build's, or reports false to drop it.
type converter func(key, value []byte) ([]byte, []byte, bool)

// layoutChanges are the conversions this build knows, by map name and the older layout's key
// and value sizes.
var layoutChanges = map[string]map[[2]uint32]converter{
	// v0.1 -> v0.2: struct frontend gained affinity_timeout_s and pad after flags (8 -> 16
	// bytes); the old flags were always 0, so the zeroed tail is the old behaviour.
	SluiceMapSluiceFrontends: {{8, 8}: zeroExtend(16)},
	// v0.2 -> v0.3: struct svc_info's name grew from 112 to 144 bytes (128 -> 160): the name
	// keeps its bytes, the fields after it move along.
	SluiceMapSluiceSvcInfo: {{4, 128}: widenAt(112, 32)},
}

// widenAt inserts grow zero bytes into a value at offset at.
func widenAt(at, grow int) converter {
	return func(k, v []byte) ([]byte, []byte, bool) {
		if len(v) < at {
			return nil, nil, false
		}
		out := make([]byte, len(v)+grow)
		copy(out, v[:at])
		copy(out[at+grow:], v[at:])
		return k, out, true
	}
}

func zeroExtend(valueSize int) converter {
	return func(k, v []byte) ([]byte, []byte, bool) {
		out := make([]byte, valueSize)
		copy(out, v)
		return k, out, true
	}
}

// stateful maps are written by the datapath: Commit copies them again after the swap, for what
// the old programs wrote in between.
var stateful = map[string]bool{SluiceMapSluiceCt: true, SluiceMapSluiceAffinity: true}

// Migration is what Load did to pinned maps this build could not reuse as they are.
type Migration struct {
	Maps []MapMigration

	pinPath string
	old     map[string]*ebpf.Map
	fresh   map[string]*ebpf.Map
}

// MapMigration is one map carried over.
type MapMigration struct {
	Name string
	// Why the pinned map could not be reused (cilium/ebpf's description of the difference).
	Reason string
	// Copied entries, and those that could not be (no conversion known, or no room).
	Copied, Dropped int
}

// prepareMigration opens the pinned maps and, for those spec cannot reuse, unpins them in spec
// so that the load creates new ones. It returns nil if every pinned map fits.
func prepareMigration(spec *ebpf.CollectionSpec, pinPath string) (*Migration, error) {
	mig := &Migration{pinPath: pinPath, old: map[string]*ebpf.Map{}, fresh: map[string]*ebpf.Map{}}
	names := make([]string, 0, len(spec.Maps))
	for name := range spec.Maps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ms := spec.Maps[name]
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			mig.close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		cerr := ms.Compatible(m)
		if cerr == nil {
			m.Close()
			continue
		}
		if !errors.Is(cerr, ebpf.ErrMapIncompatible) {
			m.Close()
			mig.close()
			return nil, fmt.Errorf("check pinned map %s: %w", name, cerr)
		}
		mig.old[name] = m
		mig.Maps = append(mig.Maps, MapMigration{Name: name, Reason: cerr.Error()})
		ms.Pinning = ebpf.PinNone
	}
	if len(mig.old) == 0 {
		return nil, nil
	}
	return mig, nil
}

// copyAll copies every migrated map's entries from the old maps into the new ones.
func (mig *Migration) copyAll(objs *SluiceMaps) error {
	live := objs.byName()
	for i := range mig.Maps {
		mm := &mig.Maps[i]
		mig.fresh[mm.Name] = live[mm.Name]
		c, d, err := copyMap(mm.Name, mig.old[mm.Name], live[mm.Name], ebpf.UpdateAny)
		if err != nil {
			return fmt.Errorf("migrate map %s: %w", mm.Name, err)
		}
		mm.Copied, mm.Dropped = c, d
	}
	return nil
}

// Commit runs once the new programs are attached: it copies again what the old programs wrote
// since Load (flows opened in between; an entry already in the new map is newer and kept), pins
// the new maps over the old pins and closes the old maps.
func (mig *Migration) Commit() error {
	var errs []error
	for i := range mig.Maps {
		mm := &mig.Maps[i]
		if stateful[mm.Name] {
			c, d, err := copyMap(mm.Name, mig.old[mm.Name], mig.fresh[mm.Name], ebpf.UpdateNoExist)
			if err != nil {
				errs = append(errs, fmt.Errorf("migrate map %s: %w", mm.Name, err))
			}
			mm.Copied, mm.Dropped = mm.Copied+c, mm.Dropped+d
		}
	}
	for i := range mig.Maps {
		name := mig.Maps[i].Name
		path := filepath.Join(mig.pinPath, name)
		tmp := path + "_new"
		_ = os.Remove(tmp)
		if err := mig.fresh[name].Pin(tmp); err != nil {
			errs = append(errs, fmt.Errorf("pin migrated map %s: %w", name, err))
			continue
		}
		// rename(2) replaces the old pin in one step: a reader opens the old map or the new.
		if err := os.Rename(tmp, path); err != nil {
			errs = append(errs, fmt.Errorf("replace pin %s: %w", path, err))
		}
	}
	mig.close()
	return errors.Join(errs...)
}

func (mig *Migration) close() {
	for _, m := range mig.old {
		m.Close()
	}
}

// copyMap copies src's entries into dst, converting them if their layouts differ. It returns
// how many were copied and how many were not (no conversion, or dst full).
func copyMap(name string, src, dst *ebpf.Map, flags ebpf.MapUpdateFlags) (copied, dropped int, err error) {
	si, err := src.Info()
	if err != nil {
		return 0, 0, fmt.Errorf("read map info: %w", err)
	}
	switch {
	case src.Type() == ebpf.HashOfMaps || src.Type() == ebpf.ArrayOfMaps:
		return copyOuter(src, dst, flags)
	case src.Type() == ebpf.PerCPUArray || src.Type() == ebpf.PerCPUHash || src.Type() == ebpf.LRUCPUHash:
		return copyPerCPU(src, dst, si.MaxEntries, dst.MaxEntries())
	}
	conv := func(k, v []byte) ([]byte, []byte, bool) { return k, v, true }
	if src.KeySize() != dst.KeySize() || src.ValueSize() != dst.ValueSize() {
		c, ok := layoutChanges[name][[2]uint32{src.KeySize(), src.ValueSize()}]
		if !ok {
			// Nothing known turns these entries into the new layout: count them all as lost.
			n := 0
			var k, v []byte = make([]byte, src.KeySize()), make([]byte, src.ValueSize())
			for it := src.Iterate(); it.Next(&k, &v); {
				n++
			}
			return 0, n, nil
		}
		conv = c
	}
	k, v := make([]byte, src.KeySize()), make([]byte, src.ValueSize())
	it := src.Iterate()
	for it.Next(&k, &v) {
		nk, nv, ok := conv(k, v)
		if !ok {
			dropped++
			continue
		}
		if err := dst.Update(nk, nv, flags); err != nil {
			if errors.Is(err, ebpf.ErrKeyExist) {
				continue // newer in dst
			}
			dropped++ // no room in a smaller map: the LRU would have dropped it too
			continue
		}
		copied++
	}
	return copied, dropped, it.Err()
}

// copyPerCPU copies a per-CPU array's counters, index by index, as far as both reach (a counter
// array that grew keeps its old counters and starts the new ones at 0).
func copyPerCPU(src, dst *ebpf.Map, srcMax, dstMax uint32) (copied, dropped int, err error) {
	if src.ValueSize() != dst.ValueSize() || src.Type() != ebpf.PerCPUArray {
		return 0, int(srcMax), nil
	}
	n := min(srcMax, dstMax)
	words := int(src.ValueSize()+7) / 8
	for i := uint32(0); i < n; i++ {
		var vals [][]byte
		if err := src.Lookup(&i, &vals); err != nil {
			return copied, dropped, fmt.Errorf("read counters %d: %w", i, err)
		}
		zero := true
		for _, v := range vals {
			for _, b := range v[:words*8] {
				zero = zero && b == 0
			}
		}
		if zero {
			continue
		}
		if err := dst.Update(&i, vals, ebpf.UpdateAny); err != nil {
			return copied, dropped, fmt.Errorf("write counters %d: %w", i, err)
		}
		copied++
	}
	return copied, dropped + int(srcMax-n), nil
}

// copyOuter moves the inner maps of a map of maps into the new outer map (each inner map stays
// the same object, so its content comes along). Inner maps the new outer map does not accept
// (another size) are dropped: the agent rebuilds them.
func copyOuter(src, dst *ebpf.Map, flags ebpf.MapUpdateFlags) (copied, dropped int, err error) {
	var key, id uint32
	it := src.Iterate()
	for it.Next(&key, &id) {
		inner, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			dropped++
			continue
		}
		err = dst.Update(&key, inner, flags)
		inner.Close()
		if err != nil {
			dropped++
			continue
		}
		copied++
	}
	return copied, dropped, it.Err()
}

// byName returns the object's maps by name.
func (m *SluiceMaps) byName() map[string]*ebpf.Map {
	out := m.Pinned()
	out[SluiceMapSluiceTrace] = m.SluiceTrace
	return out
}
