package maps

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sluicelb/sluice/internal/lb"
)

// Dump is the Fake's content with every ID resolved: entries are grouped under their
// service's name (from its info) and name backends by address, so that two Fakes written in
// different orders, with different IDs, dump alike when the datapath would behave alike.
// Scenario tests compare it with a golden file.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	be := func(id uint32) string {
		if b, ok := f.BackendMap[id]; ok {
			return b.String()
		}
		return fmt.Sprintf("<missing backend %d>", id)
	}
	ids := map[uint32]bool{}
	for _, fe := range f.FrontendMap {
		ids[fe.ServiceID] = true
	}
	for k := range f.SlotMap {
		ids[k.ServiceID] = true
	}
	for id := range f.Info {
		ids[id] = true
	}
	for m := range f.Affinity {
		ids[m.ServiceID] = true
	}
	for r := range f.Ranges {
		ids[r.ServiceID] = true
	}
	for id := range f.Maglev {
		ids[id] = true
	}
	var blocks []string
	for id := range ids {
		var b strings.Builder
		if info, ok := f.Info[id]; ok {
			fmt.Fprintf(&b, "service %s", info.Name)
			if info.NodePort != 0 {
				fmt.Fprintf(&b, " nodeport %d/%s", info.NodePort, info.Proto)
			}
			if info.ExternalLocal {
				b.WriteString(" local")
			}
			if info.Family != lb.IPv4 {
				b.WriteString(" " + info.Family.String())
			}
		} else {
			b.WriteString("service <no info>")
		}
		b.WriteString("\n")
		var lines []string
		for k, fe := range f.FrontendMap {
			if fe.ServiceID != id {
				continue
			}
			l := fmt.Sprintf("  frontend %s count %d", k, fe.Count)
			if fe.Flags != 0 {
				l += " " + fe.Flags.String()
			}
			if fe.AffinityTimeout != 0 {
				l += fmt.Sprintf(" timeout %d", fe.AffinityTimeout)
			}
			if fe.SNATAddr.IsValid() {
				l += " snat " + fe.SNATAddr.String()
			}
			lines = append(lines, l)
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(append(lines, ""), "\n"))
		var slots []SlotKey
		for k := range f.SlotMap {
			if k.ServiceID == id {
				slots = append(slots, k)
			}
		}
		slices.SortFunc(slots, func(a, b SlotKey) int { return int(a.Slot) - int(b.Slot) })
		for _, k := range slots {
			fmt.Fprintf(&b, "  slot %d %s\n", k.Slot, be(f.SlotMap[k]))
		}
		if t, ok := f.Maglev[id]; ok {
			n := map[string]int{}
			for _, x := range t {
				n[be(x)]++
			}
			var parts []string
			for k, c := range n {
				parts = append(parts, fmt.Sprintf("%s x%d", k, c))
			}
			slices.Sort(parts)
			fmt.Fprintf(&b, "  maglev %d entries: %s\n", len(t), strings.Join(parts, ", "))
		}
		var aff, ranges []string
		for m := range f.Affinity {
			if m.ServiceID == id {
				aff = append(aff, be(m.BackendID))
			}
		}
		for r := range f.Ranges {
			if r.ServiceID == id {
				ranges = append(ranges, r.Prefix.String())
			}
		}
		slices.Sort(aff)
		slices.Sort(ranges)
		if len(aff) > 0 {
			fmt.Fprintf(&b, "  affinity backends %s\n", strings.Join(aff, " "))
		}
		if len(ranges) > 0 {
			fmt.Fprintf(&b, "  source ranges %s\n", strings.Join(ranges, " "))
		}
		blocks = append(blocks, b.String())
	}
	slices.Sort(blocks)
	var bes []string
	for _, b := range f.BackendMap {
		bes = append(bes, b.String())
	}
	slices.Sort(bes)
	out := strings.Join(blocks, "")
	if len(bes) > 0 {
		out += "backends " + strings.Join(bes, " ") + "\n"
	}
	out += "prefilter frontend ports" + ports(f.FrontendPorts) + "\n"
	out += "prefilter backend ports" + ports(f.BackendPorts) + "\n"
	return out
}

func ports(set map[uint16]bool) string {
	var ps []int
	for p := range set {
		ps = append(ps, int(p))
	}
	slices.Sort(ps)
	var s string
	for _, p := range ps {
		s += fmt.Sprintf(" %d", p)
	}
	return s
}
