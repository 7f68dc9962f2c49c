package cli

import (
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
)

func TestProgShow(t *testing.T) {
	f := newFixture(t)
	var ps ProgShowJSON
	f.runJSON(t, &ps, "prog", "show")
	if ps.Agent.Version != "v-test" || !ps.Agent.Running || ps.Agent.Object != datapath.ObjectHash() || ps.Agent.SNATPorts != "1024-29999" {
		t.Errorf("agent %+v", ps.Agent)
	}
	if len(ps.Devices) != 1 || ps.Devices[0].Name != "eth0" || ps.Devices[0].XDPMode != "native" || len(ps.Devices[0].Programs) != 3 {
		t.Fatalf("devices %+v", ps.Devices)
	}
	for _, p := range ps.Devices[0].Programs {
		if p.ID == 0 || p.Tag == "" || !strings.HasPrefix(p.Name, "sluice_") {
			t.Errorf("program %+v", p)
		}
	}
	pins := strings.Join(ps.Pins, " ")
	if !strings.Contains(pins, f.dir+"/sluice_ct") || !strings.Contains(pins, f.dir+"/sluice_frontends") {
		t.Errorf("pins %v", ps.Pins)
	}
	if table := f.run(t, "prog", "show"); !strings.Contains(table, "xdp id") || !strings.Contains(table, "running, pid") {
		t.Errorf("table:\n%s", table)
	}
}
