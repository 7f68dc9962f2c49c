package lb

import (
	"net/netip"
	"testing"
)

// The strings tools and logs show: sluicectl's tables and the scenario dumps are built on them.
func TestStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{TCP.String(), "TCP"},
		{Proto(47).String(), "proto-47"},
		{FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30080, Proto: UDP}.String(), "10.0.0.1:30080/UDP"},
		{(FrontendAffinity | FrontendMaglev).String(), "affinity,maglev"},
		{FrontendFlags(0).String(), ""},
		{Backend{Addr: netip.MustParseAddr("10.244.1.10"), Port: 8080, Local: true, Terminating: true}.String(), "10.244.1.10:8080 (local) (terminating)"},
	} {
		if c.got != c.want {
			t.Errorf("%q, want %q", c.got, c.want)
		}
	}
}
