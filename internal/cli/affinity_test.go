package cli

import (
	"strings"
	"testing"
)

func TestAffinityList(t *testing.T) {
	f := newFixture(t)
	var entries []AffinityJSON
	f.runJSON(t, &entries, "affinity", "list")
	if entries == nil || len(entries) != 0 {
		t.Errorf("want an empty list, got %+v", entries)
	}
	if table := f.run(t, "affinity", "list"); !strings.Contains(table, "not in this datapath yet") {
		t.Errorf("table:\n%s", table)
	}
}
