package reconciler

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// flusher deletes UDP flows of endpoints that stopped serving off the sync loop: a flush walks
// the whole connection table (a million entries and more on a busy node), and the sync loop
// must not wait for it. Requests made while one runs are merged into the next.
type flusher struct {
	m         maps.Maps
	terminate Terminator
	log       *zap.Logger
	mu        sync.Mutex
	gone      map[maps.FlowTarget]bool
	wake      chan struct{}
}

// FlushInBackground makes Apply hand its UDP flushes to a goroutine that runs until ctx ends
// (the agent's way; tests and tools flush inline). A flush is asked for only after the
// frontends stop picking the endpoint, so running it later is still after that.
func (r *Reconciler) FlushInBackground(ctx context.Context) {
	f := &flusher{m: r.m, terminate: r.Terminate, log: r.log, wake: make(chan struct{}, 1)}
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
		n, err := f.m.FlushFlows(lb.UDP, gone)
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
		terminate(f.terminate, gone, f.log)
	}
}

// Terminator ends the sockets the socket programs pointed at endpoints that stopped serving
// (sockterm.Terminator's Terminate), the socket path's flush; it returns how many it ended.
type Terminator func(gone map[maps.FlowTarget]bool) (int, error)

// terminate runs t, if set, and logs what it did: a socket it could not end stays pointed at
// the old endpoint, as a flow would that could not be flushed, so it is a warning, not a retry
// (the socket would be found again only by chance).
func terminate(t Terminator, gone map[maps.FlowTarget]bool, log *zap.Logger) {
	if t == nil {
		return
	}
	n, err := t(gone)
	if err != nil {
		log.Warn("Could not end every UDP socket pointed at endpoints that stopped serving", zap.Int("ended", n), zap.Error(err))
		return
	}
	if n > 0 {
		log.Info("Ended UDP sockets pointed at endpoints that stopped serving", zap.Int("sockets", n))
	}
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
	n, err := r.m.FlushFlows(lb.UDP, r.goneUDP)
	if err != nil {
		return fmt.Errorf("flush UDP flows of removed endpoints: %w", err)
	}
	r.log.Debug("Flushed UDP flows of removed endpoints", zap.Int("pairs", len(r.goneUDP)), zap.Int("entries", n))
	terminate(r.Terminate, r.goneUDP, r.log)
	r.goneUDP = nil
	return nil
}
