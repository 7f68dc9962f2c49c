package cli

import (
	"strings"
	"testing"
)

func TestNATList(t *testing.T) {
	f := newFixture(t)
	var nat []NATJSON
	f.runJSON(t, &nat, "nat", "list")
	if len(nat) != 2 {
		t.Fatalf("%+v", nat)
	}
	tcp := nat[0]
	if nat[1].Protocol == "TCP" {
		tcp = nat[1]
	}
	if tcp.NodeAddress != "10.0.0.1" || tcp.Backend != "10.0.0.2:8080" || tcp.PortsInUse != 1 || tcp.Ports[0] != f.snat || tcp.RangeSize != 28976 {
		t.Errorf("tcp: %+v (snat %d)", tcp, f.snat)
	}
	if table := f.run(t, "nat", "list"); !strings.Contains(table, "RANGE 1024-29999") || !strings.Contains(table, "10.0.0.2:5353") {
		t.Errorf("table:\n%s", table)
	}
}
