package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/metrics"
	"github.com/sluicelb/sluice/internal/reconciler"
)

// Syncer builds the desired state from the tracker's snapshot and applies it.
type Syncer struct {
	Tracker       *Tracker
	Reconciler    *reconciler.Reconciler
	NodeName      string
	NodePortRange desired.PortRange
	// Addresses returns the node addresses to serve NodePorts on (re-read every sync, so an
	// address change is picked up by the next periodic resync).
	Addresses func() ([]netip.Addr, error)
	Log       *zap.Logger
	// Metrics and Health are optional.
	Metrics *metrics.Sync
	Health  *metrics.Health

	problems map[string]bool // last sync's, so each is logged once, not every sync
	applied  map[desired.ServiceKey]*desired.Service
}

// Sync programs the datapath from the current objects. It does nothing until the source has
// delivered its first complete set, so a restart never prunes services not yet re-read.
func (s *Syncer) Sync() error {
	snap := s.Tracker.Snapshot()
	if !snap.Synced {
		return nil
	}
	start := time.Now()
	err := s.sync(snap)
	end := time.Now()
	if s.Metrics != nil {
		s.Metrics.Duration.Observe(end.Sub(start).Seconds())
		if err != nil {
			s.Metrics.Errors.Inc()
		} else {
			for _, t := range snap.Triggers {
				s.Metrics.ProgrammingLatency.Observe(end.Sub(t).Seconds())
			}
			s.Metrics.LastSync.Set(float64(end.Unix()))
		}
	}
	if err != nil {
		// The changes are not all written: measure them on the sync that does.
		s.Tracker.requeue(snap.Triggers)
		return err
	}
	if s.Health != nil {
		s.Health.Synced(end)
	}
	return nil
}

func (s *Syncer) sync(snap Snapshot) error {
	start := time.Now()
	addrs, err := s.Addresses()
	if err != nil {
		return fmt.Errorf("read node addresses: %w", err)
	}
	st, problems := desired.Build(desired.Input{
		NodeName: s.NodeName, Addresses: addrs, NodePortRange: s.NodePortRange,
		Services: snap.Services, Slices: snap.Slices,
	})
	s.logProblems(problems)
	s.logChanges(st)
	err = s.Reconciler.Apply(st)
	stats := s.Reconciler.Stats()
	if s.Metrics != nil {
		s.Metrics.Services.Set(float64(stats.Services))
		s.Metrics.Backends.Set(float64(stats.Backends))
		s.Metrics.Frontends.Set(float64(stats.Frontends))
		full, other := countFailures(err)
		s.Metrics.FailedServices.WithLabelValues("map_full").Set(float64(full))
		s.Metrics.FailedServices.WithLabelValues("other").Set(float64(other))
	}
	s.Log.Debug("Synced", zap.Duration("took", time.Since(start)), zap.Int("services", stats.Services),
		zap.Int("backends", stats.Backends), zap.Int("frontends", stats.Frontends))
	if err != nil {
		return fmt.Errorf("apply desired state: %w", err)
	}
	return nil
}

func (s *Syncer) logProblems(problems []Problem) {
	now := map[string]bool{}
	for _, p := range problems {
		msg := p.Error()
		now[msg] = true
		if !s.problems[msg] {
			s.Log.Error("Skipping invalid object", zap.String("object", p.Object), zap.Error(p.Err))
		}
	}
	s.problems = now
}

// logChanges logs each service whose programming changes, at info: what an operator greps for.
func (s *Syncer) logChanges(st desired.State) {
	keys := make([]desired.ServiceKey, 0, len(st.Services))
	for k := range st.Services {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		svc := st.Services[k]
		if old := s.applied[k]; old == nil || !old.Equal(svc) || old.Name != svc.Name {
			s.Log.Info("Service programmed", zap.String("service", svc.Name), zap.Stringer("nodePort", k),
				zap.Int("backends", len(svc.Backends)), zap.String("detail", svc.Describe()))
		}
	}
	for k, old := range s.applied {
		if _, ok := st.Services[k]; !ok {
			s.Log.Info("Service removed", zap.String("service", old.Name), zap.Stringer("nodePort", k))
		}
	}
	s.applied = st.Services
}

// Problem is desired.Problem, named here for the logger.
type Problem = desired.Problem

// countFailures splits Apply's joined per-service errors into full maps and the rest.
func countFailures(err error) (full, other int) {
	if err == nil {
		return 0, 0
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		if errors.Is(e, maps.ErrFull) {
			full++
		} else {
			other++
		}
	}
	return full, other
}
