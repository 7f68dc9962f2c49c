package cluster

import "testing"

// The report's line counts each series once (a service port's scopes and families are series
// of their own) and says how many packets were IPv6.
func TestServedByFamily(t *testing.T) {
	s := &Served{peak: map[string]map[string]float64{
		Nodes[0].Name: {
			`family="IPv4",scope="external",service="ns/web:http"`: 10,
			`family="IPv6",scope="external",service="ns/web:http"`: 4,
			`family="IPv6",scope="internal",service="ns/web:http"`: 0,
		},
	}}
	want := Nodes[0].Name + ": 14 packets for 2 service ports (4 of them IPv6); " + Nodes[1].Name + ": 0 packets for 0 service ports"
	if got := s.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
