package reconciler

import (
	"errors"

	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// Leftovers: entries a previous agent wrote that no service of ours owns (a crash mid-write,
// services deleted while no agent ran). No frontend reads them, but the slots, affinity
// backends and Maglev tables among them name backends: they hold references to those until
// they are deleted, so a backend is never deleted while any entry names it.

type orphans struct {
	slots   map[maps.SlotKey]uint32 // -> the backend it names
	infos   map[uint32]bool
	matches map[maps.AffinityMatch]bool
	ranges  map[maps.SourceRange]bool
	maglev  map[uint32][]uint32 // -> the distinct backends its table names
	// frontends a crash left on a key whose ID another service holds (-> that ID)
	frontends map[lb.FrontendKey]uint32
	// ids counts the leftovers of each service ID but frontends (which carry another
	// service's ID): an ID is not handed out while any remain.
	ids map[uint32]int
}

func newOrphans() orphans {
	return orphans{frontends: map[lb.FrontendKey]uint32{}, slots: map[maps.SlotKey]uint32{}, infos: map[uint32]bool{}, matches: map[maps.AffinityMatch]bool{},
		ranges: map[maps.SourceRange]bool{}, maglev: map[uint32][]uint32{}, ids: map[uint32]int{}}
}

// holds says whether a leftover still uses service ID id: the ID is not handed out until
// they are gone, so that no new service inherits a leftover's entries.
func (o *orphans) holds(id uint32) bool { return o.ids[id] > 0 }

// read says whether a leftover frontend reads service ID id's entries: until it is gone, the
// service holding the ID trims nothing and is not removed (its slots, Maglev table and
// affinity entries may be what the leftover reads).
func (o *orphans) read(id uint32) bool {
	for _, fid := range o.frontends {
		if fid == id {
			return true
		}
	}
	return false
}

// gone notes that a leftover of service ID id was deleted (or overwritten).
func (o *orphans) gone(id uint32) {
	if o.ids[id]--; o.ids[id] <= 0 {
		delete(o.ids, id)
	}
}

// deleteOrphans deletes the leftovers, before the services are removed or applied. Frontends
// first: a leftover frontend reads its ID's slots up to its own count, which may be past what
// the ID's service now keeps (see read); after it no frontend reads the rest. A key a service still serves is gone until that service's publish
// rewrites it, a moment's gap that only a crash mid-write leads to. Those whose delete fails
// stay (and keep their references) for the next Apply.
func (r *Reconciler) deleteOrphans() error {
	o := &r.orphans
	var errs []error
	for fk := range o.frontends {
		if err := r.m.DeleteFrontend(fk); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(o.frontends, fk)
	}
	if len(o.frontends) > 0 {
		return errors.Join(errs...) // the rest waits: a leftover frontend may read it
	}
	for m := range o.matches {
		if err := r.m.DeleteAffinityMatch(m); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(o.matches, m)
		o.gone(m.ServiceID)
		r.ref(m.BackendID, -1)
	}
	for id, held := range o.maglev {
		if err := r.m.DeleteMaglev(id); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(o.maglev, id)
		o.gone(id)
		for _, b := range held {
			r.ref(b, -1)
		}
	}
	for sr := range o.ranges {
		if err := r.m.DeleteSourceRange(sr); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(o.ranges, sr)
		o.gone(sr.ServiceID)
	}
	for sk, b := range o.slots {
		if err := r.m.DeleteSlot(sk); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(o.slots, sk)
		o.gone(sk.ServiceID)
		r.ref(b, -1)
	}
	for id := range o.infos {
		if err := r.m.DeleteServiceInfo(id); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(o.infos, id)
		o.gone(id)
		_ = r.m.ResetServiceStats(id)
	}
	return errors.Join(errs...)
}

// slotWritten: a service wrote slot sk over whatever a leftover had there.
func (r *Reconciler) slotWritten(sk maps.SlotKey) {
	if b, ok := r.orphans.slots[sk]; ok {
		delete(r.orphans.slots, sk)
		r.orphans.gone(sk.ServiceID)
		r.ref(b, -1)
	}
}
