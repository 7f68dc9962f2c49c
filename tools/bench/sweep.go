package main

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The scale sweep: N NodePort services in the API server (the 4 measured ones plus fillers,
// each with one endpoint), each proxy started cold on node1 and timed from its start until it
// serves the measured services (and, for sluice, until every frontend is in its maps; kube-
// proxy syncs nothing before it has listed every service and slice, and writes them all in
// one iptables-restore or nft transaction, so its first working NodePort means all are
// written). Then the forwarded packet rate (established UDP flows) and new connections per
// second (wrk, a connection per request) at that size. A proxy that takes longer than the
// budget is stopped and not tried with more services.

var sweepDatapaths = []dpKind{dpSluXDP, dpKPIPT, dpKPNFT}

func (e *env) runSweep(ctx context.Context, res *Results) error {
	over := map[string]string{}
	for _, d := range res.Datapaths {
		if d.Error != "" {
			over[d.Name] = "failed in the datapath section: " + d.Error
		}
	}
	for _, n := range e.cfg.sweepServices {
		fill := max(n-len(benchSvcs), 0)
		if err := e.fillTo(ctx, fill); err != nil {
			return err
		}
		total := fill + len(benchSvcs)
		for _, k := range sweepDatapaths {
			if why, ok := over[k.name]; ok {
				res.Sweep = append(res.Sweep, &SweepPoint{Datapath: k.name, Services: total, Error: "not run: " + why})
				continue
			}
			p, err := e.sweepPoint(ctx, k, total)
			res.Sweep = append(res.Sweep, p)
			if err != nil {
				if (k == dpKPNFT || p.OverBudget) && ctx.Err() == nil {
					p.Error = err.Error()
					over[k.name] = fmt.Sprintf("%s at %d services", map[bool]string{true: "over budget", false: "failed"}[p.OverBudget], total)
					logf("sweep: %s with %d services: %v", k.name, total, err)
					continue
				}
				return fmt.Errorf("%s with %d services: %w", k.name, total, err)
			}
		}
	}
	return nil
}

func (e *env) sweepPoint(ctx context.Context, k dpKind, services int) (p *SweepPoint, err error) {
	p = &SweepPoint{Datapath: k.name, Services: services}
	r, err := e.startDatapath(k)
	if err != nil {
		return p, err
	}
	defer func() {
		if serr := r.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	took, err := r.waitServing(ctx, e.cfg.sweepBudget, services)
	p.ProgramSecs = took.Seconds()
	if err != nil {
		if r.agent == nil || !r.agent.Exited() {
			p.OverBudget = took >= e.cfg.sweepBudget
		}
		return p, err
	}
	p.RSSMB = rssMB(r.pid())
	if k == dpKPIPT || k == dpKPNFT {
		if s, _, err := r.kubeProxySyncSeconds(); err == nil {
			p.SyncSecs = s
		} else {
			logf("sweep: %s: %v", k.name, err)
		}
	}
	runs := max(e.cfg.ppsRuns-1, 1)
	if p.PPS, err = e.measurePPS(ctx, e.remoteSpec(r.target(svcUDP)), runs, e.cfg.ppsDuration); err != nil {
		return p, fmt.Errorf("packet rate: %w", err)
	}
	if _, err := r.waitServing(ctx, 10*time.Second+time.Since(r.start), 0); err != nil {
		return p, fmt.Errorf("after the packet rate: %w", err)
	}
	var served time.Duration
	p.WrkClose, served, err = r.newConnections(ctx)
	p.NewServiceSecs = served.Seconds()
	if errors.Is(err, errOverBudget) {
		p.OverBudget = true
	}
	if err != nil {
		return p, err
	}
	logf("sweep: %-20s %6d services: serving %.2fs after start (own sync %.2fs), RSS %.0f MB; %s; a new service served after %.2fs; new connections %s",
		k.name, services, p.ProgramSecs, p.SyncSecs, p.RSSMB, p.PPS, p.NewServiceSecs, p.WrkClose)
	return p, nil
}
