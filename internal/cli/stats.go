package cli

import (
	"fmt"
	"sort"
	"text/tabwriter"

	"github.com/sluicelb/sluice/internal/maps"
)

// StatsJSON is `stats -o json`.
type StatsJSON struct {
	Services []ServiceStatsJSON `json:"services"`
	Reasons  map[string]uint64  `json:"reasons"`
	Maps     []MapFillJSON      `json:"maps"`
}

// ServiceStatsJSON is one service's counters.
type ServiceStatsJSON struct {
	ID           uint32 `json:"id"`
	Name         string `json:"name"`
	Packets      uint64 `json:"packets"`
	Bytes        uint64 `json:"bytes"`
	ReplyPackets uint64 `json:"replyPackets"`
	ReplyBytes   uint64 `json:"replyBytes"`
	Rejected     uint64 `json:"rejected"`
}

// MapFillJSON is a map's use.
type MapFillJSON struct {
	Name       string `json:"name"`
	Entries    int    `json:"entries"`
	MaxEntries uint32 `json:"maxEntries"`
}

func stats(e *Env, args []string) error {
	k, err := e.mapsNoFlags("stats", args)
	if err != nil {
		return err
	}
	svcs, err := loadServices(k)
	if err != nil {
		return err
	}
	reasons, err := k.Reasons()
	if err != nil {
		return err
	}
	fill, err := k.Fill()
	if err != nil {
		return err
	}
	out := StatsJSON{Services: []ServiceStatsJSON{}, Reasons: map[string]uint64{}}
	for _, s := range svcs {
		out.Services = append(out.Services, ServiceStatsJSON{ID: s.ID, Name: s.Name, Packets: s.Packets, Bytes: s.Bytes,
			ReplyPackets: s.ReplyPackets, ReplyBytes: s.ReplyBytes, Rejected: s.Rejected})
	}
	for r, n := range reasons {
		out.Reasons[maps.ReasonNames[r]] = n
	}
	for _, f := range fill {
		out.Maps = append(out.Maps, MapFillJSON{Name: f.Name, Entries: f.Entries, MaxEntries: f.MaxEntries})
	}
	return e.emit(out, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "SERVICE\tPACKETS\tBYTES\tREPLY PACKETS\tREPLY BYTES\tREJECTED")
		for _, s := range out.Services {
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\n", s.Name, s.Packets, s.Bytes, s.ReplyPackets, s.ReplyBytes, s.Rejected)
		}
		fmt.Fprintln(w, "\nREASON\tPACKETS")
		names := sortedKeys(out.Reasons, func(a, b string) bool { return a < b })
		for _, n := range names {
			fmt.Fprintf(w, "%s\t%d\n", n, out.Reasons[n])
		}
		fmt.Fprintln(w, "\nMAP\tENTRIES\tMAX\tFILL")
		sort.Slice(out.Maps, func(i, j int) bool { return out.Maps[i].Name < out.Maps[j].Name })
		for _, m := range out.Maps {
			fmt.Fprintf(w, "%s\t%d\t%d\t%.1f%%\n", m.Name, m.Entries, m.MaxEntries, 100*float64(m.Entries)/float64(max(m.MaxEntries, 1)))
		}
	})
}
