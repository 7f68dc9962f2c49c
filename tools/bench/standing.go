package main

import (
	"fmt"
	"math"
	"strings"
)

// standing writes "where we stand, and why" from this run's figures: each paragraph only
// when its figures exist, each claim checked against them.
func standing(res *Results) string {
	var ps []string
	slu, tc, ipt, nft := res.datapath("sluice-xdp"), res.datapath("sluice-tc"), res.datapath("kube-proxy-iptables"), res.datapath("kube-proxy-nftables")
	bare, plain := res.datapath("bare-xdp"), res.datapath("plain")
	floor := 0.0
	if res.Floor != nil {
		floor = res.Floor.NsPerPkt
	}
	goalState := func(i int) string {
		if i >= len(res.Goals) || !res.Goals[i].Known {
			return "not measured"
		}
		if res.Goals[i].Met {
			return "met"
		}
		return "not met"
	}
	nodeNs := func(d *Datapath) float64 {
		if d == nil || d.PPS == nil {
			return 0
		}
		return d.PPS.NodeNsPerPkt
	}

	if slu != nil && ipt != nil && mpps(slu.PPS) > 0 && mpps(ipt.PPS) > 0 {
		s := fmt.Sprintf("**Packet rate against kube-proxy: %.1f× (goal 5×, %s).** sluice's XDP datapath forwarded %.2f Mpps to the remote backend on one CPU, against %.2f Mpps for kube-proxy in iptables mode",
			slu.PPS.FwdMpps/ipt.PPS.FwdMpps, goalState(0), slu.PPS.FwdMpps, ipt.PPS.FwdMpps)
		if nft != nil && mpps(nft.PPS) > 0 {
			s += fmt.Sprintf(" (%.1f×) and %.2f Mpps in nftables mode (%.1f×)", slu.PPS.FwdMpps/ipt.PPS.FwdMpps, nft.PPS.FwdMpps, slu.PPS.FwdMpps/nft.PPS.FwdMpps)
		}
		if plain != nil && mpps(plain.PPS) > 0 {
			s += fmt.Sprintf("; the kernel's plain forwarding, with no NAT and no rules at all, did %.2f Mpps", plain.PPS.FwdMpps)
		}
		s += "."
		if floor > 0 && nodeNs(slu) > 0 && nodeNs(ipt) > 0 {
			s += fmt.Sprintf(" Taking away the harness's own share (generator and sink: %.0f ns per packet), node1 spent %.0f ns per packet with sluice, %.0f ns with kube-proxy iptables", floor, nodeNs(slu), nodeNs(ipt))
			if nodeNs(nft) > 0 {
				s += fmt.Sprintf(", %.0f ns with nftables", nodeNs(nft))
			}
			if nodeNs(plain) > 0 {
				s += fmt.Sprintf(" and %.0f ns forwarding plainly", nodeNs(plain))
			}
			s += "."
		}
		s += " Why: kube-proxy's packets take the kernel's whole path (an sk_buff per packet, GRO, netfilter's connection tracking and NAT hooks, the routing decision, neighbour output, the queueing layer), which plain forwarding mostly shares; sluice rewrites the frame in place in XDP, before any sk_buff exists, with one connection-table lookup and one FIB lookup, and sends it back out of the same device with XDP_TX."
		ps = append(ps, s)
	}

	if slu != nil && bare != nil && mpps(slu.PPS) > 0 && mpps(bare.PPS) > 0 {
		r := slu.PPS.FwdMpps / bare.PPS.FwdMpps
		s := fmt.Sprintf("**Against the bare XDP forwarder: %.0f%% of its packet rate (goal 85%%, %s).** The bare forwarder (`tools/bench/xdpfwd`) does the least an XDP forwarder can: compare the destination with fixed rules, decrement the TTL, rewrite the MACs, XDP_TX. It forwarded %.2f Mpps",
			100*r, goalState(1), bare.PPS.FwdMpps)
		if floor > 0 && nodeNs(bare) > 0 && nodeNs(slu) > 0 {
			bareChain := 1e3 / bare.PPS.FwdMpps
			need := bareChain/0.85 - floor
			s += fmt.Sprintf(", costing node1 %.0f ns per packet against sluice's %.0f ns. Reaching 85%% would take sluice to about %.0f ns per packet on node1 (the harness's %.0f ns count on both sides, which is also why the Mpps ratio looks kinder than the %.1f× between the node1 costs)",
				nodeNs(bare), nodeNs(slu), need, floor, nodeNs(slu)/nodeNs(bare))
		}
		s += "."
		if pp := res.PerPacket; pp != nil {
			if lo, _ := pp.extremes(); lo != nil {
				s += fmt.Sprintf(" Measured alone (BPF_PROG_TEST_RUN, below), the bare program takes %.1f ns and sluice's established-flow path %.0f ns: what the difference buys is the port prefilter, a connection-table lookup, the FIB lookup for the next hop (`bpf_fib_lookup`; measured alone at about 40 ns in an earlier run), and rewriting addresses, ports and both checksums.", pp.BareNs, lo.EstablishedNs)
			}
		}
		if pp := res.PerPacket; pp != nil {
			if lo, _ := pp.extremes(); lo != nil && nodeNs(slu) > 1.2*lo.EstablishedNs && nodeNs(bare) > 0 {
				s += fmt.Sprintf(" Under live traffic sluice costs more than alone (%.0f against %.0f ns), more than transmitting explains (the bare forwarder: %.0f live against %.0f ns alone): each frame of the %s flows meets another of the %s connection-table entries, where the test run meets one, always cached.",
					nodeNs(slu), lo.EstablishedNs, nodeNs(bare), pp.BareNs, commas(int64(res.Settings.Flows)), commas(int64(2*res.Settings.Flows)))
			}
		}
		s += " The way to close the gap is to do less per established packet: cache the next hop (MACs, ifindex) in the connection entry and skip the FIB lookup while the neighbour is valid, and fold the prefilter into the lookup. The 85% goal against a forwarder that looks nothing up may not be reachable for any NAT load balancer keeping per-flow state; a fairer ceiling would be a bare forwarder with one hash lookup."
		ps = append(ps, s)
	}
	if s := ipv6Standing(res); s != "" {
		ps = append(ps, strings.TrimSuffix(s, "\n"))
	}

	if pp := res.PerPacket; pp != nil {
		if lo, hi := pp.extremes(); lo != nil {
			s := fmt.Sprintf("**Established flow against a trivial XDP program: %.1f× (goal 1.5×, %s).** The trivial program returns XDP_PASS without reading the packet: %.1f ns. The bare forwarder, which reads and rewrites headers and transmits, takes %.1f ns (%.1f×). sluice's established flow takes %.0f ns, a backend's reply %.0f ns, a packet that is not for a frontend (the node's own traffic) %.1f ns (%.1f× trivial: the prefilter lets it go after one array lookup).",
				lo.EstablishedNs/lo.TrivialNs, goalState(3), lo.TrivialNs, pp.BareNs, pp.BareNs/lo.TrivialNs, lo.EstablishedNs, lo.ReplyNs, lo.MissNs, lo.MissNs/lo.TrivialNs)
			s += " The goal as written cannot be met by a program that translates and forwards: a hash lookup and a FIB lookup each cost more than the trivial program's whole run."
			if lo.MissNs < 3*lo.TrivialNs {
				s += " The non-frontend miss, the path most of a node's packets take, is where sluice is close to free."
			}
			ps = append(ps, s)
			if hi != nil && hi != lo {
				est, one, rnd := hi.EstablishedNs/lo.EstablishedNs, hi.NewFlowOneNs/lo.NewFlowOneNs, hi.NewFlowNs/lo.NewFlowNs
				s := fmt.Sprintf("**Per-packet cost from %s to %s services: %s (goal ≤ +10%%).** Established flow %.0f → %.0f ns (%+.0f%%), new flow to one service %.0f → %.0f ns (%+.0f%%), non-frontend miss %.1f → %.1f ns. No step of the program depends on the number of services or backends: hash lookups, one random slot, no loop.",
					commas(int64(lo.Services)), commas(int64(hi.Services)), goalState(2), lo.EstablishedNs, hi.EstablishedNs, 100*(est-1), lo.NewFlowOneNs, hi.NewFlowOneNs, 100*(one-1), lo.MissNs, hi.MissNs)
				s += fmt.Sprintf(" A new flow to a *random* service is another matter: %.0f → %.0f ns (%.1f×). Each touches frontend, slot, backend and counter entries that the previous packets did not (%s services' worth, spread over maps preallocated for a million backends, hundreds of megabytes): cache and TLB misses (on a VM a TLB miss walks two page tables), not more work. It is paid once per flow; kube-proxy in iptables mode walks a rule per service for every new connection (the sweep below).",
					lo.NewFlowNs, hi.NewFlowNs, rnd, commas(int64(hi.Services)))
				if lo.NewFlowOneNs > 0 && lo.TrivialOneNs > 0 {
					s += fmt.Sprintf(" (New flows are single-shot runs; a single-shot trivial program takes %.0f ns, the timer's share.)", lo.TrivialOneNs)
				}
				ps = append(ps, s)
			}
		}
	}

	if tc != nil && mpps(tc.PPS) > 0 {
		s := fmt.Sprintf("**sluice in tc only** forwarded %.2f Mpps to the remote backend", tc.PPS.FwdMpps)
		if ipt != nil && mpps(ipt.PPS) > 0 {
			s += fmt.Sprintf(" (%.1f× kube-proxy iptables", tc.PPS.FwdMpps/ipt.PPS.FwdMpps)
			if slu != nil && mpps(slu.PPS) > 0 {
				s += fmt.Sprintf(", %.0f%% of sluice in XDP", 100*tc.PPS.FwdMpps/slu.PPS.FwdMpps)
			}
			s += ")"
		}
		s += ": the same translation, on an sk_buff the kernel allocated first, then `bpf_redirect` instead of XDP_TX."
		if tc.Iperf != nil && plain != nil && plain.Iperf != nil && tc.Iperf.Gbps < 0.5*plain.Iperf.Gbps {
			s += fmt.Sprintf(" **Its iperf3 result (%.2f Gbit/s) is far below plain forwarding's: a datapath problem to look at**", tc.Iperf.Gbps)
			if n := tc.Reasons["drop_frag_needed"]; n > 0 {
				// Once a real bug (a GRO-merged packet's length handed to bpf_fib_lookup at tc),
				// fixed in bpf/lib/fwd.h; TestTCForwardsGROMergedPackets guards it.
				s += fmt.Sprintf(" (sluice counted %d `drop_frag_needed`: GRO-merged packets taken for oversized ones?)", n)
			}
			s += "."
		}
		ps = append(ps, s)
	}

	if slu != nil && plain != nil && mpps(slu.PPSLocal) > 0 && mpps(plain.PPSLocal) > 0 {
		s := fmt.Sprintf("**Local backend:** sluice XDP %.2f Mpps, plain forwarding %.2f Mpps", slu.PPSLocal.FwdMpps, plain.PPSLocal.FwdMpps)
		if ipt != nil && mpps(ipt.PPSLocal) > 0 {
			s += fmt.Sprintf(", kube-proxy iptables %.2f Mpps (sluice %.1f×)", ipt.PPSLocal.FwdMpps, slu.PPSLocal.FwdMpps/ipt.PPSLocal.FwdMpps)
		}
		if tc != nil && mpps(tc.PPSLocal) > 0 {
			s += fmt.Sprintf(", sluice tc %.2f Mpps", tc.PPSLocal.FwdMpps)
		}
		s += ". For a local pod sluice translates in XDP but hands the packet to the kernel (XDP_PASS), which routes it into the pod's veth: the kernel's forwarding cost stays whole, and sluice's comes on top."
		if slu.PPSLocal.FwdMpps < plain.PPSLocal.FwdMpps {
			s += " It comes on top twice: tc ingress runs on the translated packet too and, its destination port (here 5353) being in the SNAT port range (or a frontend port, as 80 is for load-balancer IPs), looks it up again in the connection table and the frontends before letting it pass. Marking translated packets in XDP metadata for tc to skip, or redirecting into the pod's veth from XDP (with an XDP program on its peer), would remove that."
		}
		ps = append(ps, s)
	}

	var gbps, keep []float64
	for _, d := range []*Datapath{plain, bare, slu, ipt, nft} {
		if d != nil && d.Iperf != nil && d.WrkKeep != nil {
			gbps, keep = append(gbps, d.Iperf.Gbps), append(keep, d.WrkKeep.RPS)
		}
	}
	if len(gbps) >= 3 {
		spreadG, spreadK := maxOf(gbps)/minOf(gbps)-1, maxOf(keep)/minOf(keep)-1
		s := fmt.Sprintf("**TCP throughput and requests.** One iperf3 stream ran at %.1f to %.1f Gbit/s and wrk with keep-alive at %s to %s requests/s through plain forwarding, the bare forwarder, sluice XDP and kube-proxy: within %.0f%% and %.0f%% of each other.",
			minOf(gbps), maxOf(gbps), f0(minOf(keep)), f0(maxOf(keep)), 100*spreadG, 100*spreadK)
		if slu != nil && ipt != nil && slu.Iperf != nil && ipt.Iperf != nil && nodeNs(slu) > 0 && nodeNs(ipt) > 0 &&
			ipt.Iperf.Gbps > 0.75*slu.Iperf.Gbps && spreadK < 0.3 {
			s += fmt.Sprintf(" They do not follow node1's cost per packet (kube-proxy iptables, at %.1f× sluice's, reached %.2f Gbit/s against sluice's %.2f): one stream and wrk are bounded by the client's and the backend's TCP stacks, wrk and the HTTP server, which share the 2 CPUs with node1; with MTU-sized segments and GRO, a few Gbit/s is a few hundred thousand packets per second, well below every datapath's packet rate above. The differences between them are mostly this VM's noise.",
				nodeNs(ipt)/nodeNs(slu), ipt.Iperf.Gbps, slu.Iperf.Gbps)
		}
		if slu != nil && ipt != nil && slu.WrkClose != nil && ipt.WrkClose != nil {
			s += fmt.Sprintf(" A new connection per request shows the proxies apart: sluice XDP %s requests/s, kube-proxy iptables %s (%.2f×)", f0(slu.WrkClose.RPS), f0(ipt.WrkClose.RPS), slu.WrkClose.RPS/ipt.WrkClose.RPS)
			if nft != nil && nft.WrkClose != nil {
				s += fmt.Sprintf(", nftables %s", f0(nft.WrkClose.RPS))
			}
			if plain != nil && plain.WrkClose != nil {
				s += fmt.Sprintf(", plain forwarding %s", f0(plain.WrkClose.RPS))
			}
			s += "; a connection is a handful of packets, each new one pays the proxy's setup (sluice: backend choice, SNAT port, two table entries; kube-proxy: the nat table's rules and a conntrack entry)."
		}
		ps = append(ps, s)
	}

	if len(res.Sweep) > 0 {
		var lines []string
		for _, k := range sweepDatapaths {
			var pts []*SweepPoint
			for _, p := range res.Sweep {
				if p.Datapath == k.name {
					pts = append(pts, p)
				}
			}
			if len(pts) == 0 {
				continue
			}
			lo, hi := pts[0], pts[len(pts)-1]
			var parts []string
			if lo.PPS != nil && hi.PPS != nil && hi != lo {
				parts = append(parts, fmt.Sprintf("forwarded %.2f → %.2f Mpps", lo.PPS.FwdMpps, hi.PPS.FwdMpps))
			}
			if lo.WrkClose != nil && hi.WrkClose != nil && hi != lo {
				parts = append(parts, fmt.Sprintf("new connections %s → %s per second", f0(lo.WrkClose.RPS), f0(hi.WrkClose.RPS)))
			}
			if hi.ProgramSecs > 0 && hi.PPS != nil {
				t := fmt.Sprintf("serving %s services %.2f s after its start", commas(int64(hi.Services)), hi.ProgramSecs)
				if hi.SyncSecs > 0 {
					t += fmt.Sprintf(" (its own first sync: %.2f s)", hi.SyncSecs)
				}
				if hi.NewServiceSecs > 0 && hi.WrkClose != nil {
					t += fmt.Sprintf(", one more service served %.2f s after it was created", hi.NewServiceSecs)
				}
				parts = append(parts, t)
			}
			for _, p := range pts {
				if p.OverBudget {
					what := "programming them"
					if p.PPS != nil {
						what = "serving one more service"
					}
					parts = append(parts, fmt.Sprintf("over the %.0f s budget at %s services (%s)", res.Settings.SweepBudgetSecs, commas(int64(p.Services)), what))
				} else if p.Error != "" && !strings.HasPrefix(p.Error, "not run") {
					parts = append(parts, fmt.Sprintf("failed at %s services", commas(int64(p.Services))))
				}
			}
			if len(parts) > 0 {
				lines = append(lines, fmt.Sprintf("%s: %s", k.name, strings.Join(parts, ", ")))
			}
		}
		if len(lines) > 0 {
			s := fmt.Sprintf("**Scale, through the API server (%s to %s services).** %s.", commas(int64(res.Sweep[0].Services)), commas(int64(res.Sweep[len(res.Sweep)-1].Services)), strings.Join(lines, "; "))
			s += " (Debian 12's iptables is iptables-nft: kube-proxy's iptables-restore becomes an nf_tables transaction; its first sync, rules built and restored, is the time in the table.)"
			for _, p := range res.Sweep {
				if p.Datapath == "kube-proxy-iptables" && p == lastPoint(res, p.Datapath) && p.WrkClose != nil && p.WrkClose.Seconds > 0 {
					busy := p.WrkClose.ProxyCPUSecs / p.WrkClose.Seconds
					if busy < 0.1 {
						s += fmt.Sprintf(" During its new-connection run at %s services kube-proxy itself was idle (%.2f s of CPU in %.0f s), so the drop is the packets' own work: every new connection walks the nat table's KUBE-SERVICES and KUBE-NODEPORTS chains, a rule per service.", commas(int64(p.Services)), p.WrkClose.ProxyCPUSecs, p.WrkClose.Seconds)
					} else {
						s += fmt.Sprintf(" During its new-connection run at %s services kube-proxy was busy too (%.1f s of CPU in %.0f s, rewriting its rules), competing with the traffic for the 2 CPUs; the rest is the packets' own work: every new connection walks the nat table's KUBE-SERVICES and KUBE-NODEPORTS chains, a rule per service.", commas(int64(p.Services)), p.WrkClose.ProxyCPUSecs, p.WrkClose.Seconds)
					}
				}
			}
			s += " Established flows never meet the service rules (kube-proxy's are in the nat table, consulted once per connection; sluice's connection table is looked up first), so their packet rate stays flat for all three. New connections are where the number of services shows: iptables mode walks chains of a rule per service, nftables mode looks the service up in verdict maps, sluice in a hash."
			ps = append(ps, s)
		}
	}

	if cp := res.ControlPlane; cp != nil {
		s := fmt.Sprintf("**Control plane (%s services × %d endpoints):** every service in the maps %.2f s after the agent's start (goal < 1 s at 10k: %s), EndpointSlice update to map p99 %.1f ms (goal < 50 ms: %s), agent RSS %.0f MB (goal < 150 MB: %s).",
			commas(int64(cp.Services)), cp.EndpointsPerSvc, cp.ColdStartSeconds, metStr(cp.ColdStartSeconds < 1), cp.UpdateP99Millis, metStr(cp.UpdateP99Millis < 50), cp.AgentRSSMegabytes, metStr(cp.AgentRSSMegabytes < 150))
		if cp.Services < 10000 {
			s += " (A quick run measures fewer services than the goal's 10k.)"
		}
		ps = append(ps, s)
	}
	return strings.Join(ps, "\n\n") + "\n"
}

func lastPoint(res *Results, datapath string) *SweepPoint {
	var last *SweepPoint
	for _, p := range res.Sweep {
		if p.Datapath == datapath && p.Error == "" {
			last = p
		}
	}
	return last
}

func metStr(b bool) string {
	if b {
		return "met"
	}
	return "not met"
}

func minOf(vs []float64) float64 {
	m := math.Inf(1)
	for _, v := range vs {
		m = min(m, v)
	}
	return m
}

func maxOf(vs []float64) float64 {
	m := math.Inf(-1)
	for _, v := range vs {
		m = max(m, v)
	}
	return m
}

// methodText explains how each figure is made.
func methodText(res *Results) string {
	st := res.Settings
	return fmt.Sprintf(`## How it is measured

- **One lab, one run.** `+"`tools/lab`"+`'s namespaces (client 10.89.0.10, node1 10.89.0.11, node2 10.89.0.12 on a bridge; pod1 10.244.1.10 behind node1, pod2 10.244.2.10 behind node2) and one real kube-apiserver (`+"`tools/controlplane`"+`), relayed into node1 as 127.0.0.1:6443. Node1 runs one datapath at a time; between them the next one gets a clean node: `+"`sluice-agent --cleanup`"+` (pins and programs), `+"`kube-proxy --cleanup`"+` then `+"`nft flush ruleset`"+` (kube-proxy's cleanup leaves empty tables, which would keep netfilter hooked), and `+"`conntrack -F`"+`. Services: `+"`bench/udp`"+` (NodePort 30053 → pod2:5353), `+"`bench/udp-local`"+` (30054 → pod1:5353), `+"`bench/http`"+` (30080 → pod2:80), `+"`bench/iperf`"+` (30201 → pod2:5201), the same objects for kube-proxy and sluice. Plain forwarding and the bare forwarder have no service: the client sends to the pod's address, routed through node1 (and node2 answers the client through node1, so both directions cross node1 as they do behind the proxies' SNAT); the bare forwarder redirects pod1's frames into vpod1, whose peer gets an XDP_PASS program for it (as the lab gives the bridge's ports). Node1 sends no ICMP redirects.
- **Packet rate.** `+"`tools/pktgen`"+`'s live-frames generator sends 64-byte UDP frames from the bridge's port facing node1 straight into node1's eth0 (no bridge forwarding in the way), over %s flows (source ports), one worker (one CPU); %d run(s) of %.1f s after a warm-up (every flow twice), the median run reported. The sink, an XDP program that counts and drops, sits where the frames leave node1: the bridge's node1 port for the remote backend (replacing the lab's XDP_PASS there for the duration; node1's neighbours are entered permanently, as the sink drops ARP), pod1's eth0 for the local one. It counts only frames to the expected backend address and port after translation. Through veths a frame is received in the sender's softirq, so generator, node1 and sink run one after the other on one CPU: the forwarded rate is the whole chain's, and the *harness floor* (generator straight into a sink on node1's eth0) measures the chain without node1; *node1 ns/packet* subtracts it. Generator rate minus forwarded rate is what was lost (none, as a rule: the chain is synchronous). The lab is dual-stack, and the remote and local rates are measured again in IPv6 (64-byte frames as well) against IPv6 services of their own, with an IPv6 harness floor.
- **iperf3**: one TCP stream, %d s, client to the service (or pod2), server in pod2. **wrk**: one thread, %d connections, keep-alive for %d s against pod2's HTTP server; then a new connection per request (`+"`Connection: close`"+`) for %d s against a service created for that run (its own backend port, so no backend TIME_WAIT socket from an earlier datapath's run meets its SYNs) with %d endpoints (addresses of pod2; a SNAT proxy has a port range per endpoint, 28,976 ports for sluice, none reused within 60 s). Latency p50/p99 from `+"`wrk --latency`"+`.
- **Per-packet cost**: BPF_PROG_TEST_RUN, kernel-timed, in a namespace standing in for node1 (so `+"`bpf_fib_lookup`"+` resolves the next hop). Programs are held in the XDP dispatcher while measured (otherwise every run with a repeat count costs ~20 ms of setup). Established flow and reply use a connection entry that translates the frame to itself, so every repetition does the full work; 250 repetitions per call from TTL 255. New flows are single-shot runs (a new source each) from an empty connection table each round, to a random UDP service and to one service. Services are written by the agent's reconciler (%s), NodePorts 10000+, remote backends.
- **Scale sweep**: filler NodePort services with one endpoint each, created through the API server; each proxy started cold at each size; *start → serving* as explained above; then the packet rate (established UDP flows) and new connections per second as above. Budget %.0f s per point.
- **Control plane**: `+"`tools/scale`"+` (%d services × %d endpoints, %d EndpointSlice updates), its own API server and lab.
- **Not measured here**: multi-queue NICs and several CPUs forwarding at once, physical NICs (veth's XDP is the driver path here).

Reproduce: `+"`make bench`"+` (the full run) or `+"`make bench-quick`"+` (a smoke run); this %s run took %s. `+"`go run ./tools/bench -h`"+` lists the sections and knobs. Needs root; `+"`make deps`"+` installs iperf3, wrk, nftables, conntrack; `+"`make controlplane`"+` builds kube-apiserver and kube-proxy.
`, commas(int64(st.Flows)), st.PPSRuns, st.PPSSeconds, st.IperfSeconds, st.WrkConns, st.WrkSeconds, st.ConnSeconds, connEndpoints,
		perPktGrid(st), st.SweepBudgetSecs, st.ScaleServices, st.ScaleEndpoints, st.ScaleUpdates, res.Mode, humanDuration(res.Seconds))
}

func perPktGrid(st Settings) string {
	var s []string
	for _, n := range st.PerPktServices {
		s = append(s, commas(int64(n)))
	}
	var b []string
	for _, n := range st.PerPktBackends {
		b = append(b, fmt.Sprint(n))
	}
	return fmt.Sprintf("%s services × %s backends each, where it fits 1M backends", strings.Join(s, ", "), strings.Join(b, ", "))
}
