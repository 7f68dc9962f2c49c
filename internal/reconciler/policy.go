package reconciler

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maglev"
	"github.com/sluicelb/sluice/internal/maps"
)

// Policy entries: session affinity backend sets, source ranges and Maglev tables, written
// before the frontends that use them and deleted after.

// preparePolicy writes the policy entries svc's frontends will need before they carry its
// flags: the affinity backend set, the source ranges, the Maglev table.
func (r *Reconciler) preparePolicy(svc *desired.Service, a *applied, want []uint32) error {
	if svc.AffinityTimeout > 0 {
		for _, id := range want {
			if !a.matches[id] {
				if err := r.m.UpdateAffinityMatch(maps.AffinityMatch{ServiceID: a.id, BackendID: id}); err != nil {
					return err
				}
				a.matches[id] = true
				r.ref(id, +1)
			}
		}
	}
	for _, p := range svc.SourceRanges {
		if !slices.Contains(a.ranges, p) {
			if err := r.m.UpdateSourceRange(maps.SourceRange{ServiceID: a.id, Prefix: p}); err != nil {
				return err
			}
			a.ranges = append(a.ranges, p)
		}
	}
	if svc.Maglev && len(want) > 0 && (a.maglevStale || !slices.Equal(a.maglev, want)) {
		// Keyed by address, so every node builds the same table from the same endpoints.
		keys := make([]string, len(svc.Backends))
		for i, b := range svc.Backends {
			keys[i] = netip.AddrPortFrom(b.Addr, b.Port).String()
		}
		idx, err := maglev.Table(keys, nil, r.MaglevSize)
		if err != nil {
			return fmt.Errorf("build maglev table: %w", err)
		}
		table := make([]uint32, len(idx))
		for i, j := range idx {
			table[i] = want[j]
		}
		if err := r.m.UpdateMaglev(a.id, table); err != nil {
			return err
		}
		r.holdMaglev(a, distinct(want))
		a.maglev, a.maglevStale = slices.Clone(want), false
	}
	return nil
}

// settlePolicy deletes the policy entries svc's frontends no longer use, once they carry
// their new flags.
func (r *Reconciler) settlePolicy(svc *desired.Service, a *applied) error {
	keep := map[uint32]bool{}
	if svc.AffinityTimeout > 0 {
		for _, id := range a.backends {
			keep[id] = true
		}
	}
	for id := range a.matches {
		if !keep[id] {
			if err := r.m.DeleteAffinityMatch(maps.AffinityMatch{ServiceID: a.id, BackendID: id}); err != nil {
				return err
			}
			delete(a.matches, id)
			r.ref(id, -1)
		}
	}
	for i := 0; i < len(a.ranges); {
		if p := a.ranges[i]; !slices.Contains(svc.SourceRanges, p) {
			if err := r.m.DeleteSourceRange(maps.SourceRange{ServiceID: a.id, Prefix: p}); err != nil {
				return err
			}
			a.ranges = slices.Delete(a.ranges, i, i+1)
			continue
		}
		i++
	}
	if (!svc.Maglev || len(a.backends) == 0) && (a.maglev != nil || a.maglevStale) {
		if err := r.m.DeleteMaglev(a.id); err != nil {
			return err
		}
		r.holdMaglev(a, nil)
		a.maglev, a.maglevStale = nil, false
	}
	return nil
}

// holdMaglev moves the service's Maglev references to the backends its table names now.
func (r *Reconciler) holdMaglev(a *applied, held []uint32) {
	for _, id := range held {
		r.ref(id, +1)
	}
	for _, id := range a.maglevHeld {
		r.ref(id, -1)
	}
	a.maglevHeld = held
}
