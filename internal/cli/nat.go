package cli

import (
	"fmt"
	"net/netip"
	"sort"
	"text/tabwriter"

	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// NATJSON is one (node address, backend, protocol) in `nat list -o json`: how many SNAT
// ports flows to that backend hold, out of the range.
type NATJSON struct {
	NodeAddress string   `json:"nodeAddress"`
	Backend     string   `json:"backend"`
	Protocol    string   `json:"protocol"`
	PortsInUse  int      `json:"portsInUse"`
	RangeSize   int      `json:"rangeSize"`
	Ports       []uint16 `json:"ports"`
}

func natList(e *Env, args []string) error {
	k, err := e.mapsNoFlags("nat list", args)
	if err != nil {
		return err
	}
	info, err := k.AgentInfo()
	if err != nil {
		return err
	}
	size := int(info.Config.SNATPortMax) - int(info.Config.SNATPortMin) + 1
	type key struct {
		node    netip.Addr
		backend netip.AddrPort
		proto   lb.Proto
	}
	use := map[key][]uint16{}
	err = k.Conntrack(func(c maps.CTEntry) bool {
		// A remote flow's reverse entry is keyed backend -> node:SNAT port.
		if c.Flags&maps.CTReply != 0 && c.Flags&maps.CTIngress != 0 {
			kk := key{c.Dst.Addr(), c.Src, c.Proto}
			use[kk] = append(use[kk], c.Dst.Port())
		}
		return true
	})
	if err != nil {
		return err
	}
	out := []NATJSON{}
	for kk, ports := range use {
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		out = append(out, NATJSON{NodeAddress: kk.node.String(), Backend: kk.backend.String(), Protocol: kk.proto.String(),
			PortsInUse: len(ports), RangeSize: size, Ports: ports})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].NodeAddress != out[j].NodeAddress {
			return out[i].NodeAddress < out[j].NodeAddress
		}
		return out[i].Backend+out[i].Protocol < out[j].Backend+out[j].Protocol
	})
	return e.emit(out, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "NODE ADDRESS\tBACKEND\tPROTO\tPORTS IN USE\tOF\tRANGE %d-%d\n", info.Config.SNATPortMin, info.Config.SNATPortMax)
		for _, n := range out {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%.2f%%\n", n.NodeAddress, n.Backend, n.Protocol, n.PortsInUse, n.RangeSize, 100*float64(n.PortsInUse)/float64(max(n.RangeSize, 1)))
		}
	})
}
