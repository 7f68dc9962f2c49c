package main

import "fmt"

func (r *Results) datapath(name string) *Datapath {
	for _, d := range r.Datapaths {
		if d.Name == name && d.Error == "" {
			return d
		}
	}
	return nil
}

func (p *PerPacket) point(services, backends int) *PerPktPoint {
	if p == nil {
		return nil
	}
	for _, pt := range p.Points {
		if pt.Services == services && pt.Backends == backends {
			return pt
		}
	}
	return nil
}

// extremes returns the per-packet points with one backend per service at the fewest and the
// most services measured.
func (p *PerPacket) extremes() (lo, hi *PerPktPoint) {
	if p == nil {
		return nil, nil
	}
	for _, pt := range p.Points {
		if pt.Backends != 1 {
			continue
		}
		if lo == nil || pt.Services < lo.Services {
			lo = pt
		}
		if hi == nil || pt.Services > hi.Services {
			hi = pt
		}
	}
	return lo, hi
}

func mpps(p *PPS) float64 {
	if p == nil {
		return 0
	}
	return p.FwdMpps
}

// computeRatios fills Ratios and Goals from the figures (all from this run).
func computeRatios(r *Results) {
	r.Ratios, r.Goals = nil, nil
	add := func(name, of string, num, den float64) float64 {
		if num <= 0 || den <= 0 {
			return 0
		}
		v := num / den
		r.Ratios = append(r.Ratios, Ratio{Name: name, Value: v, Of: of})
		return v
	}
	inClusterRatios(r, add)
	ipv6Ratios(r, add)
	slu, tc, ipt, nft := r.datapath("sluice-xdp"), r.datapath("sluice-tc"), r.datapath("kube-proxy-iptables"), r.datapath("kube-proxy-nftables")
	bare, plain := r.datapath("bare-xdp"), r.datapath("plain")
	type pair struct {
		a, b *Datapath
	}
	var vsIPT, vsBare float64
	for _, path := range []string{"remote", "local"} {
		get := func(d *Datapath) float64 {
			if d == nil {
				return 0
			}
			if path == "remote" {
				return mpps(d.PPS)
			}
			return mpps(d.PPSLocal)
		}
		for _, c := range []struct {
			a, b *Datapath
		}{{slu, ipt}, {slu, nft}, {slu, bare}, {slu, plain}, {tc, ipt}, {nft, ipt}, {ipt, plain}} {
			if c.a == nil || c.b == nil {
				continue
			}
			v := add(fmt.Sprintf("%s / %s, forwarded Mpps, %s backend", c.a.Name, c.b.Name, path), "packet rate", get(c.a), get(c.b))
			if path == "remote" && c.a == slu && c.b == ipt {
				vsIPT = v
			}
			if path == "remote" && c.a == slu && c.b == bare {
				vsBare = v
			}
		}
	}
	if slu != nil && bare != nil && slu.PPS != nil && bare.PPS != nil && slu.PPS.NodeNsPerPkt > 0 && bare.PPS.NodeNsPerPkt > 0 {
		add("sluice-xdp / bare-xdp, node1's ns per packet (harness floor subtracted), remote backend", "packet rate", slu.PPS.NodeNsPerPkt, bare.PPS.NodeNsPerPkt)
	}
	for _, c := range []pair{{slu, ipt}, {slu, nft}, {tc, ipt}, {slu, plain}} {
		if c.a == nil || c.b == nil {
			continue
		}
		if c.a.Iperf != nil && c.b.Iperf != nil {
			add(fmt.Sprintf("%s / %s, iperf3 Gbit/s", c.a.Name, c.b.Name), "iperf3", c.a.Iperf.Gbps, c.b.Iperf.Gbps)
		}
		if c.a.WrkKeep != nil && c.b.WrkKeep != nil {
			add(fmt.Sprintf("%s / %s, wrk keep-alive requests/s", c.a.Name, c.b.Name), "wrk", c.a.WrkKeep.RPS, c.b.WrkKeep.RPS)
		}
		if c.a.WrkClose != nil && c.b.WrkClose != nil {
			add(fmt.Sprintf("%s / %s, wrk new-connection requests/s", c.a.Name, c.b.Name), "wrk", c.a.WrkClose.RPS, c.b.WrkClose.RPS)
		}
	}

	pp := r.PerPacket
	var estTrivial, flat float64
	flatText := "per-packet cost flat from 1 to 100k services (≤ +10%; established flow, and new flow to one service)"
	if pp != nil {
		lo, hi := pp.extremes()
		if lo != nil {
			estTrivial = add("established flow / trivial XDP, ns per packet", "per-packet", lo.EstablishedNs, lo.TrivialNs)
			add("established flow / bare XDP forwarder, ns per packet", "per-packet", lo.EstablishedNs, pp.BareNs)
			add("reply / trivial XDP, ns per packet", "per-packet", lo.ReplyNs, lo.TrivialNs)
			add("non-frontend miss / trivial XDP, ns per packet", "per-packet", lo.MissNs, lo.TrivialNs)
			add("new flow / trivial XDP single-shot, ns per packet", "per-packet", lo.NewFlowNs, lo.TrivialOneNs)
		}
		if lo != nil && hi != nil && hi != lo {
			span := fmt.Sprintf("%d / %d services", hi.Services, lo.Services)
			a := add("new flow to one service, "+span+", ns per packet", "per-packet", hi.NewFlowOneNs, lo.NewFlowOneNs)
			b := add("established flow, "+span+", ns per packet", "per-packet", hi.EstablishedNs, lo.EstablishedNs)
			add("non-frontend miss, "+span+", ns per packet", "per-packet", hi.MissNs, lo.MissNs)
			add("new flow to a random service, "+span+", ns per packet", "per-packet", hi.NewFlowNs, lo.NewFlowNs)
			flat = max(a, b)
			if hi.Services < 100000 || lo.Services > 1 {
				flatText = fmt.Sprintf("per-packet cost flat from %d to %d services (the goal is 1 to 100k; ≤ +10%%; established flow, and new flow to one service)", lo.Services, hi.Services)
			}
		}
	}
	// Sweep ratios: the most services over the fewest, per proxy.
	for _, k := range sweepDatapaths {
		var lo, hi *SweepPoint
		for _, p := range r.Sweep {
			if p.Datapath != k.name || p.PPS == nil {
				continue
			}
			if lo == nil || p.Services < lo.Services {
				lo = p
			}
			if hi == nil || p.Services > hi.Services {
				hi = p
			}
		}
		if lo == nil || hi == nil || lo == hi {
			continue
		}
		span := fmt.Sprintf("%d / %d services", hi.Services, lo.Services)
		add(k.name+", forwarded Mpps, "+span, "sweep", hi.PPS.FwdMpps, lo.PPS.FwdMpps)
		if hi.WrkClose != nil && lo.WrkClose != nil {
			add(k.name+", new connections/s, "+span, "sweep", hi.WrkClose.RPS, lo.WrkClose.RPS)
		}
		add(k.name+", start to programmed, "+span, "sweep", hi.ProgramSecs, lo.ProgramSecs)
	}

	goal := func(text string, measured, target float64, cmp string, known bool) {
		g := Goal{Goal: text, Measured: measured, Target: target, Cmp: cmp, Known: known && measured > 0}
		if g.Known {
			if cmp == ">=" {
				g.Met = measured >= target
			} else {
				g.Met = measured <= target
			}
		}
		r.Goals = append(r.Goals, g)
	}
	goal("forwarded packets/s ≥ 5× kube-proxy iptables (sluice XDP, remote backend)", vsIPT, 5, ">=", true)
	goal("forwarded packets/s ≥ 85% of the bare XDP forwarder (sluice XDP, remote backend)", vsBare, 0.85, ">=", true)
	goal(flatText, flat, 1.10, "<=", true)
	goal("established flow ≤ 1.5× trivial XDP in ns/packet", estTrivial, 1.5, "<=", true)
}
