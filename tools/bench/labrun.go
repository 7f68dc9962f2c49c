package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// runLab runs the datapath and sweep sections on one lab and one API server.
func runLab(ctx context.Context, cfg *config, res *Results) (err error) {
	e, err := newEnv(ctx, cfg)
	if err != nil {
		return fmt.Errorf("set up the lab: %w", err)
	}
	defer func() {
		if cerr := e.close(); cerr != nil {
			logf("cleanup: %v", cerr)
			err = errors.Join(err, fmt.Errorf("clean up the lab: %w", cerr))
		}
	}()
	if cfg.only["datapaths"] {
		t0 := time.Now()
		if res.Floor, err = e.measurePPS(ctx, e.floorSpec(), cfg.ppsRuns, cfg.ppsDuration); err != nil {
			return fmt.Errorf("harness floor: %w", err)
		}
		logf("harness floor (generator straight into a sink on node1): %s", res.Floor)
		if res.Floor6, err = e.measurePPS(ctx, e.floorSpec6(), cfg.ppsRuns, cfg.ppsDuration); err != nil {
			return fmt.Errorf("harness floor, IPv6: %w", err)
		}
		logf("harness floor, IPv6: %s", res.Floor6)
		for _, k := range datapaths {
			if cfg.datapaths != "" && !slices.Contains(strings.Split(cfg.datapaths, ","), k.name) {
				continue
			}
			d, err := e.runDatapath(ctx, k)
			res.Datapaths = append(res.Datapaths, d)
			if err != nil {
				if k == dpKPNFT && ctx.Err() == nil {
					// kube-proxy nftables may not run on every host (its nft version); the report says why,
					// and the other datapaths still compare.
					d.Error = err.Error()
					logf("%s FAILED (reported, not fatal): %v", k.name, err)
					continue
				}
				return fmt.Errorf("datapath %s: %w", k.name, err)
			}
			if d.PPS != nil && res.Floor != nil && res.Floor.NsPerPkt > 0 {
				d.PPS.NodeNsPerPkt = d.PPS.NsPerPkt - res.Floor.NsPerPkt
			}
			if d.PPSLocal != nil && res.Floor != nil && res.Floor.NsPerPkt > 0 {
				d.PPSLocal.NodeNsPerPkt = d.PPSLocal.NsPerPkt - res.Floor.NsPerPkt
			}
			for _, p := range []*PPS{d.PPS6, d.PPSLocal6} {
				if p != nil && res.Floor6 != nil && res.Floor6.NsPerPkt > 0 {
					p.NodeNsPerPkt = p.NsPerPkt - res.Floor6.NsPerPkt
				}
			}
		}
		logf("datapaths section took %v", time.Since(t0).Round(time.Second))
	}
	if cfg.only["incluster"] {
		t0 := time.Now()
		if err := e.runInCluster(ctx, res); err != nil {
			return fmt.Errorf("in-cluster: %w", err)
		}
		logf("in-cluster section took %v", time.Since(t0).Round(time.Second))
	}
	if cfg.only["sweep"] {
		t0 := time.Now()
		if err := e.runSweep(ctx, res); err != nil {
			return fmt.Errorf("sweep: %w", err)
		}
		logf("sweep section took %v", time.Since(t0).Round(time.Second))
	}
	return nil
}

// runDatapath starts one datapath and measures everything in the main table through it.
func (e *env) runDatapath(ctx context.Context, k dpKind) (d *Datapath, err error) {
	d = &Datapath{Name: k.name, Description: k.desc}
	logf("== %s: %s", k.name, k.desc)
	r, err := e.startDatapath(k)
	if err != nil {
		return d, err
	}
	defer func() {
		if serr := r.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	ready, err := r.waitServing(ctx, 60*time.Second, 0)
	if err != nil {
		return d, err
	}
	d.ReadySecs = ready.Seconds()
	d.Target = r.target(svcUDP).String()
	d.SinkMatched = fmt.Sprintf("remote: UDP to %v:%d; local: UDP to %v:%d", e.l.Pod2IP, svcUDP.targetPort, e.l.Pod1IP, svcUDPLocal.targetPort)
	if err := ctx.Err(); err != nil {
		return d, err
	}

	if d.PPS, err = e.measurePPS(ctx, e.remoteSpec(r.target(svcUDP)), e.cfg.ppsRuns, e.cfg.ppsDuration); err != nil {
		return d, fmt.Errorf("packet rate, remote backend: %w", err)
	}
	logf("%s: remote backend: %s", k.name, d.PPS)
	restore := func() error { return nil }
	if k == dpBare {
		restore = func() error { return setXDPPass(e.l.Pod1, "eth0") }
	}
	if d.PPSLocal, err = e.measurePPS(ctx, e.localSpec(r.target(svcUDPLocal), restore), e.cfg.ppsRuns, e.cfg.ppsDuration); err != nil {
		return d, fmt.Errorf("packet rate, local backend: %w", err)
	}
	logf("%s: local backend: %s", k.name, d.PPSLocal)
	if k != dpBare {
		e.measureIPv6(ctx, r, d)
	}
	// Traffic through the datapath again, after the sinks took frames away for a while.
	if _, err := r.waitServing(ctx, 10*time.Second+time.Since(r.start), 0); err != nil {
		return d, fmt.Errorf("after the packet rate: %w", err)
	}

	if d.Iperf, err = runIperf(ctx, e.l.Client, r.target(svcIperf), e.cfg.iperfSeconds); err != nil {
		return d, err
	}
	logf("%s: iperf3: %.2f Gbit/s (%d retransmits)", k.name, d.Iperf.Gbps, d.Iperf.Retransmits)
	url := "http://" + r.target(svcHTTP).String() + "/"
	if d.WrkKeep, err = runWrk(ctx, e.l.Client, url, e.cfg.wrkSeconds, e.cfg.wrkConns, true); err != nil {
		return d, err
	}
	logf("%s: wrk keep-alive: %s", k.name, d.WrkKeep)
	var served time.Duration
	if d.WrkClose, served, err = r.newConnections(ctx); err != nil {
		return d, err
	}
	d.NewServiceSecs = served.Seconds()
	logf("%s: wrk new connection per request: %s", k.name, d.WrkClose)
	if d.Reasons = r.reasons(); len(d.Reasons) > 0 {
		logf("%s: datapath counters: %v", k.name, d.Reasons)
	}
	if e.cfg.pause > 0 {
		logf("pausing %v: lab %s (nsenter --net=/var/run/netns/sl-%s-node1)", e.cfg.pause, e.l.ID, e.l.ID)
		time.Sleep(e.cfg.pause)
	}
	return d, nil
}
