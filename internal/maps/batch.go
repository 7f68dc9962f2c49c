package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/datapath"
)

// Batcher is a Maps that can buffer updates and write them with one BPF_MAP_UPDATE_BATCH per
// map: a cold start writes hundreds of thousands of entries, and one syscall each is most of
// its time. Between Begin and Flush, updates are buffered (deletes and reads are not); Flush
// writes ports, backends, slots, then frontends and service info. The caller flushes at every
// point where order matters. A failed Flush leaves some of the buffer written and some not.
type Batcher interface {
	Maps
	Begin()
	Flush() error
}

type batch struct {
	frontKeys []datapath.SluiceFrontendKey
	frontVals []datapath.SluiceFrontend
	slotKeys  []datapath.SluiceSlotKey
	slotVals  []uint32
	beKeys    []uint32
	beVals    []datapath.SluiceBackend
	// IPv6's own (kernel6.go), written in the same stages.
	front6Keys []datapath.Sluice6FrontendKey
	front6Vals []datapath.Sluice6Frontend
	be6Keys    []uint32
	be6Vals    []datapath.Sluice6Backend
	infoKeys   []uint32
	infoVals   []datapath.SluiceSvcInfo
	portWords  map[*ebpf.Map]map[uint32]uint32
}

// Begin starts buffering updates.
func (k *Kernel) Begin() { k.batch = &batch{portWords: map[*ebpf.Map]map[uint32]uint32{}} }

// Flush writes what was buffered and stops buffering.
func (k *Kernel) Flush() error {
	b := k.batch
	k.batch = nil
	if b == nil {
		return nil
	}
	var errs []error
	for m, words := range b.portWords {
		for w, v := range words {
			if err := m.Update(&w, &v, ebpf.UpdateAny); err != nil {
				errs = append(errs, fmt.Errorf("write port bitmap word %d: %w", w, err))
			}
		}
	}
	// Stage by stage, stopping at the first that fails: nothing later may name what it did
	// not write.
	for _, stage := range []func() error{
		func() error { return batchUpdate("backends", k.objs.SluiceBackends, b.beKeys, b.beVals) },
		func() error {
			if len(b.be6Keys) == 0 { // (buffered only with the IPv6 maps)
				return nil
			}
			return batchUpdate("IPv6 backends", k.v6.SluiceBackends6, b.be6Keys, b.be6Vals)
		},
		func() error { return batchUpdate("slots", k.objs.SluiceSlots, b.slotKeys, b.slotVals) },
		func() error { return batchUpdate("service info", k.objs.SluiceSvcInfo, b.infoKeys, b.infoVals) },
		func() error { return batchUpdate("frontends", k.objs.SluiceFrontends, b.frontKeys, b.frontVals) },
		func() error {
			if len(b.front6Keys) == 0 {
				return nil
			}
			return batchUpdate("IPv6 frontends", k.v6.SluiceFrontends6, b.front6Keys, b.front6Vals)
		},
	} {
		if err := stage(); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	return errors.Join(errs...)
}

const batchChunk = 8192

func batchUpdate[K, V any](what string, m *ebpf.Map, keys []K, vals []V) error {
	for i := 0; i < len(keys); i += batchChunk {
		j := min(i+batchChunk, len(keys))
		n, err := m.BatchUpdate(keys[i:j], vals[i:j], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for x := i; x < j; x++ {
				if err := m.Update(&keys[x], &vals[x], ebpf.UpdateAny); err != nil {
					return wrapUpdate(what, err)
				}
			}
			continue
		}
		if err != nil {
			return wrapUpdate(fmt.Sprintf("%s (batch, %d of %d written)", what, i+n, len(keys)), err)
		}
	}
	return nil
}
