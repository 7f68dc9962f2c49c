package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sluicelb/sluice/tools/pktgen"
)

// Packet rate: the live-frames generator (tools/pktgen) sends 64-byte UDP frames from the
// bridge's port facing node1 straight into node1's eth0 (as the client would, without the
// bridge's forwarding in the way), cycling through cfg.flows flows (source ports). Node1's
// datapath forwards them; the sink, an XDP program counting and dropping, takes them where
// they leave node1: on the bridge's node1 port for the remote backend (pod2, reached through
// node2: node1 sends the frames back out of eth0), on pod1's eth0 for the local backend. It
// counts the frames addressed to the expected backend (after the datapath's translation), so
// a frame the datapath mangled or sent elsewhere is not counted.
//
// With veths, a frame is received in the sender's softirq: the generator, node1's datapath
// and the sink run one after the other on the generator's CPU (one worker: one CPU). The
// forwarded rate is therefore the rate of the whole chain; the harness floor (generator
// straight into a sink on node1's eth0, no forwarding) measures the chain's own cost, which
// node1NsPerPacket subtracts.

// ppsSpec says what one packet-rate measurement sends and where it counts.
type ppsSpec struct {
	path     string // remote, local or floor
	ipv6     bool   // IPv6 frames (pps6.go)
	dst      netip.AddrPort
	sinkNS   string // namespace path of the sink's device
	sinkDev  string
	match    netip.AddrPort
	restore  func() error // after the sink leaves: put back what was on its device
	prepared func() error // before the sink attaches: clear the device
}

func (e *env) remoteSpec(dst netip.AddrPort) ppsSpec {
	l := e.l
	return ppsSpec{path: "remote", dst: dst, sinkNS: l.Bridge.Path(), sinkDev: "node1",
		match:    netip.AddrPortFrom(l.Pod2IP, svcUDP.targetPort),
		prepared: func() error { return clearXDP(l.Bridge, "node1") },
		restore:  func() error { return setXDPPass(l.Bridge, "node1") }}
}

func (e *env) localSpec(dst netip.AddrPort, restore func() error) ppsSpec {
	l := e.l
	return ppsSpec{path: "local", dst: dst, sinkNS: l.Pod1.Path(), sinkDev: "eth0",
		match:    netip.AddrPortFrom(l.Pod1IP, svcUDPLocal.targetPort),
		prepared: func() error { _ = clearXDP(l.Pod1, "eth0"); return nil },
		restore:  restore} // nil: nothing to put back
}

// floorSpec: the generator into a sink on node1's own eth0, nothing forwarded.
func (e *env) floorSpec() ppsSpec {
	l := e.l
	dst := netip.AddrPortFrom(l.Pod2IP, svcUDP.targetPort)
	return ppsSpec{path: "floor", dst: dst, sinkNS: l.Node1.Path(), sinkDev: "eth0", match: dst}
}

// measurePPS attaches the sink, warms the flows up (a datapath's first frame of a flow does
// more work: the connection table, SNAT port, the kernel's conntrack), then runs the generator
// runs times for d each.
func (e *env) measurePPS(ctx context.Context, s ppsSpec, runs int, d time.Duration) (res *PPS, err error) {
	l := e.l
	if s.prepared != nil {
		if err := s.prepared(); err != nil {
			return nil, fmt.Errorf("prepare sink device: %w", err)
		}
	}
	if s.restore != nil {
		defer func() {
			if rerr := s.restore(); rerr != nil {
				err = errors.Join(err, fmt.Errorf("restore %s: %w", s.sinkDev, rerr))
			}
		}()
	}
	sink, err := pktgen.AttachSink(pktgen.SinkConfig{Netns: s.sinkNS, Dev: s.sinkDev, Match: s.match, MatchProto: pktgen.UDP})
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	src := l.ClientIP
	if s.ipv6 {
		src = l.ClientIP6
	}
	tmpl, err := pktgen.Frame{SrcMAC: l.ClientMAC, DstMAC: l.Node1MAC, Src: netip.AddrPortFrom(src, 1024),
		Dst: s.dst, Proto: pktgen.UDP}.Bytes()
	if err != nil {
		return nil, err
	}
	gen := pktgen.Generator{Netns: l.Bridge.Path(), Ifindex: e.brNode1Index, Template: tmpl,
		SrcPorts: pktgen.PortRange{Min: 1024, Max: uint16(1024 + e.cfg.flows - 1)}, Workers: 1}
	// Warm-up: every flow twice, then 200 ms more.
	if _, err := gen.Run(ctx, uint64(2*e.cfg.flows), 0); err != nil {
		return nil, fmt.Errorf("warm up: %w", err)
	}
	if _, err := gen.Run(ctx, 0, 200*time.Millisecond); err != nil {
		return nil, fmt.Errorf("warm up: %w", err)
	}
	warm, err := sink.Wait(ctx, ^uint64(0), 100*time.Millisecond)
	if err != nil {
		return nil, err
	}
	if warm.Matched == 0 {
		return nil, fmt.Errorf("nothing reached the sink on %s for %v (it saw %d other frames): the datapath does not forward to %v",
			s.sinkDev, s.match, warm.Packets, s.dst)
	}
	res = &PPS{Path: s.path, Proto: "udp", IPv6: s.ipv6}
	var gens, fwds, drops []float64
	for i := 0; i < runs; i++ {
		before, err := sink.Count()
		if err != nil {
			return nil, err
		}
		g, err := gen.Run(ctx, 0, d)
		if err != nil {
			return nil, err
		}
		after, err := sink.Wait(ctx, before.Matched+g.Sent, 200*time.Millisecond)
		if err != nil {
			return nil, err
		}
		run := PPSRun{Seconds: g.Duration.Seconds(), Sent: g.Sent, Forwarded: after.Matched - before.Matched,
			SinkAll: after.Packets - before.Packets, TxDropped: g.TxDropped}
		run.Dropped = int64(run.Sent) - int64(run.Forwarded)
		run.GenMpps = float64(run.Sent) / run.Seconds / 1e6
		run.FwdMpps = float64(run.Forwarded) / run.Seconds / 1e6
		res.Runs = append(res.Runs, run)
		gens, fwds = append(gens, run.GenMpps), append(fwds, run.FwdMpps)
		drops = append(drops, float64(run.Dropped)/float64(max(run.Sent, 1)))
	}
	res.GenMpps, res.FwdMpps, res.DropRatio = median(gens), median(fwds), median(drops)
	if res.FwdMpps > 0 {
		res.NsPerPkt = 1e3 / res.FwdMpps
	}
	return res, nil
}

func (p *PPS) String() string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f Mpps forwarded (generator %.2f Mpps, %.2f%% dropped)", p.FwdMpps, p.GenMpps, 100*p.DropRatio)
}
