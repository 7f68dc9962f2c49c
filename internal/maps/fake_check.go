package maps

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sluicelb/sluice/internal/lb"
)

// Dangling lists what the datapath could read that names an entry that does not exist: a
// frontend whose slots 1..count are not all there, a readable slot, Maglev table entry or
// affinity backend naming a missing backend, a Maglev frontend with backends but no table. The
// reconciler's invariant is that this is empty after every single write, whatever fails.
func (f *Fake) Dangling() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dangling()
}

func (f *Fake) dangling() []string {
	var out []string
	keys := make([]lb.FrontendKey, 0, len(f.FrontendMap))
	for k := range f.FrontendMap {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b lb.FrontendKey) int { return strings.Compare(a.String(), b.String()) })
	checked := map[uint32]uint16{} // service ID -> slots checked so far
	for _, k := range keys {
		fe := f.FrontendMap[k]
		for s := uint32(checked[fe.ServiceID]) + 1; s <= uint32(fe.Count); s++ {
			id, ok := f.SlotMap[SlotKey{fe.ServiceID, s}]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("frontend %s (count %d): no slot %d/%d", k, fe.Count, fe.ServiceID, s))
			case !f.hasBackend(id):
				out = append(out, fmt.Sprintf("slot %d/%d: no backend %d", fe.ServiceID, s, id))
			}
		}
		checked[fe.ServiceID] = max(checked[fe.ServiceID], fe.Count)
		// With no backend the datapath rejects (or drops) before it reads the table.
		if fe.Flags&lb.FrontendMaglev != 0 && fe.Count > 0 && f.Maglev[fe.ServiceID] == nil {
			out = append(out, fmt.Sprintf("frontend %s: no maglev table %d", k, fe.ServiceID))
		}
	}
	for svc, table := range f.Maglev {
		for _, id := range table {
			if !f.hasBackend(id) {
				out = append(out, fmt.Sprintf("maglev table %d: no backend %d", svc, id))
				break
			}
		}
	}
	for m := range f.Affinity {
		if !f.hasBackend(m.BackendID) {
			out = append(out, fmt.Sprintf("affinity backend %s: no backend %d", m, m.BackendID))
		}
	}
	slices.Sort(out)
	return out
}

func (f *Fake) hasBackend(id uint32) bool {
	_, ok := f.BackendMap[id]
	return ok
}
