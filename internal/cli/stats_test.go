package cli

import (
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

func TestStats(t *testing.T) {
	f := newFixture(t)
	f.send(t, layers.IPProtocolTCP, 41002, 30090, 3) // refused: RST
	var st StatsJSON
	f.runJSON(t, &st, "stats")
	if st.Reasons["reject_tcp_rst"] != 1 {
		t.Errorf("reasons %v", st.Reasons)
	}
	got := map[string]ServiceStatsJSON{}
	for _, s := range st.Services {
		got[s.Name] = s
	}
	if got["default/empty:http"].Rejected != 1 || got["default/api:http"].Packets != 1 || got["default/dns:dns"].Packets != 1 {
		t.Errorf("services %+v", st.Services)
	}
	fill := map[string]MapFillJSON{}
	for _, m := range st.Maps {
		fill[m.Name] = m
	}
	if fill["sluice_frontends"].Entries != 5 || fill["sluice_ct"].Entries != 4 || fill["sluice_ct"].MaxEntries != 524288 {
		t.Errorf("maps %+v", st.Maps)
	}
	table := f.run(t, "stats")
	for _, want := range []string{"REASON", "reject_tcp_rst", "sluice_ct", "FILL"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}
