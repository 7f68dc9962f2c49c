package reconciler

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/sluicelb/sluice/internal/lb"
	lbmaps "github.com/sluicelb/sluice/internal/maps"
)

// Service and backend IDs: allocation, reference counts and pruning of backends nothing
// names.

func (r *Reconciler) ref(id uint32, d int) {
	if id != 0 {
		r.backendRefs[id] += d
		if r.backendRefs[id] <= 0 {
			r.unused[id] = true
		}
	}
}

func (r *Reconciler) backendID(b lb.Backend) (uint32, error) {
	if id, ok := r.backendIDs[b]; ok {
		return id, nil
	}
	if uint32(len(r.backends)) >= r.maxBackends {
		return 0, fmt.Errorf("add backend %s: %w (%d backends)", b, lbmaps.ErrFull, r.maxBackends)
	}
	id := r.nextBackend
	for {
		// An ID some restored entry names, though no backend has it, is not handed out
		// until that entry is gone: it would name the new backend.
		if _, used := r.backends[id]; !used && id != 0 && r.backendRefs[id] <= 0 {
			break
		}
		id++
	}
	if err := r.m.UpdateBackend(id, b); err != nil {
		return 0, err
	}
	r.nextBackend = id + 1
	r.backendIDs[b] = id
	r.backends[id] = b
	r.backendRefs[id] = 0
	r.unused[id] = true
	return id, nil
}

// pruneBackends deletes the backends nothing names any more (no slot, Maglev table or
// affinity backend set, leftovers included); only those whose count fell to zero since the
// last prune are looked at. Counting every entry that names a backend is what makes pruning
// safe after any failed write: an entry that could not be deleted still holds its backend.
func (r *Reconciler) pruneBackends() error {
	var errs []error
	// In ID order, so a run's writes are the same each time (scenario tests compare them).
	for _, id := range slices.Sorted(maps.Keys(r.unused)) {
		delete(r.unused, id)
		if r.backendRefs[id] > 0 {
			continue
		}
		if _, ok := r.backends[id]; !ok {
			delete(r.backendRefs, id) // an ID only a leftover named
			continue
		}
		if err := r.m.DeleteBackend(id); err != nil {
			errs = append(errs, err)
			r.unused[id] = true // retried next time
			continue
		}
		b := r.backends[id]
		if r.backendIDs[b] == id {
			delete(r.backendIDs, b)
		}
		delete(r.backends, id)
		delete(r.backendRefs, id)
	}
	if len(r.backends) == 0 {
		r.nextBackend = 1
	}
	return errors.Join(errs...)
}

// allocServiceID hands out the lowest free ID; 0 is never used, and IDs index the per-service
// stats array, so they stay below maxServices.
func (r *Reconciler) allocServiceID() (uint32, error) {
	n := r.maxServices - 1
	for i := uint32(0); i < n; i++ {
		id := (r.nextSvc+i)%n + 1
		if !r.svcIDs[id] && !r.orphans.holds(id) {
			r.nextSvc = id % n
			return id, nil
		}
	}
	return 0, fmt.Errorf("allocate service ID: %w (%d services)", lbmaps.ErrFull, r.maxServices-1)
}
