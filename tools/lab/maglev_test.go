package lab_test

import (
	"testing"

	"github.com/sluicelb/sluice/tools/lab"
)

// --maglev-table-size reaches every part of the agent that builds a table: with a size other
// than the default, Maglev services are served (they were refused on every sync when the
// reconciler still built tables of the default size, which the datapath's maps refuse).
func TestE2EMaglevTableSize(t *testing.T) {
	c := startCluster(t, "", "--lb-algorithm", "maglev", "--maglev-table-size", "251")
	seen := map[string]int{}
	c.waitFor(t, "the Maglev NodePort", func() error { _, err := lab.HTTPGet(c.Client, c.nodePort(30080)); return err })
	for range 20 {
		body, err := lab.HTTPGet(c.Client, c.nodePort(30080))
		if err != nil {
			t.Fatal(err)
		}
		who, _, err := lab.ParseReply(body)
		if err != nil {
			t.Fatal(err)
		}
		seen[who]++
	}
	if seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Errorf("answered by %v, want both pods (a client's ports spread over the table)", seen)
	}
}
