package cli

import (
	"strings"
	"testing"
)

func TestServiceList(t *testing.T) {
	f := newFixture(t)
	var svcs []ServiceJSON
	f.runJSON(t, &svcs, "service", "list")
	if len(svcs) != 5 {
		t.Fatalf("%d services: %+v", len(svcs), svcs)
	}
	web := svcs[1] // sorted by NodePort: 30053, 30080, 30081, 30090, 30095
	if web.Name != "default/web:http" || web.NodePort != 30080 || web.Protocol != "TCP" || len(web.Frontends) != 1 || web.Frontends[0] != "10.0.0.1:30080" {
		t.Errorf("web: %+v", web)
	}
	if len(web.Backends) != 2 || web.Backends[0].Address != "10.0.0.2:8080" || web.Backends[0].Local || !web.Backends[1].Local {
		t.Errorf("web backends: %+v", web.Backends)
	}
	if web.Policy.Algorithm != "random" || web.Policy.TrafficPolicy != "Cluster" {
		t.Errorf("policy %+v", web.Policy)
	}
	if api := svcs[2]; api.Packets != 1 || api.Bytes == 0 {
		t.Errorf("api counters: %+v", api)
	}
	if empty := svcs[3]; len(empty.Backends) != 0 || empty.Name != "default/empty:http" {
		t.Errorf("empty: %+v", empty)
	}

	if p := svcs[4].Policy; p != (PolicyJSON{TrafficPolicy: "Local", Algorithm: "maglev", SessionAffinity: "ClientIP", AffinityTimeoutSeconds: 600}) {
		t.Errorf("sticky policy %+v", p)
	}

	table := f.run(t, "service", "list")
	for _, want := range []string{"SERVICE", "default/web:http", "30080/TCP", "10.244.1.10:80(local)", "none (rejects)", "etp=Cluster lb=random", "etp=Local lb=maglev affinity=ClientIP/600s"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

func TestNoPinsIsAClearError(t *testing.T) {
	f := newFixture(t)
	_, errOut, code := f.runCode(t, "--bpffs", "/sys/fs/bpf/nothing-here", "service", "list")
	if code == 0 || !strings.Contains(errOut, "no sluice datapath is pinned in /sys/fs/bpf/nothing-here") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	if _, errOut, code := f.runCode(t, "bogus"); code != 2 || !strings.Contains(errOut, "usage") {
		t.Errorf("unknown command: exit %d: %s", code, errOut)
	}
}
