package reconciler

import (
	"fmt"
	"sort"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
)

// Restoring the bookkeeping from what a previous agent left in the pinned maps.

// Restore reads what a previous agent left in the maps, so that the first Apply rewrites only
// what differs: services whose state is unchanged are not touched, and flows keep going.
func (r *Reconciler) Restore() (int, error) {
	fes, err := r.m.Frontends()
	if err != nil {
		return 0, fmt.Errorf("restore frontends: %w", err)
	}
	slots, err := r.m.Slots()
	if err != nil {
		return 0, fmt.Errorf("restore slots: %w", err)
	}
	bes, err := r.m.Backends()
	if err != nil {
		return 0, fmt.Errorf("restore backends: %w", err)
	}
	infos, err := r.m.ServiceInfos()
	if err != nil {
		return 0, fmt.Errorf("restore service names: %w", err)
	}
	matches, err := r.m.AffinityMatches()
	if err != nil {
		return 0, fmt.Errorf("restore affinity backends: %w", err)
	}
	ranges, err := r.m.SourceRanges()
	if err != nil {
		return 0, fmt.Errorf("restore source ranges: %w", err)
	}
	tables, err := r.m.MaglevTables()
	if err != nil {
		return 0, fmt.Errorf("restore maglev tables: %w", err)
	}
	for id, b := range bes {
		// A build that marked only local backends' ports left remote ones' replies unmarked:
		// mark every restored backend's before the programs are swapped in.
		if err := r.m.SetBackendPort(b.Port); err != nil {
			return 0, fmt.Errorf("restore backend ports: %w", err)
		}
		r.backends[id] = b
		if cur, ok := r.backendIDs[b]; !ok || id < cur {
			r.backendIDs[b] = id
		}
		r.backendRefs[id] = 0
		r.unused[id] = true
		if id >= r.nextBackend {
			r.nextBackend = id + 1
		}
	}
	// Frontends in a stable order, so a service whose addresses disagree on the ID resolves
	// the same way each time (the others are rewritten by Apply).
	keys := make([]lb.FrontendKey, 0, len(fes))
	for k := range fes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		fe := fes[k]
		// The service port a frontend belongs to is in its ID's info (load-balancer and
		// external IPs carry the service port, not the NodePort); without one, its own port.
		sk := desired.ServiceKey{NodePort: k.Port, Proto: k.Proto, Family: lb.FamilyOf(k.Addr)}
		if k.Socket {
			sk.Scope = desired.ScopeNode
		}
		if info, ok := infos[fe.ServiceID]; ok && info.NodePort != 0 {
			sk = desired.ServiceKey{NodePort: info.NodePort, Proto: info.Proto, Scope: desired.Scope(info.Scope), Family: info.Family}
		} else if ok && info.Name != "" {
			// Served on external IPs only, or the ClusterIPs (keyed by name too).
			sk = desired.ServiceKey{Proto: info.Proto, Name: info.Name, Scope: desired.Scope(info.Scope), Family: info.Family}
		}
		a := r.services[sk]
		if a == nil {
			if r.svcIDs[fe.ServiceID] {
				// Two services on one ID: a crash mid-write. Delete this one unless Apply
				// rewrites it.
				r.orphans.frontends[k] = fe.ServiceID
				continue
			}
			a = newApplied(fe.ServiceID)
			a.name, a.local = infos[fe.ServiceID].Name, infos[fe.ServiceID].ExternalLocal
			r.services[sk] = a
			r.svcIDs[fe.ServiceID] = true
		}
		if fe.ServiceID != a.id {
			r.orphans.frontends[k] = fe.ServiceID
			continue
		}
		// Every frontend is recorded as it is, so that removing the service removes them
		// all and the next Apply rewrites those that disagree (a crash mid-publish).
		a.fes[k] = fe
		r.owners[k] = sk
		a.count = max(a.count, fe.Count)
	}
	byID := map[uint32]*applied{}
	for _, a := range r.services {
		byID[a.id] = a
		a.backends = make([]uint32, a.count)
	}
	// Every entry that names a backend holds a reference to it, leftovers included.
	for id := range infos {
		if byID[id] == nil {
			r.orphans.infos[id] = true
			r.orphans.ids[id]++
		}
	}
	for m := range matches {
		r.backendRefs[m.BackendID]++
		if a := byID[m.ServiceID]; a != nil {
			a.matches[m.BackendID] = true
		} else {
			r.orphans.matches[m] = true
			r.orphans.ids[m.ServiceID]++
		}
	}
	for sr := range ranges {
		if a := byID[sr.ServiceID]; a != nil {
			a.ranges = append(a.ranges, sr.Prefix)
		} else {
			r.orphans.ranges[sr] = true
			r.orphans.ids[sr.ServiceID]++
		}
	}
	for id, table := range tables {
		held := distinct(table)
		for _, b := range held {
			r.backendRefs[b]++
		}
		// Rewritten once rather than compared: it costs one batch per Maglev service.
		if a := byID[id]; a != nil {
			a.maglevStale, a.maglevHeld = true, held
		} else {
			r.orphans.maglev[id] = held
			r.orphans.ids[id]++
		}
	}
	for sk, id := range slots {
		a := byID[sk.ServiceID]
		if a == nil || sk.Slot == 0 || sk.Slot > uint32(a.count) {
			r.orphans.slots[sk] = id
			r.orphans.ids[sk.ServiceID]++
			r.backendRefs[id]++
			continue
		}
		// Recorded as it is, also when it names a backend that is not there (a crash
		// mid-write): the ID is then not handed out to a new backend until Apply rewrites
		// the slot, or the slot would send this service's traffic to another's backend.
		a.backends[sk.Slot-1] = id
		r.backendRefs[id]++
	}
	return len(r.services), nil
}

// distinct returns the IDs in ids once each, in first-seen order.
func distinct(ids []uint32) []uint32 {
	seen := map[uint32]bool{}
	var out []uint32
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
