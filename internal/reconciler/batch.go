package reconciler

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maps"
)

// Batched applies (many services at once) and the recovery from a failed batch.

// batchThreshold is how many services make Apply batch its writes.
const batchThreshold = 256

// applyBatched writes every service's backends and slots in one batch, then the policy
// entries (which name backends) unbuffered, then every frontend in another batch: the same order as one service at a time, across all of them. If a batch fails (a
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
	// Policy entries name backends: written unbuffered, once the backends are there.
	for _, k := range keys {
		if p, ok := preps[k]; ok {
			if err := r.preparePolicy(st.Services[k], p.a, p.want); err != nil {
				errs = append(errs, &ServiceError{Key: k, Name: st.Services[k].Name, Err: err})
				delete(preps, k)
			}
		}
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
	if err := r.relearn(); err != nil {
		return []error{cause, err}
	}
	r.noBatch = true
	defer func() { r.noBatch = false }()
	return Errors(r.Apply(st))
}

// relearn replaces the bookkeeping with what the maps hold (Restore). If that fails, the
// bookkeeping is marked lost, and every later Apply relearns first and writes nothing until it
// succeeds: writes planned from bookkeeping that disagrees with the maps could point a
// frontend at slots that are not there.
func (r *Reconciler) relearn() error {
	fresh := New(r.m, r.maxServices, r.maxBackends, r.log)
	fresh.MaglevSize, fresh.batchAt, fresh.flusher = r.MaglevSize, r.batchAt, r.flusher
	// Not in the maps, so not restored: endpoints whose UDP flows are still to be flushed, and
	// services waiting for a key.
	fresh.goneUDP, fresh.waiting = r.goneUDP, r.waiting
	if _, err := fresh.Restore(); err != nil {
		r.lost = true
		return fmt.Errorf("relearn the maps: %w", err)
	}
	*r = *fresh
	return nil
}
