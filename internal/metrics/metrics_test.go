package metrics_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/metrics"
	"github.com/sluicelb/sluice/internal/testutil"
)

// One service port's scopes share its name: each is its own series, and the scrape succeeds
// (a repeated series fails the whole of /metrics).
func TestServiceSeriesPerScope(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{})
	for scope := uint8(0); scope < 3; scope++ {
		if err := k.UpdateServiceInfo(uint32(scope+1), maps.ServiceInfo{Name: "default/web:http", Proto: lb.TCP, Scope: scope}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	metrics.RegisterDatapath(reg, k)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	scopes := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "sluice_service_packets_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "scope" {
					scopes[l.GetValue()] = true
				}
			}
		}
	}
	if len(scopes) != 3 || !scopes["external"] || !scopes["internal"] || !scopes["node"] {
		t.Errorf("scopes exported: %v", scopes)
	}
}
