package cli

import (
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

func TestAffinityList(t *testing.T) {
	f := newFixture(t)
	f.send(t, layers.IPProtocolTCP, 41002, 30095, 2) // to the local pod, remembered for the client
	var entries []AffinityJSON
	f.runJSON(t, &entries, "affinity", "list")
	if len(entries) != 1 || entries[0].Service != "default/sticky:http" || entries[0].Client != "10.0.0.9" ||
		entries[0].Backend != "10.244.1.10:80" || entries[0].ExpiresIn < 590 || entries[0].ExpiresIn > 600 {
		t.Errorf("want the client remembered on the sticky service, got %+v", entries)
	}
	table := f.run(t, "affinity", "list")
	for _, want := range []string{"SERVICE", "default/sticky:http", "10.0.0.9", "10.244.1.10:80"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}
