package cli

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"
	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/testutil"
)

var (
	nodeIP6    = netip.MustParseAddr("fd00::1")
	backendIP6 = netip.MustParseAddr("fd00::2")
	clientIP6  = netip.MustParseAddr("fd00::9")
)

// newFixture6 is newFixture with the IPv6 datapath loaded and pinned, the IPv6 side of web
// (-> remote [fd00::2]:8080) and one live IPv6 flow, [fd00::9]:41000 -> [fd00::1]:30080.
func newFixture6(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "-6", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad"},
		{"ip", "-6", "neigh", "replace", backendIP6.String(), "lladdr", backendMAC.String(), "dev", "eth0", "nud", "permanent"},
		{"ip", "-6", "neigh", "replace", clientIP6.String(), "lladdr", clientMAC.String(), "dev", "eth0", "nud", "permanent"},
	} {
		f.node.MustExec(t, c...)
	}
	v6, err := f.dp.LoadIPv6()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v6.Close() })
	k := maps.NewKernel(&f.dp.Objs.SluiceMaps).WithIPv6(&v6.Objs.Sluice6Maps)
	r := reconciler.New(k, 1000, 1000, zap.NewNop())
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	key := desired.ServiceKey{NodePort: 30080, Proto: lb.TCP, Family: lb.IPv6}
	st := desired.State{Addresses: []netip.Addr{nodeIP, nodeIP6}, Services: map[desired.ServiceKey]*desired.Service{
		key: {Key: key, Name: "default/web:http", Backends: []lb.Backend{{Addr: backendIP6, Port: 8080}}},
	}}
	if err := r.ApplyKeys(st, []desired.ServiceKey{key}); err != nil {
		t.Fatal(err)
	}
	p := testutil.Pkt{SrcMAC: clientMAC, DstMAC: f.node.MAC, Proto: layers.IPProtocolTCP, SYN: true,
		Src: netip.MustParseAddrPort("[fd00::9]:41000"), Dst: netip.MustParseAddrPort("[fd00::1]:30080"), Window: 1000}
	var ret uint32
	if err := f.node.Do(func() (err error) {
		ret, _, err = testutil.RunXDP(f.dp.Objs.SluiceXdp, f.node.Ifindex, p.Bytes())
		return err
	}); err != nil || ret != 3 {
		t.Fatalf("IPv6 SYN: verdict %d (%v), want XDP_TX", ret, err)
	}
	return f
}

// Every command shows both families: the IPv6 side of a dual-stack service is its own entry,
// its flows and session-affinity entries are listed with IPv4's, and its maps are counted.
func TestBothFamilies(t *testing.T) {
	f := newFixture6(t)
	var svcs []ServiceJSON
	f.runJSON(t, &svcs, "service", "list")
	var web6 *ServiceJSON
	for i := range svcs {
		if svcs[i].Name == "default/web:http" && svcs[i].Family == "IPv6" {
			web6 = &svcs[i]
		}
	}
	if len(svcs) != 6 || web6 == nil || web6.Frontends[0] != "[fd00::1]:30080" || len(web6.Backends) != 1 ||
		web6.Backends[0].Address != "[fd00::2]:8080" || web6.Packets != 1 {
		t.Fatalf("services: %+v", svcs)
	}
	if table := f.run(t, "service", "list"); !strings.Contains(table, "IPv6") || !strings.Contains(table, "[fd00::1]:30080") {
		t.Errorf("table:\n%s", table)
	}

	var flows []FlowJSON
	f.runJSON(t, &flows, "ct", "list", "--client", "fd00::9")
	if len(flows) != 1 || flows[0].Frontend != "[fd00::1]:30080" || flows[0].Backend != "[fd00::2]:8080" ||
		!strings.HasPrefix(flows[0].SNAT, "[fd00::1]:") || flows[0].Service != "default/web:http" {
		t.Errorf("IPv6 flows: %+v", flows)
	}

	var st StatsJSON
	f.runJSON(t, &st, "stats")
	found := false
	for _, m := range st.Maps {
		found = found || m.Name == "sluice_ct6" && m.Entries == 2
	}
	if !found {
		t.Errorf("stats lacks sluice_ct6 with the flow's two entries: %+v", st.Maps)
	}
}

// trace takes IPv6 addresses: the packet goes through the same entry program, which hands it
// to a copy of the IPv6 programs, and nothing is written.
func TestTraceIPv6(t *testing.T) {
	f := newFixture6(t)
	ct6 := func() int {
		m6, err := datapath.OpenPinned6(f.dir, true)
		if err != nil {
			t.Fatal(err)
		}
		defer m6.Close()
		n := 0
		if err := maps.NewKernel(&f.dp.Objs.SluiceMaps).WithIPv6(m6).Conntrack(func(maps.CTEntry) bool { n++; return true }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := ct6()
	var got TraceJSON
	f.runJSON(t, &got, "trace", "--src", "[fd00::9]:42000", "--dst", "[fd00::1]:30080")
	if got.Verdict != "XDP_TX" || got.Stage != "new-flow" || got.Service != "default/web:http" || got.Backend != "[fd00::2]:8080" ||
		!strings.HasPrefix(got.Output, "tcp [fd00::1]:") || !strings.Contains(got.Output, "-> [fd00::2]:8080 [S] hop limit 63") {
		t.Errorf("trace: %+v", got)
	}
	f.runJSON(t, &got, "trace", "--src", "[fd00::9]:41000", "--dst", "[fd00::1]:30080", "--flags", "A")
	if got.Stage != "established" || got.Backend != "[fd00::2]:8080" {
		t.Errorf("established: %+v", got)
	}
	if n := ct6(); n != before {
		t.Errorf("conntrack entries %d -> %d: trace wrote", before, n)
	}
	if _, errOut, code := f.runCode(t, "trace", "--src", "10.0.0.9:1", "--dst", "[fd00::1]:30080"); code == 0 || !strings.Contains(errOut, "two families") {
		t.Errorf("mixed families: exit %d: %s", code, errOut)
	}
}
