package reconciler

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/maps"
)

// flusher deletes UDP flows of endpoints that stopped serving off the sync loop: a flush walks
// the whole connection table (a million entries and more on a busy node), and the sync loop
// must not wait for it. Requests made while one runs are merged into the next.
type flusher struct {
	m    maps.Maps
	log  *zap.Logger
	mu   sync.Mutex
	gone map[maps.FlowTarget]bool
	wake chan struct{}
}

// FlushInBackground makes Apply hand its UDP flushes to a goroutine that runs until ctx ends
// (the agent's way; tests and tools flush inline). A flush is asked for only after the
// frontends stop picking the endpoint, so running it later is still after that.
func (r *Reconciler) FlushInBackground(ctx context.Context) {
	f := &flusher{m: r.m, log: r.log, wake: make(chan struct{}, 1)}
	r.flusher = f
	go f.run(ctx)
}

func (f *flusher) add(gone map[maps.FlowTarget]bool) {
	f.mu.Lock()
	if f.gone == nil {
		f.gone = map[maps.FlowTarget]bool{}
	}
	for t := range gone {
		f.gone[t] = true
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *flusher) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		f.mu.Lock()
		gone := f.gone
		f.gone = nil
		f.mu.Unlock()
		if len(gone) == 0 {
			continue
		}
		n, err := f.m.FlushFlows(maps.UDP, gone)
		if err != nil {
			f.log.Warn("Could not flush the UDP flows of endpoints that stopped serving; retrying", zap.Int("pairs", len(gone)), zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			f.add(gone)
			continue
		}
		f.log.Debug("Flushed UDP flows of endpoints that stopped serving", zap.Int("pairs", len(gone)), zap.Int("entries", n))
	}
}
