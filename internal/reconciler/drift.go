package reconciler

import (
	"errors"
	"fmt"

	"github.com/sluicelb/sluice/internal/maps"
)

// Repair compares the frontend, slot and backend maps with what the reconciler wrote and
// makes the next Apply write again whatever differs: an entry changed or deleted behind the
// agent (by hand, by a tool) otherwise stayed wrong until a restart, since Apply diffs against
// the reconciler's own bookkeeping. Changed backends are rewritten at once (an entry's value
// is all there is to it); frontends and slots nobody owns are deleted. The syncer calls it
// before each full sync. It returns how many entries differed. (Policy maps are not compared:
// a service's policy entries are rewritten when its policy changes.)
func (r *Reconciler) Repair() (int, error) {
	fes, err := r.m.Frontends()
	if err != nil {
		return 0, fmt.Errorf("repair: read frontends: %w", err)
	}
	slots, err := r.m.Slots()
	if err != nil {
		return 0, fmt.Errorf("repair: read slots: %w", err)
	}
	bes, err := r.m.Backends()
	if err != nil {
		return 0, fmt.Errorf("repair: read backends: %w", err)
	}
	n := 0
	var errs []error
	// Backends first: a slot rewritten below must point at a right one.
	for id, b := range r.backends {
		if cur, ok := bes[id]; !ok || cur != b {
			n++
			if err := r.m.UpdateBackend(id, b); err != nil {
				errs = append(errs, fmt.Errorf("repair backend %d: %w", id, err))
			}
		}
	}
	ownedFE := map[maps.FrontendKey]bool{}
	ownedSlot := map[maps.SlotKey]bool{}
	for _, a := range r.services {
		for fk, fe := range a.fes {
			ownedFE[fk] = true
			if cur, ok := fes[fk]; !ok || cur != fe {
				delete(a.fes, fk) // publish writes it again
				n++
			}
		}
		for i, id := range a.backends {
			sk := maps.SlotKey{ServiceID: a.id, Slot: uint32(i + 1)}
			ownedSlot[sk] = true
			if cur, ok := slots[sk]; !ok || cur != id {
				if a.staleSlots == nil {
					a.staleSlots = map[int]bool{}
				}
				a.staleSlots[i] = true
				n++
			}
		}
	}
	for fk := range fes {
		if !ownedFE[fk] && !r.isOrphanFrontend(fk) {
			n++
			if err := r.m.DeleteFrontend(fk); err != nil {
				errs = append(errs, fmt.Errorf("repair: delete frontend %s: %w", fk, err))
			}
		}
	}
	for sk := range slots {
		if !ownedSlot[sk] {
			n++
			if err := r.m.DeleteSlot(sk); err != nil {
				errs = append(errs, fmt.Errorf("repair: delete slot %d/%d: %w", sk.ServiceID, sk.Slot, err))
			}
		}
	}
	return n, errors.Join(errs...)
}

// isOrphanFrontend: a restored frontend Apply will settle itself.
func (r *Reconciler) isOrphanFrontend(fk maps.FrontendKey) bool {
	for _, o := range r.orphanFrontends {
		if o == fk {
			return true
		}
	}
	return false
}
