package reconciler

import (
	"errors"
	"fmt"

	"github.com/sluicelb/sluice/internal/lb"
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
	if r.lost {
		if err := r.relearn(); err != nil {
			return 0, err
		}
	}
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
	ownedFE := map[lb.FrontendKey]bool{}
	ownedSlot := map[maps.SlotKey]bool{}
	for _, a := range r.services {
		for fk, fe := range a.fes {
			ownedFE[fk] = true
			cur, ok := fes[fk]
			if cur == fe {
				continue
			}
			n++
			if ok && cur.ServiceID != a.id {
				// It reads another service's slots, which that service may trim at any sync:
				// rewritten now (the service's own slots are there). If that fails, it is a
				// leftover, deleted first by the next Apply.
				if err := r.m.UpdateFrontend(fk, fe); err != nil {
					errs = append(errs, fmt.Errorf("repair frontend %s: %w", fk, err))
					r.orphans.frontends[fk] = cur.ServiceID
					delete(a.fes, fk)
				}
				continue
			}
			// What the map holds now (zero: nothing): publish writes it again, or deletes it
			// if the service no longer serves the key.
			a.fes[fk] = cur
		}
		for i, id := range a.backends {
			sk := maps.SlotKey{ServiceID: a.id, Slot: uint32(i + 1)}
			ownedSlot[sk] = true
			if cur := slots[sk]; cur != id {
				// Recorded as the map has it (0: empty), so the next prepare rewrites it, and
				// the backend it names now is held until then.
				r.ref(cur, +1)
				r.ref(id, -1)
				a.backends[i] = cur
				n++
			}
		}
	}
	stillRead := map[uint32]bool{} // IDs of unowned frontends that could not be deleted
	for fk, fe := range fes {
		if !ownedFE[fk] && !r.isOrphanFrontend(fk) {
			n++
			if err := r.m.DeleteFrontend(fk); err != nil {
				errs = append(errs, fmt.Errorf("repair: delete frontend %s: %w", fk, err))
				stillRead[fe.ServiceID] = true
				// A leftover from now on: deleted first by the next Apply, which until then
				// keeps what it may read.
				r.orphans.frontends[fk] = fe.ServiceID
			}
		}
	}
	for sk := range slots {
		if _, left := r.orphans.slots[sk]; !ownedSlot[sk] && !left && !stillRead[sk.ServiceID] {
			n++
			if err := r.m.DeleteSlot(sk); err != nil {
				errs = append(errs, fmt.Errorf("repair: delete slot %d/%d: %w", sk.ServiceID, sk.Slot, err))
			}
		}
	}
	return n, errors.Join(errs...)
}

// isOrphanFrontend: a restored frontend Apply will settle itself.
func (r *Reconciler) isOrphanFrontend(fk lb.FrontendKey) bool {
	_, ok := r.orphans.frontends[fk]
	return ok
}
