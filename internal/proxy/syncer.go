package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/metrics"
	"github.com/sluicelb/sluice/internal/reconciler"
)

// Syncer keeps the desired state (a desired.Index, updated only for the services that changed)
// and applies it. Every FullEvery, and whenever the node's addresses change, it rebuilds
// everything, compares the maps with what was written (Reconciler.Repair) and applies all of
// it, repairing anything changed behind its back.
type Syncer struct {
	Tracker    *Tracker
	Reconciler *reconciler.Reconciler
	// Options shape the desired state (node name, NodePort range, default algorithm).
	Options desired.Options
	// Addresses returns the node addresses to serve NodePorts on.
	Addresses func() ([]netip.Addr, error)
	// NodeZone, if set, returns the node's zone label (topology hints); a change rebuilds.
	NodeZone  func() string
	FullEvery time.Duration // 0: every sync is full
	Log       *zap.Logger
	// Metrics and Health are optional.
	Metrics *metrics.Sync
	Health  *metrics.Health
	// AfterFullSync, if set, is called after each full sync with the number of service ports
	// it rebuilt (the agent returns the cold start's garbage to the OS).
	AfterFullSync func(services int)
	// HealthChecks, if set, is given the services with a healthCheckNodePort after each
	// sync (the agent answers them).
	HealthChecks func(map[types.NamespacedName]desired.HealthCheck)
	// Updated, if set, is called after each sync that programmed the objects (the node health
	// server's Updated): not while the source's first complete set is not in, nor after a
	// failed sync.
	Updated func()

	idx      *desired.Index
	addrs    []netip.Addr
	lastFull time.Time
	problems map[string]bool // the problems logged, so each is logged once, not every sync
	pending  map[desired.ServiceKey]bool
}

// Sync programs the datapath from the current objects. It does nothing until the source has
// delivered its first complete set, so a restart never prunes services not yet re-read.
//
// A service that cannot be written (a full map) does not fail the sync: it is logged by name,
// counted, and retried with the next sync, while everything else goes on being programmed on
// time and the agent stays healthy.
func (s *Syncer) Sync() error {
	// Read the addresses first: a failure here must not lose the pending changes.
	addrs, err := s.Addresses()
	if err != nil {
		return fmt.Errorf("read node addresses: %w", err)
	}
	ch := s.Tracker.TakeChanges()
	if !ch.Synced {
		return nil
	}
	start := time.Now()
	err = s.sync(ch, addrs)
	if err != nil && reconciler.OnlyServiceErrors(err) {
		s.Log.Error("Some services could not be programmed; retrying with the next sync", zap.Error(err))
		if s.Metrics != nil {
			s.Metrics.Errors.Inc()
		}
		err = nil
	}
	end := time.Now()
	if s.Metrics != nil {
		s.Metrics.Duration.Observe(end.Sub(start).Seconds())
		if err != nil {
			s.Metrics.Errors.Inc()
		} else {
			for _, t := range ch.Triggers {
				s.Metrics.ProgrammingLatency.Observe(end.Sub(t).Seconds())
			}
			s.Metrics.LastSync.Set(float64(end.Unix()))
		}
	}
	if err != nil {
		// Not all written: measure these changes on the sync that does.
		s.Tracker.requeue(ch.Triggers)
		return err
	}
	if s.Health != nil {
		s.Health.Synced(end)
	}
	if s.Updated != nil {
		s.Updated()
	}
	return nil
}

func (s *Syncer) sync(ch Changes, addrs []netip.Addr) error {
	start := time.Now()
	var err error
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	full := s.idx == nil || !slices.Equal(addrs, s.addrs) || time.Since(s.lastFull) >= s.FullEvery
	if s.NodeZone != nil {
		if zone := s.NodeZone(); zone != s.Options.NodeZone {
			s.Options.NodeZone, full = zone, true // every service's topology may change
		}
	}
	var keys []desired.ServiceKey
	var problems []desired.Problem
	names := ch.Dirty
	if full {
		s.idx = desired.NewIndex(s.Options)
		names = s.Tracker.ServiceNames()
	}
	for _, n := range names {
		svc, sls := s.Tracker.Service(n)
		k, p := s.idx.Set(n, svc, sls)
		keys = append(keys, k...)
		problems = append(problems, p...)
	}
	// A failed service is retried with the next sync's changes.
	for k := range s.pending {
		keys = append(keys, k)
	}
	if full {
		problems = append(problems, s.idx.Conflicts()...)
	} else {
		problems = append(problems, s.idx.ConflictsFor(keys)...)
	}
	s.logProblems(problems, full)
	st := desired.State{Addresses: addrs, Services: s.idx.Services}
	s.logChanges(st, keys)
	if full {
		// What changed behind the agent is written again by this Apply.
		if n, rerr := s.Reconciler.Repair(); rerr != nil {
			s.Log.Warn("Could not compare the maps with what was written", zap.Error(rerr))
		} else if n > 0 {
			s.Log.Warn("Map entries changed behind the agent; writing them again", zap.Int("entries", n))
		}
		err = s.Reconciler.Apply(st)
		s.lastFull, s.addrs = time.Now(), addrs
		if s.AfterFullSync != nil {
			defer s.AfterFullSync(len(keys))
		}
	} else {
		err = s.Reconciler.ApplyKeys(st, keys)
	}
	if s.HealthChecks != nil {
		hcs := make(map[types.NamespacedName]desired.HealthCheck, len(s.idx.HealthChecks))
		for n, hc := range s.idx.HealthChecks {
			hcs[n] = hc
		}
		s.HealthChecks(hcs)
	}
	s.pending = map[desired.ServiceKey]bool{}
	for _, k := range reconciler.FailedKeys(err) {
		s.pending[k] = true
	}
	stats := s.Reconciler.Stats()
	if s.Metrics != nil {
		s.Metrics.Services.Set(float64(stats.Services))
		s.Metrics.Backends.Set(float64(stats.Backends))
		s.Metrics.Frontends.Set(float64(stats.Frontends))
		full, other := countFailures(err)
		s.Metrics.FailedServices.WithLabelValues("map_full").Set(float64(full))
		s.Metrics.FailedServices.WithLabelValues("other").Set(float64(other))
	}
	s.Log.Debug("Synced", zap.Bool("full", full), zap.Int("changed", len(keys)), zap.Duration("took", time.Since(start)),
		zap.Int("services", stats.Services), zap.Int("backends", stats.Backends), zap.Int("frontends", stats.Frontends))
	return err
}

func (s *Syncer) logProblems(problems []desired.Problem, full bool) {
	if s.problems == nil || full {
		prev := s.problems
		s.problems = map[string]bool{}
		for _, p := range problems {
			if !prev[p.Error()] {
				s.Log.Error("Skipping invalid object", zap.String("object", p.Object), zap.Error(p.Err))
			}
			s.problems[p.Error()] = true
		}
		return
	}
	for _, p := range problems {
		if !s.problems[p.Error()] {
			s.Log.Error("Skipping invalid object", zap.String("object", p.Object), zap.Error(p.Err))
			s.problems[p.Error()] = true
		}
	}
}

// logChanges logs each changed service port at info: what an operator greps for.
func (s *Syncer) logChanges(st desired.State, keys []desired.ServiceKey) {
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for i, k := range keys {
		if i > 0 && keys[i-1] == k {
			continue
		}
		if svc, ok := st.Services[k]; ok {
			if prev, had := s.Reconciler.Applied(k); !had || prev == nil || !prev.Equal(svc) || prev.Name != svc.Name {
				s.Log.Info("Service programmed", zap.String("service", svc.Name), zap.Stringer("key", k),
					zap.Int("backends", len(svc.Backends)), zap.String("detail", svc.Describe()))
			}
		} else if _, had := s.Reconciler.Applied(k); had {
			s.Log.Info("Service removed", zap.Stringer("key", k))
		}
	}
}

// countFailures splits Apply's joined per-service errors into full maps and the rest.
func countFailures(err error) (full, other int) {
	for _, e := range reconciler.Errors(err) {
		if errors.Is(e, maps.ErrFull) {
			full++
		} else {
			other++
		}
	}
	return full, other
}
