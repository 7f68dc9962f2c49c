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

// One service port's scopes and families share its name: each is its own series, and the
// scrape succeeds (a repeated series fails the whole of /metrics).
func TestServiceSeriesPerScopeAndFamily(t *testing.T) {
	k := testutil.KernelMaps(t, datapath.Config{})
	for scope := uint8(0); scope < 3; scope++ {
		for _, f := range []lb.Family{lb.IPv4, lb.IPv6} {
			if err := k.UpdateServiceInfo(uint32(scope*2+uint8(f)+1), maps.ServiceInfo{Name: "default/web:http", Proto: lb.TCP, Scope: scope, Family: f}); err != nil {
				t.Fatal(err)
			}
		}
	}
	reg := prometheus.NewRegistry()
	metrics.RegisterDatapath(reg, k)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	series := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "sluice_service_packets_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var scope, family string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "scope":
					scope = l.GetValue()
				case "family":
					family = l.GetValue()
				}
			}
			series[scope+"/"+family] = true
		}
	}
	for _, want := range []string{"external/IPv4", "external/IPv6", "internal/IPv4", "internal/IPv6", "node/IPv4", "node/IPv6"} {
		if !series[want] {
			t.Errorf("series exported: %v, want %s", series, want)
		}
	}
}
