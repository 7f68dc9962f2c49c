// Package reconciler keeps the datapath's maps equal to the desired state: it diffs against
// what it applied before (restored from the pinned maps at start), writes only what changed,
// in an order the datapath can read at any moment, and prunes what is left over.
package reconciler

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maglev"
	"github.com/sluicelb/sluice/internal/maps"
)

// applied is what the maps hold for one service port.
type applied struct {
	id       uint32
	name     string
	backends []uint32 // backends[i] is in slot i+1
	count    uint16   // the count the frontends carry (the highest, after a crash mid-write)
	local    bool     // the service info says externalTrafficPolicy Local
	fes      map[maps.FrontendKey]maps.Frontend
	last     *desired.Service

	matches     map[uint32]bool // session affinity: backend IDs written as the service's
	ranges      []netip.Prefix  // loadBalancerSourceRanges written
	maglev      []uint32        // backend IDs (by slot) the Maglev table was built from
	maglevStale bool            // a table of unknown content is there (restored)
	// serving: the endpoints the service's flows may go to (its serving endpoints, and every
	// backend it has used): a UDP flow is flushed when its endpoint leaves (noteGone).
	serving map[netip.AddrPort]bool
	// staleSlots are slots found changed behind the agent (Repair): rewritten by the next
	// prepare even where the bookkeeping says they hold the right backend.
	staleSlots map[int]bool
}

func newApplied(id uint32) *applied {
	return &applied{id: id, fes: map[maps.FrontendKey]maps.Frontend{}, matches: map[uint32]bool{}}
}

// Reconciler owns the writes to the service, slot and backend maps. Not safe for concurrent use:
// one sync loop drives it.
type Reconciler struct {
	m           maps.Maps
	log         *zap.Logger
	maxServices uint32
	maxBackends uint32

	services map[desired.ServiceKey]*applied
	svcIDs   map[uint32]bool

	backendIDs  map[maps.Backend]uint32
	backends    map[uint32]maps.Backend
	backendRefs map[uint32]int
	unused      map[uint32]bool // backends whose count fell to zero: pruned after the writes
	nextBackend uint32
	nextSvc     uint32 // where the search for a free service ID starts

	// owners says which service port holds each frontend key: load-balancer and external IPs
	// of two services may collide, and the first one keeps the key.
	owners map[maps.FrontendKey]desired.ServiceKey
	// MaglevSize is the entries of each Maglev table: what the maps say their tables hold
	// (maps.MaglevSizer), else maglev.DefaultTableSize.
	MaglevSize uint32

	// Left by a previous agent with no service of ours: deleted on the first Apply.
	orphanSlots   []maps.SlotKey
	orphanInfos   []uint32
	orphanMatches []maps.AffinityMatch
	orphanRanges  []maps.SourceRange
	orphanMaglev  []uint32
	// Frontends a crash left on a key whose ID another service holds.
	orphanFrontends []maps.FrontendKey
	// goneUDP are (service, endpoint) pairs whose endpoint stopped serving: their UDP flows are
	// flushed once the frontends no longer pick it.
	goneUDP  map[maps.FlowTarget]bool
	flusher  *flusher // set by FlushInBackground
	noBatch  bool     // set while recovering from a failed batch
	batching bool     // frontend writes are buffered: publish leaves trimming to the caller
}

// New returns a Reconciler with nothing applied; call Restore before the first Apply when the
// maps may already hold state.
func New(m maps.Maps, maxServices, maxBackends uint32, log *zap.Logger) *Reconciler {
	size := uint32(maglev.DefaultTableSize)
	// The maps know the datapath's table size: a separate setting here was once forgotten
	// (--maglev-table-size never reached the tables, and every Maglev service was refused).
	if s, ok := m.(maps.MaglevSizer); ok && s.MaglevTableSize() != 0 {
		size = s.MaglevTableSize()
	}
	return &Reconciler{
		m: m, log: log, maxServices: maxServices, maxBackends: maxBackends,
		services:    map[desired.ServiceKey]*applied{},
		svcIDs:      map[uint32]bool{},
		backendIDs:  map[maps.Backend]uint32{},
		backends:    map[uint32]maps.Backend{},
		backendRefs: map[uint32]int{},
		unused:      map[uint32]bool{},
		owners:      map[maps.FrontendKey]desired.ServiceKey{},
		nextBackend: 1,
		MaglevSize:  size,
	}
}

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
	keys := make([]maps.FrontendKey, 0, len(fes))
	for k := range fes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		fe := fes[k]
		// The service port a frontend belongs to is in its ID's info (load-balancer and
		// external IPs carry the service port, not the NodePort); without one, its own port.
		sk := desired.ServiceKey{NodePort: k.Port, Proto: k.Proto}
		if info, ok := infos[fe.ServiceID]; ok && info.NodePort != 0 {
			sk = desired.ServiceKey{NodePort: info.NodePort, Proto: info.Proto}
		} else if ok && info.Name != "" {
			sk = desired.ServiceKey{Proto: info.Proto, Name: info.Name} // served on external IPs only
		}
		a := r.services[sk]
		if a == nil {
			if r.svcIDs[fe.ServiceID] {
				// Two services on one ID: a crash mid-write. Delete this one unless Apply
				// rewrites it.
				r.orphanFrontends = append(r.orphanFrontends, k)
				continue
			}
			a = newApplied(fe.ServiceID)
			a.name, a.local = infos[fe.ServiceID].Name, infos[fe.ServiceID].ExternalLocal
			r.services[sk] = a
			r.svcIDs[fe.ServiceID] = true
		}
		if fe.ServiceID != a.id {
			r.orphanFrontends = append(r.orphanFrontends, k)
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
	for id := range infos {
		if byID[id] == nil {
			r.orphanInfos = append(r.orphanInfos, id)
		}
	}
	for m := range matches {
		if a := byID[m.ServiceID]; a != nil {
			a.matches[m.BackendID] = true
		} else {
			r.orphanMatches = append(r.orphanMatches, m)
		}
	}
	for sr := range ranges {
		if a := byID[sr.ServiceID]; a != nil {
			a.ranges = append(a.ranges, sr.Prefix)
		} else {
			r.orphanRanges = append(r.orphanRanges, sr)
		}
	}
	for id := range tables {
		// Rewritten once rather than compared: it costs one batch per Maglev service.
		if a := byID[id]; a != nil {
			a.maglevStale = true
		} else {
			r.orphanMaglev = append(r.orphanMaglev, id)
		}
	}
	for sk, id := range slots {
		a := byID[sk.ServiceID]
		if a == nil || sk.Slot == 0 || sk.Slot > uint32(a.count) {
			r.orphanSlots = append(r.orphanSlots, sk)
			continue
		}
		if _, ok := bes[id]; !ok {
			continue // names a backend never written: an empty slot, rewritten by Apply
		}
		a.backends[sk.Slot-1] = id
		r.backendRefs[id]++
	}
	return len(r.services), nil
}

// Apply makes the maps hold st. A service that cannot be written (a full map, say) is
// reported in the returned error by name and left as it was; every other service is applied.
// Calling Apply again with the same state writes nothing.
func (r *Reconciler) Apply(st desired.State) error {
	var errs []error
	// Removals first: they free service IDs and map room for the additions.
	for k, a := range r.services {
		if _, ok := st.Services[k]; !ok {
			if err := r.removeService(k, a); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: a.name, Err: err, Removing: true})
			}
		}
	}
	keys := make([]desired.ServiceKey, 0, len(st.Services))
	for k := range st.Services {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	if b, ok := r.m.(maps.Batcher); ok && len(keys) >= batchThreshold && !r.noBatch {
		errs = append(errs, r.applyBatched(b, st, keys)...)
	} else {
		for _, k := range keys {
			if err := r.applyService(st.Services[k], st.Addresses); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: st.Services[k].Name, Err: err})
			}
		}
	}
	for _, fk := range r.orphanFrontends {
		if k, ok := r.owners[fk]; ok && r.services[k] != nil {
			continue // rewritten by the service that owns the key now
		}
		if err := r.m.DeleteFrontend(fk); err != nil {
			errs = append(errs, err)
		}
	}
	r.orphanFrontends = nil
	errs = append(errs, r.deleteOrphanPolicy()...)
	if len(r.orphanSlots) > 0 {
		owned := make(map[uint32]*applied, len(r.services))
		for _, a := range r.services {
			owned[a.id] = a
		}
		for _, sk := range r.orphanSlots {
			// A service applied since the restore may have taken this ID and written this
			// slot: then it is no leftover.
			if a := owned[sk.ServiceID]; a != nil && sk.Slot >= 1 && sk.Slot <= uint32(len(a.backends)) {
				continue
			}
			if err := r.m.DeleteSlot(sk); err != nil {
				errs = append(errs, err)
			}
		}
	}
	r.orphanSlots = nil
	for _, id := range r.orphanInfos {
		if !r.svcIDs[id] {
			if err := r.m.DeleteServiceInfo(id); err != nil {
				errs = append(errs, err)
			}
			_ = r.m.ResetServiceStats(id)
		}
	}
	r.orphanInfos = nil
	if err := r.pruneBackends(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, r.flushGone())
	return errors.Join(errs...)
}

// noteGone records the endpoints of a UDP service that stopped serving (svc nil: the service
// is gone): their flows are flushed once the frontends no longer pick them, as kube-proxy
// clears its conntrack entries (a client that keeps its source port would otherwise go on
// talking to the old endpoint). An endpoint that is still serving keeps its flows, picked or
// not: one that started terminating, one externalTrafficPolicy Local sets aside.
func (r *Reconciler) noteGone(a *applied, svc *desired.Service, keep []uint32) {
	now := map[netip.AddrPort]bool{}
	if svc != nil {
		for _, ap := range svc.Serving {
			now[ap] = true
		}
		for _, id := range keep { // picked ones serve, whatever Serving says
			if b, ok := r.backends[id]; ok {
				now[netip.AddrPortFrom(b.Addr, b.Port)] = true
			}
		}
	}
	for _, id := range a.backends { // restored, or used before
		if b, ok := r.backends[id]; ok && id != 0 {
			if a.serving == nil {
				a.serving = map[netip.AddrPort]bool{}
			}
			a.serving[netip.AddrPortFrom(b.Addr, b.Port)] = true
		}
	}
	for ap := range a.serving {
		if now[ap] {
			continue
		}
		if r.goneUDP == nil {
			r.goneUDP = map[maps.FlowTarget]bool{}
		}
		r.goneUDP[maps.FlowTarget{ServiceID: a.id, Backend: ap}] = true
	}
	a.serving = now
}

// flushGone deletes the flows to the backends UDP services dropped.
func (r *Reconciler) flushGone() error {
	if len(r.goneUDP) == 0 {
		return nil
	}
	if r.flusher != nil {
		r.flusher.add(r.goneUDP)
		r.goneUDP = nil
		return nil
	}
	n, err := r.m.FlushFlows(maps.UDP, r.goneUDP)
	if err != nil {
		return fmt.Errorf("flush UDP flows of removed endpoints: %w", err)
	}
	r.log.Debug("Flushed UDP flows of removed endpoints", zap.Int("pairs", len(r.goneUDP)), zap.Int("entries", n))
	r.goneUDP = nil
	return nil
}

// batchThreshold is how many services make Apply batch its writes.
const batchThreshold = 256

// deleteOrphanPolicy deletes policy entries a previous agent left for service IDs no service
// holds now.
func (r *Reconciler) deleteOrphanPolicy() []error {
	var errs []error
	for _, m := range r.orphanMatches {
		if !r.svcIDs[m.ServiceID] {
			errs = append(errs, r.m.DeleteAffinityMatch(m))
		}
	}
	for _, sr := range r.orphanRanges {
		if !r.svcIDs[sr.ServiceID] {
			errs = append(errs, r.m.DeleteSourceRange(sr))
		}
	}
	for _, id := range r.orphanMaglev {
		if !r.svcIDs[id] {
			errs = append(errs, r.m.DeleteMaglev(id))
		}
	}
	r.orphanMatches, r.orphanRanges, r.orphanMaglev = nil, nil, nil
	return errs
}

// applyBatched writes every service's backends and slots in one batch, then every frontend in
// another: the same order as one service at a time, across all of them. If a batch fails (a
// full map), the bookkeeping no longer matches the maps: it is rebuilt from them and the
// services are applied one at a time, which names the ones that do not fit.
func (r *Reconciler) applyBatched(b maps.Batcher, st desired.State, keys []desired.ServiceKey) []error {
	type prepared struct {
		a    *applied
		want []uint32
	}
	var errs []error
	preps := make(map[desired.ServiceKey]prepared, len(keys))
	b.Begin()
	for _, k := range keys {
		a, want, err := r.prepare(st.Services[k])
		if err != nil {
			errs = append(errs, &ServiceError{Key: k, Name: st.Services[k].Name, Err: err})
			continue
		}
		preps[k] = prepared{a, want}
	}
	if err := b.Flush(); err != nil {
		return r.recover(st, err)
	}
	b.Begin()
	r.batching = true
	published := map[desired.ServiceKey]bool{}
	for _, k := range keys {
		if p, ok := preps[k]; ok {
			if err := r.publish(st.Services[k], p.a, p.want, st.Addresses); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: st.Services[k].Name, Err: err})
				continue
			}
			published[k] = true
		}
	}
	r.batching = false
	if err := b.Flush(); err != nil {
		return r.recover(st, err)
	}
	// Only now that every frontend carries its new count may slots past it go.
	for _, k := range keys {
		if p, ok := preps[k]; ok && published[k] {
			if err := r.trim(p.a, len(p.want)); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: st.Services[k].Name, Err: err})
			}
		}
	}
	return errs
}

// recover rebuilds the bookkeeping from the maps after a failed batch and applies st one
// service at a time.
func (r *Reconciler) recover(st desired.State, cause error) []error {
	r.log.Warn("Batched write failed; applying service by service", zap.Error(cause))
	fresh := New(r.m, r.maxServices, r.maxBackends, r.log)
	if _, err := fresh.Restore(); err != nil {
		return []error{cause, err}
	}
	*r = *fresh
	r.noBatch = true
	defer func() { r.noBatch = false }()
	return Errors(r.Apply(st))
}

// ApplyKeys is Apply for the service ports in keys only: those in st are written, those not in
// st are removed. The sync loop uses it for the services that changed; a full Apply repairs
// everything else periodically.
func (r *Reconciler) ApplyKeys(st desired.State, keys []desired.ServiceKey) error {
	var errs []error
	done := make(map[desired.ServiceKey]bool, len(keys))
	// Removals first, as in Apply.
	for _, k := range keys {
		if a, ok := r.services[k]; ok && st.Services[k] == nil && !done[k] {
			done[k] = true
			if err := r.removeService(k, a); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: a.name, Err: err, Removing: true})
			}
		}
	}
	for _, k := range keys {
		if svc := st.Services[k]; svc != nil && !done[k] {
			done[k] = true
			if err := r.applyService(svc, st.Addresses); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: svc.Name, Err: err})
			}
		}
	}
	if err := r.pruneBackends(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, r.flushGone())
	return errors.Join(errs...)
}

// ServiceError is a service port that could not be written or removed.
type ServiceError struct {
	Key      desired.ServiceKey
	Name     string
	Removing bool
	Err      error
}

func (e *ServiceError) Error() string {
	verb := "apply"
	if e.Removing {
		verb = "remove"
	}
	return fmt.Sprintf("%s service %s: %v", verb, e.Name, e.Err)
}

func (e *ServiceError) Unwrap() error { return e.Err }

// Errors splits what Apply returns (errors.Join of per-service errors and others) into its
// parts; nil gives none.
func Errors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// FailedKeys lists the service ports an Apply error names.
func FailedKeys(err error) []desired.ServiceKey {
	var out []desired.ServiceKey
	for _, e := range Errors(err) {
		var se *ServiceError
		if errors.As(e, &se) {
			out = append(out, se.Key)
		}
	}
	return out
}

// OnlyServiceErrors reports whether err is made only of per-service failures (retried service
// by service), as opposed to a failure of the whole apply.
func OnlyServiceErrors(err error) bool {
	errs := Errors(err)
	for _, e := range errs {
		var se *ServiceError
		if !errors.As(e, &se) {
			return false
		}
	}
	return len(errs) > 0
}

// Applied returns what was last applied for a service port.
func (r *Reconciler) Applied(k desired.ServiceKey) (*desired.Service, bool) {
	a, ok := r.services[k]
	if !ok || a.last == nil {
		return nil, ok
	}
	return a.last, true
}

func (r *Reconciler) applyService(svc *desired.Service, addrs []netip.Addr) error {
	a, want, err := r.prepare(svc)
	if err != nil {
		return err
	}
	return r.publish(svc, a, want, addrs)
}

// prepare writes what a service's frontends will point at: its backends and slots (and the
// name tools show). It returns the service's bookkeeping and its backend IDs by slot.
func (r *Reconciler) prepare(svc *desired.Service) (*applied, []uint32, error) {
	a := r.services[svc.Key]
	if a == nil {
		id, err := r.allocServiceID()
		if err != nil {
			return nil, nil, err
		}
		a = newApplied(id)
		r.services[svc.Key] = a
		r.svcIDs[id] = true
	}
	if a.name != svc.Name || a.local != svc.ExternalLocal {
		info := maps.ServiceInfo{Name: svc.Name, NodePort: svc.Key.NodePort, Proto: svc.Key.Proto, Updated: time.Now(), ExternalLocal: svc.ExternalLocal}
		if err := r.m.UpdateServiceInfo(a.id, info); err != nil {
			return nil, nil, err
		}
		a.name, a.local = svc.Name, svc.ExternalLocal
	}

	// 1. Backends, so that every slot written next names an existing backend.
	want := make([]uint32, len(svc.Backends))
	for i, b := range svc.Backends {
		id, err := r.backendID(b)
		if err != nil {
			return nil, nil, err
		}
		want[i] = id
		// Before the frontend: replies of a backend must pass the prefilter (egress for a
		// local one, ingress for a remote one).
		if err := r.m.SetBackendPort(b.Port); err != nil {
			return nil, nil, err
		}
	}
	if svc.Key.NodePort != 0 {
		if err := r.m.SetFrontendPort(svc.Key.NodePort); err != nil {
			return nil, nil, err
		}
	}
	if len(svc.LoadBalancerIPs)+len(svc.ExternalIPs) > 0 {
		// Load-balancer and external IPs are served on the service port.
		if err := r.m.SetFrontendPort(svc.Port); err != nil {
			return nil, nil, err
		}
	}
	if len(want) > 0xffff {
		return nil, nil, fmt.Errorf("write slots: %d backends, at most 65535 per service", len(want))
	}
	if svc.Key.Proto == maps.UDP {
		r.noteGone(a, svc, want)
	}
	// 2. Slots 1..n. The frontends still carry the old count, so a packet reads either an old
	// or a new backend in each slot, never an empty one.
	for i, id := range want {
		if i < len(a.backends) && a.backends[i] == id && !a.staleSlots[i] {
			continue
		}
		if err := r.m.UpdateSlot(maps.SlotKey{ServiceID: a.id, Slot: uint32(i + 1)}, id); err != nil {
			return nil, nil, err
		}
		r.ref(id, +1)
		if i < len(a.backends) {
			r.ref(a.backends[i], -1)
			a.backends[i] = id
		} else {
			a.backends = append(a.backends, id)
		}
	}
	a.staleSlots = nil
	// 3. What the frontends' flags will turn on.
	if err := r.preparePolicy(svc, a, want); err != nil {
		return nil, nil, err
	}
	return a, want, nil
}

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
		a.maglev, a.maglevStale = nil, false
	}
	return nil
}

// publish points the service's frontends at what prepare wrote, then drops the slots past the
// new count.
func (r *Reconciler) publish(svc *desired.Service, a *applied, want []uint32, addrs []netip.Addr) error {
	// 4. Frontends: new addresses, and the new count and policy everywhere.
	count := uint16(len(want))
	var ferr error
	wanted := svc.Frontends(addrs)
	for k, fe := range wanted {
		if owner, ok := r.owners[k]; ok && owner != svc.Key && r.services[owner] != nil {
			// Another service port was here first (two services claiming one external IP
			// and port): it keeps the key, as kube-proxy's first rule would match.
			if a.last == nil || !a.last.Equal(svc) {
				r.log.Warn("Frontend already served for another service; skipped", zap.String("service", svc.Name),
					zap.Stringer("frontend", k), zap.String("holder", r.services[owner].name))
			}
			delete(wanted, k)
			continue
		}
		fe.ServiceID, fe.Count = a.id, count
		if cur, ok := a.fes[k]; ok && cur == fe {
			continue
		}
		if err := r.m.UpdateFrontend(k, fe); err != nil {
			ferr = errors.Join(ferr, err) // the old entry, if any, is still there
			continue
		}
		a.fes[k] = fe
		r.owners[k] = svc.Key
	}
	// 5. Frontends no longer served.
	for k := range a.fes {
		if _, ok := wanted[k]; ok {
			continue
		}
		if err := r.m.DeleteFrontend(k); err != nil {
			ferr = errors.Join(ferr, err) // still there: retried next time
			continue
		}
		delete(a.fes, k)
		if r.owners[k] == svc.Key {
			delete(r.owners, k)
		}
	}
	if ferr != nil {
		// Frontends disagree on the count: keep the old slots until all carry the new one.
		return ferr
	}
	a.count = count
	a.last = svc
	if r.batching {
		return nil // trimmed once the frontends' batch is written
	}
	return r.trim(a, len(want))
}

// trim deletes the slots past n, and the policy entries the service no longer uses, once no
// frontend points at them.
func (r *Reconciler) trim(a *applied, n int) error {
	for len(a.backends) > n {
		last := len(a.backends)
		if err := r.m.DeleteSlot(maps.SlotKey{ServiceID: a.id, Slot: uint32(last)}); err != nil {
			return err
		}
		r.ref(a.backends[last-1], -1)
		a.backends = a.backends[:last-1]
	}
	if a.last != nil {
		return r.settlePolicy(a.last, a)
	}
	return nil
}

// removeService deletes frontends first, so no packet reaches a slot being deleted.
func (r *Reconciler) removeService(k desired.ServiceKey, a *applied) error {
	for fk := range a.fes {
		if err := r.m.DeleteFrontend(fk); err != nil {
			return err
		}
		delete(a.fes, fk)
		if r.owners[fk] == k {
			delete(r.owners, fk)
		}
	}
	if k.Proto == maps.UDP {
		r.noteGone(a, nil, nil)
	}
	// No frontend points at the service now: its policy entries go (an empty policy keeps none).
	if err := r.settlePolicy(&desired.Service{}, a); err != nil {
		return err
	}
	for len(a.backends) > 0 {
		last := len(a.backends)
		if err := r.m.DeleteSlot(maps.SlotKey{ServiceID: a.id, Slot: uint32(last)}); err != nil {
			return err
		}
		r.ref(a.backends[last-1], -1)
		a.backends = a.backends[:last-1]
	}
	if err := r.m.DeleteServiceInfo(a.id); err != nil {
		return err
	}
	// Zeroed as the ID is freed, so the next service to get it starts at zero (a fresh map is
	// zero already, so a cold start writes no counters).
	if err := r.m.ResetServiceStats(a.id); err != nil {
		r.log.Warn("Could not reset service counters", zap.String("service", a.name), zap.Error(err))
	}
	delete(r.services, k)
	delete(r.svcIDs, a.id)
	return nil
}

func (r *Reconciler) ref(id uint32, d int) {
	if id != 0 {
		r.backendRefs[id] += d
		if r.backendRefs[id] <= 0 {
			r.unused[id] = true
		}
	}
}

func (r *Reconciler) backendID(b maps.Backend) (uint32, error) {
	if id, ok := r.backendIDs[b]; ok {
		return id, nil
	}
	if uint32(len(r.backends)) >= r.maxBackends {
		return 0, fmt.Errorf("add backend %s: %w (%d backends)", b, maps.ErrFull, r.maxBackends)
	}
	id := r.nextBackend
	for {
		if _, used := r.backends[id]; !used && id != 0 {
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

// pruneBackends deletes the backends no slot names any more; only those whose count fell to
// zero since the last prune are looked at.
func (r *Reconciler) pruneBackends() error {
	var errs []error
	for id := range r.unused {
		delete(r.unused, id)
		if r.backendRefs[id] > 0 {
			continue
		}
		if _, ok := r.backends[id]; !ok {
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
		if !r.svcIDs[id] {
			r.nextSvc = id % n
			return id, nil
		}
	}
	return 0, fmt.Errorf("allocate service ID: %w (%d services)", maps.ErrFull, r.maxServices-1)
}

// Stats is a summary of what is applied.
type Stats struct{ Services, Backends, Frontends int }

// Stats reports what the maps hold now.
func (r *Reconciler) Stats() Stats {
	s := Stats{Services: len(r.services), Backends: len(r.backends)}
	for _, a := range r.services {
		s.Frontends += len(a.fes)
	}
	return s
}

// ServiceID returns the datapath ID of an applied service.
func (r *Reconciler) ServiceID(k desired.ServiceKey) (uint32, bool) {
	a, ok := r.services[k]
	if !ok {
		return 0, false
	}
	return a.id, true
}
