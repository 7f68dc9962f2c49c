// Package reconciler keeps the datapath's maps equal to the desired state: it diffs against
// what it applied before (restored from the pinned maps at start), writes only what changed,
// in an order the datapath can read at any moment, and prunes what is left over.
//
// By concern: reconciler.go applies services (prepare: backends and slots; publish:
// frontends); restore.go reads a previous agent's maps; ids.go allocates service and backend
// IDs and prunes backends; policy.go writes affinity, source-range and Maglev entries;
// batch.go batches large applies and recovers from a failed batch; flush.go flushes UDP flows
// of endpoints that stopped serving; drift.go repairs entries changed behind the agent;
// errors.go holds the per-service errors.
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
	"github.com/sluicelb/sluice/internal/lb"
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
	fes      map[lb.FrontendKey]lb.Frontend
	last     *desired.Service

	matches     map[uint32]bool // session affinity: backend IDs written as the service's
	ranges      []netip.Prefix  // loadBalancerSourceRanges written
	maglev      []uint32        // backend IDs (by slot) the Maglev table was built from
	maglevHeld  []uint32        // the distinct backend IDs the table in the map names
	maglevStale bool            // a table of unknown content is there (restored)
	// serving: the endpoints the service's flows may go to (its serving endpoints, and every
	// backend it has used): a UDP flow is flushed when its endpoint leaves (noteGone).
	serving map[netip.AddrPort]bool
}

func newApplied(id uint32) *applied {
	return &applied{id: id, fes: map[lb.FrontendKey]lb.Frontend{}, matches: map[uint32]bool{}}
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

	backendIDs  map[lb.Backend]uint32
	backends    map[uint32]lb.Backend
	backendRefs map[uint32]int
	unused      map[uint32]bool // backends whose count fell to zero: pruned after the writes
	nextBackend uint32
	nextSvc     uint32 // where the search for a free service ID starts

	// owners says which service port holds each frontend key: load-balancer and external IPs
	// of two services may collide, and the first one keeps the key.
	owners map[lb.FrontendKey]desired.ServiceKey
	// waiting are the service ports that wanted a key another one held: when the holder lets
	// it go, they are published again in the same Apply (else the key would stay unserved
	// until their next change).
	waiting map[lb.FrontendKey]map[desired.ServiceKey]bool
	// Terminate, if set, ends the sockets pointed at endpoints whose UDP flows are flushed
	// (set before FlushInBackground).
	Terminate Terminator
	// MaglevSize is the entries of each Maglev table: what the maps say their tables hold
	// (maps.MaglevSizer), else maglev.DefaultTableSize.
	MaglevSize uint32

	// Left by a previous agent with no service of ours: deleted by the next Apply.
	orphans orphans
	// goneUDP are (service, endpoint) pairs whose endpoint stopped serving: their UDP flows are
	// flushed once the frontends no longer pick it.
	goneUDP  map[maps.FlowTarget]bool
	flusher  *flusher // set by FlushInBackground
	noBatch  bool     // set while recovering from a failed batch
	batchAt  int      // how many services make Apply batch (batchThreshold; tests lower it)
	lost     bool     // the bookkeeping may disagree with the maps: relearn before writing
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
		backendIDs:  map[lb.Backend]uint32{},
		backends:    map[uint32]lb.Backend{},
		backendRefs: map[uint32]int{},
		unused:      map[uint32]bool{},
		owners:      map[lb.FrontendKey]desired.ServiceKey{},
		waiting:     map[lb.FrontendKey]map[desired.ServiceKey]bool{},
		nextBackend: 1,
		MaglevSize:  size,
		orphans:     newOrphans(),
		batchAt:     batchThreshold,
	}
}

// Apply makes the maps hold st. A service that cannot be written (a full map, say) is
// reported in the returned error by name and left as it was; every other service is applied.
// Calling Apply again with the same state writes nothing.
func (r *Reconciler) Apply(st desired.State) error {
	if r.lost {
		if err := r.relearn(); err != nil {
			return err
		}
	}
	var errs []error
	if err := r.deleteOrphans(); err != nil {
		errs = append(errs, err)
	}
	// Removals first: they free service IDs and map room for the additions. In order, so
	// the writes are the same each run.
	var gone []desired.ServiceKey
	for k := range r.services {
		if _, ok := st.Services[k]; !ok {
			gone = append(gone, k)
		}
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].Less(gone[j]) })
	for _, k := range gone {
		if err := r.removeService(k, r.services[k]); err != nil {
			errs = append(errs, &ServiceError{Key: k, Name: r.services[k].name, Err: err, Removing: true})
		}
	}
	keys := make([]desired.ServiceKey, 0, len(st.Services))
	for k := range st.Services {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	if b, ok := r.m.(maps.Batcher); ok && len(keys) >= r.batchAt && !r.noBatch {
		errs = append(errs, r.applyBatched(b, st, keys)...)
	} else {
		for _, k := range keys {
			if err := r.applyService(st.Services[k], st.Addresses); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: st.Services[k].Name, Err: err})
			}
		}
	}
	if r.lost {
		return errors.Join(errs...) // nothing more may be planned from the bookkeeping
	}
	errs = append(errs, r.handOver(st)...)
	if err := r.pruneBackends(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, r.flushGone())
	return errors.Join(errs...)
}

// ApplyKeys is Apply for the service ports in keys only: those in st are written, those not in
// st are removed. The sync loop uses it for the services that changed; a full Apply repairs
// everything else periodically.
func (r *Reconciler) ApplyKeys(st desired.State, keys []desired.ServiceKey) error {
	if r.lost {
		if err := r.relearn(); err != nil {
			return err
		}
	}
	var errs []error
	if err := r.deleteOrphans(); err != nil {
		errs = append(errs, err)
	}
	keys = slices.Clone(keys)
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
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
	if r.lost {
		return errors.Join(errs...) // nothing more may be planned from the bookkeeping
	}
	errs = append(errs, r.handOver(st)...)
	if err := r.pruneBackends(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, r.flushGone())
	return errors.Join(errs...)
}

// handOver publishes again the service ports waiting for a key its holder let go; the first
// in order gets it, as in a fresh Apply.
func (r *Reconciler) handOver(st desired.State) []error {
	var errs []error
	var again []desired.ServiceKey
	for k, ws := range r.waiting {
		// Waiters that no longer want the key stop waiting (else the set only grows).
		for sk := range ws {
			if svc := st.Services[sk]; svc == nil || !svc.Serves(k, st.Addresses) {
				delete(ws, sk)
			}
		}
		if len(ws) == 0 {
			delete(r.waiting, k)
			continue
		}
		if owner, ok := r.owners[k]; ok && r.services[owner] != nil {
			continue
		}
		for sk := range ws {
			if st.Services[sk] != nil && !slices.Contains(again, sk) {
				again = append(again, sk)
			}
		}
		delete(r.waiting, k)
	}
	sort.Slice(again, func(i, j int) bool { return again[i].Less(again[j]) })
	for _, sk := range again {
		if err := r.applyService(st.Services[sk], st.Addresses); err != nil {
			errs = append(errs, &ServiceError{Key: sk, Name: st.Services[sk].Name, Err: err})
		}
	}
	return errs
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
	if err := r.preparePolicy(svc, a, want); err != nil {
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
	if a.name != svc.Name || a.local != svc.Local() {
		info := maps.ServiceInfo{Name: svc.Name, NodePort: svc.Key.NodePort, Proto: svc.Key.Proto, Updated: time.Now(),
			ExternalLocal: svc.Local(), Scope: uint8(svc.Key.Scope), Family: svc.Key.Family}
		if err := r.m.UpdateServiceInfo(a.id, info); err != nil {
			return nil, nil, err
		}
		a.name, a.local = svc.Name, svc.Local()
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
	if len(svc.LoadBalancerIPs)+len(svc.ExternalIPs)+len(svc.ClusterIPs) > 0 {
		// Load-balancer, external and cluster IPs are served on the service port.
		if err := r.m.SetFrontendPort(svc.Port); err != nil {
			return nil, nil, err
		}
	}
	if len(want) > 0xffff {
		return nil, nil, fmt.Errorf("write slots: %d backends, at most 65535 per service", len(want))
	}
	if svc.Key.Proto == lb.UDP {
		r.noteGone(a, svc, want)
	}
	// 2. Slots 1..n. The frontends still carry the old count, so a packet reads either an old
	// or a new backend in each slot, never an empty one.
	for i, id := range want {
		if i < len(a.backends) && a.backends[i] == id {
			continue
		}
		sk := maps.SlotKey{ServiceID: a.id, Slot: uint32(i + 1)}
		if err := r.m.UpdateSlot(sk, id); err != nil {
			return nil, nil, err
		}
		r.ref(id, +1)
		r.slotWritten(sk)
		if i < len(a.backends) {
			r.ref(a.backends[i], -1)
			a.backends[i] = id
		} else {
			a.backends = append(a.backends, id)
		}
	}
	// 3. (preparePolicy) What the frontends' flags will turn on; after the backends are
	// written, which a batch does only at its flush.
	return a, want, nil
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
			if r.waiting[k] == nil {
				r.waiting[k] = map[desired.ServiceKey]bool{}
			}
			r.waiting[k][svc.Key] = true
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
	if r.orphans.read(a.id) {
		return nil // a leftover frontend may read past n: trimmed once it is gone
	}
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
	if k.Proto == lb.UDP {
		r.noteGone(a, nil, nil)
	}
	// No frontend points at the service now: its policy entries go (an empty policy keeps none).
	if r.orphans.read(a.id) {
		return fmt.Errorf("remove service %d: a leftover frontend still reads its slots; retried", a.id)
	}
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
