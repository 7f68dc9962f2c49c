package main

import (
	"fmt"
	"strings"
)

// The IPv6 packet rate (pps6.go) in the ratios, the report and the standing note.

// ipv6Ratios adds IPv6's packet-rate ratios: sluice against kube-proxy and plain forwarding in
// IPv6, and each datapath's IPv6 rate against its own IPv4 rate.
func ipv6Ratios(r *Results, add func(name, of string, num, den float64) float64) {
	slu, tc, ipt, nft, plain := r.datapath("sluice-xdp"), r.datapath("sluice-tc"), r.datapath("kube-proxy-iptables"), r.datapath("kube-proxy-nftables"), r.datapath("plain")
	for _, path := range []string{"remote", "local"} {
		get := func(d *Datapath) float64 {
			if d == nil {
				return 0
			}
			if path == "remote" {
				return mpps(d.PPS6)
			}
			return mpps(d.PPSLocal6)
		}
		for _, c := range [][2]*Datapath{{slu, ipt}, {slu, nft}, {slu, plain}, {tc, ipt}, {ipt, plain}} {
			if c[0] != nil && c[1] != nil {
				add(fmt.Sprintf("%s / %s, forwarded Mpps, IPv6, %s backend", c[0].Name, c[1].Name, path), "packet rate, IPv6", get(c[0]), get(c[1]))
			}
		}
	}
	for _, d := range r.Datapaths {
		add(d.Name+", IPv6 / IPv4 forwarded Mpps, remote backend", "packet rate, IPv6", mpps(d.PPS6), mpps(d.PPS))
	}
}

// ipv6Table is the datapath section's IPv6 table, empty when nothing was measured in IPv6.
func ipv6Table(res *Results) string {
	measured := res.Floor6 != nil
	for _, d := range res.Datapaths {
		measured = measured || d.PPS6 != nil || d.Error6 != ""
	}
	if !measured {
		return ""
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("### Packet rate in IPv6\n\n")
	w("The same packet rates with IPv6 frames (64-byte UDP, the same flows) to single-stack IPv6 services (`bench/udp6`: NodePort 30063 → pod2's fd00:244:2::10 port 5353; `bench/udp6-local`: 30064 → pod1's fd00:244:1::10), on the same dual-stack lab, with each datapath as above: kube-proxy runs its IPv4 and IPv6 proxiers, sluice its IPv6 programs beside IPv4's. The bare forwarder is IPv4 only. *node1 ns/packet* subtracts the IPv6 harness floor.\n\n")
	w("| Datapath | IPv6 forwarded Mpps, remote backend | IPv6 / IPv4 | node1 ns/packet, IPv6 (IPv4) | IPv6 forwarded Mpps, local backend | IPv6 Mpps vs kube-proxy iptables |\n")
	w("|---|---|---|---|---|---|\n")
	if f := res.Floor6; f != nil {
		w("| *harness floor* | %s | %s | - | - | - |\n", ppsCell(f), ratioOr(mpps(f), mpps(res.Floor)))
	}
	ipt := res.datapath("kube-proxy-iptables")
	for _, d := range res.Datapaths {
		switch {
		case d.Error != "":
			continue // the IPv4 table says why
		case d.Error6 != "":
			w("| %s | failed: %s | | | | |\n", d.Name, oneLine(d.Error6, 300))
			continue
		case d.PPS6 == nil:
			w("| %s | not measured (IPv4 only) | | | | |\n", d.Name)
			continue
		}
		node := "-"
		if d.PPS6.NodeNsPerPkt > 0 {
			node = f1(d.PPS6.NodeNsPerPkt)
			if d.PPS != nil && d.PPS.NodeNsPerPkt > 0 {
				node += fmt.Sprintf(" (%s)", f1(d.PPS.NodeNsPerPkt))
			}
		}
		vs := "-"
		if ipt != nil {
			vs = ratioOr(mpps(d.PPS6), mpps(ipt.PPS6))
		}
		w("| %s | %s | %s | %s | %s | %s |\n", d.Name, ppsCell(d.PPS6), ratioOr(mpps(d.PPS6), mpps(d.PPS)), node, ppsCell(d.PPSLocal6), vs)
	}
	w("\n")
	return b.String()
}

// ratioOr is num/den as a ratio, or "-" when either is missing.
func ratioOr(num, den float64) string {
	if num <= 0 || den <= 0 {
		return "-"
	}
	return ratioX(num / den)
}

// ipv6Standing is the standing note's IPv6 paragraph, empty without sluice's and kube-proxy's
// IPv6 figures.
func ipv6Standing(res *Results) string {
	slu, ipt, nft := res.datapath("sluice-xdp"), res.datapath("kube-proxy-iptables"), res.datapath("kube-proxy-nftables")
	if slu == nil || ipt == nil || mpps(slu.PPS6) <= 0 || mpps(ipt.PPS6) <= 0 {
		return ""
	}
	s := fmt.Sprintf("**IPv6: %.1f× kube-proxy.** In IPv6, sluice's XDP datapath forwarded %.2f Mpps to the remote backend against %.2f Mpps for kube-proxy's ip6tables rules",
		slu.PPS6.FwdMpps/ipt.PPS6.FwdMpps, slu.PPS6.FwdMpps, ipt.PPS6.FwdMpps)
	if nft != nil && mpps(nft.PPS6) > 0 {
		s += fmt.Sprintf(" and %.2f Mpps for its nftables mode (%.1f×)", nft.PPS6.FwdMpps, slu.PPS6.FwdMpps/nft.PPS6.FwdMpps)
	}
	s += "."
	if mpps(slu.PPS) > 0 {
		s += fmt.Sprintf(" That is %.0f%% of its IPv4 rate", 100*slu.PPS6.FwdMpps/slu.PPS.FwdMpps)
		if slu.PPS6.NodeNsPerPkt > 0 && slu.PPS != nil && slu.PPS.NodeNsPerPkt > 0 {
			s += fmt.Sprintf(" (node1 spent %.0f ns per packet in IPv6, %.0f ns in IPv4)", slu.PPS6.NodeNsPerPkt, slu.PPS.NodeNsPerPkt)
		}
		if mpps(ipt.PPS) > 0 {
			s += fmt.Sprintf("; kube-proxy's IPv6 rate is %.0f%% of its IPv4 rate", 100*ipt.PPS6.FwdMpps/ipt.PPS.FwdMpps)
		}
		s += "."
	}
	if mpps(slu.PPS) > 0 && slu.PPS6.FwdMpps < 0.95*slu.PPS.FwdMpps {
		s += " Why IPv6 costs sluice more: the tail call into the IPv6 programs, a 40-byte connection key against 16, `bpf_fib_lookup` in IPv6, and the parsed packet kept in a per-CPU scratch map (IPv6's path does not fit one program's 512-byte stack)"
		if pp := res.PerPacket; pp != nil && pp.IPv6 != nil {
			s += "; the per-packet section below times the cases one by one"
		}
		s += "."
	}
	return s + "\n"
}
