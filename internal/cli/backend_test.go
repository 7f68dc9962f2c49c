package cli

import (
	"strings"
	"testing"
)

func TestBackendList(t *testing.T) {
	f := newFixture(t)
	var bes []BackendListJSON
	f.runJSON(t, &bes, "backend", "list")
	byAddr := map[string]BackendListJSON{}
	for _, b := range bes {
		byAddr[b.Address] = b
	}
	if len(bes) != 3 {
		t.Fatalf("%d backends: %+v", len(bes), bes)
	}
	if b := byAddr["10.0.0.2:8080"]; strings.Join(b.Services, ",") != "default/api:http,default/web:http" || b.Local {
		t.Errorf("shared remote backend: %+v", b)
	}
	if b := byAddr["10.244.1.10:80"]; !b.Local || strings.Join(b.Services, ",") != "default/sticky:http,default/web:http" {
		t.Errorf("local backend: %+v", b)
	}
	if table := f.run(t, "backend", "list"); !strings.Contains(table, "10.0.0.2:5353") || !strings.Contains(table, "default/dns:dns") {
		t.Errorf("table:\n%s", table)
	}
}
