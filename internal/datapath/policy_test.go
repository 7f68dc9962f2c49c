package datapath_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maglev"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// Service policy in the datapath: session affinity, Maglev, loadBalancerSourceRanges and
// externalTrafficPolicy Local's drop. Backends are local pods, so a translated SYN is passed to
// the stack with only its destination rewritten: the output names the backend picked.

var policyPods = map[uint32]netip.Addr{
	3:  podIP,
	10: netip.MustParseAddr("10.244.1.11"),
	11: netip.MustParseAddr("10.244.1.12"),
}

// policyService writes service svc on nodeIP:port/TCP with the three local pods.
func (e *env) policyService(t *testing.T, svc uint32, port uint16, fe lb.Frontend) {
	t.Helper()
	for id, addr := range policyPods {
		must(t, e.m.UpdateBackend(id, lb.Backend{Addr: addr, Port: 80, Local: true}))
	}
	for i, id := range []uint32{3, 10, 11} {
		must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: svc, Slot: uint32(i + 1)}, id))
		if fe.Flags&lb.FrontendAffinity != 0 {
			must(t, e.m.UpdateAffinityMatch(maps.AffinityMatch{ServiceID: svc, BackendID: id}))
		}
	}
	fe.ServiceID = svc
	if fe.Count == 0 && fe.Flags&lb.FrontendDropEmpty == 0 {
		fe.Count = 3
	}
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: port, Proto: lb.TCP}, fe))
	must(t, e.m.SetFrontendPort(port))
}

// synFrom sends a SYN from src:sport to nodeIP:port and returns the pod it was sent to, checking
// the rest of the rewrite.
func (e *env) synFrom(t *testing.T, src netip.Addr, sport, port uint16) netip.Addr {
	t.Helper()
	p := e.fromClient(layers.IPProtocolTCP, sport, port)
	p.Src, p.SYN, p.Payload = ap(src, sport), true, nil
	out := e.xdp(t, p.Bytes(), xdpPass)
	if err := testutil.VerifyChecksums(out); err != nil {
		t.Fatalf("checksums: %v", err)
	}
	dst, _ := netip.AddrFromSlice(out[30:34])
	want := p
	want.Dst = ap(dst, 80)
	if d := testutil.Diff(trimPadding(want.Bytes()), trimPadding(out)); d != "" {
		t.Fatalf("rewrite differs:\n%s", d)
	}
	return dst
}

// dropFromAffinityService takes pod out of service 20's slots (the other two stay, count 2)
// and returns its backend ID; the affinity set is left as it was.
func (e *env) dropFromAffinityService(t *testing.T, pod netip.Addr) uint32 {
	t.Helper()
	var podID uint32
	var keep []uint32
	for id, a := range policyPods {
		if a == pod {
			podID = id
		} else {
			keep = append(keep, id)
		}
	}
	slices.Sort(keep)
	for i, id := range keep {
		must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: 20, Slot: uint32(i + 1)}, id))
	}
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30100, Proto: lb.TCP},
		lb.Frontend{ServiceID: 20, Count: 2, Flags: lb.FrontendAffinity, AffinityTimeout: 10}))
	return podID
}

func TestPolicySessionAffinity(t *testing.T) {
	e := newEnv(t)
	e.policyService(t, 20, 30100, lb.Frontend{Flags: lb.FrontendAffinity, AffinityTimeout: 10})
	first := e.synFrom(t, clientIP, 40000, 30100)
	for sport := uint16(40001); sport < 40030; sport++ {
		if got := e.synFrom(t, clientIP, sport, 30100); got != first {
			t.Fatalf("connection from port %d went to %s, want the client's %s", sport, got, first)
		}
	}

	// Other clients are balanced on their own (and remembered apart).
	seen := map[netip.Addr]bool{}
	for i := 0; i < 30; i++ {
		// Without a remembered backend each new client is a fresh random choice.
		seen[e.synFrom(t, netip.AddrFrom4([4]byte{10, 0, 0, byte(20 + i)}), 40000, 30100)] = true
	}
	if len(seen) < 2 {
		t.Errorf("30 clients all went to %v: affinity is per client", seen)
	}

	// The remembered backend leaves the service: the client is balanced again, then sticks
	// to its new backend.
	firstID := e.dropFromAffinityService(t, first)
	must(t, e.m.DeleteAffinityMatch(maps.AffinityMatch{ServiceID: 20, BackendID: firstID}))
	second := e.synFrom(t, clientIP, 41000, 30100)
	if second == first {
		t.Fatalf("client still sent to %s, which left the service", first)
	}
	for sport := uint16(41001); sport < 41010; sport++ {
		if got := e.synFrom(t, clientIP, sport, 30100); got != second {
			t.Fatalf("after the change, connection went to %s, want %s", got, second)
		}
	}

	// Past the timeout (counted from the client's last connection) the choice is new each time.
	ak := datapath.SluiceAffinityKey{SvcId: 20, Client: maps.Addr4(clientIP)}
	seen = map[netip.Addr]bool{}
	for sport := uint16(42000); sport < 42030; sport++ {
		var a datapath.SluiceAffinity
		must(t, e.dp.Objs.SluiceAffinity.Lookup(&ak, &a))
		a.LastSeen -= 11e9
		must(t, e.dp.Objs.SluiceAffinity.Update(&ak, &a, 0))
		seen[e.synFrom(t, clientIP, sport, 30100)] = true
	}
	if len(seen) != 2 {
		t.Errorf("after the timeout, 30 connections went to %v, want both backends", seen)
	}

	// Without the flag the same client is spread.
	e.policyService(t, 21, 30101, lb.Frontend{})
	seen = map[netip.Addr]bool{}
	for sport := uint16(43000); sport < 43030; sport++ {
		seen[e.synFrom(t, clientIP, sport, 30101)] = true
	}
	if len(seen) < 2 {
		t.Errorf("without affinity, 30 connections all went to %v", seen)
	}
}

// lbHash is lb_hash in bpf/lib/lb.h: the Maglev index of a flow.
func lbHash(a, b, c uint32) uint32 {
	rol := func(v uint32, s uint) uint32 { return v<<s | v>>(32-s) }
	a += 0xdeadbeef + 12
	b += 0xdeadbeef + 12
	c += 0xdeadbeef + 12
	c ^= b
	c -= rol(b, 14)
	a ^= c
	a -= rol(c, 11)
	b ^= a
	b -= rol(a, 25)
	c ^= b
	c -= rol(b, 16)
	a ^= c
	a -= rol(c, 4)
	b ^= a
	b -= rol(a, 14)
	c ^= b
	c -= rol(b, 24)
	return c
}

func TestPolicyMaglev(t *testing.T) {
	e := newEnv(t)
	e.policyService(t, 22, 30102, lb.Frontend{Flags: lb.FrontendMaglev})
	ids := []uint32{3, 10, 11}
	table := make([]uint32, maps.DefaultMaglevSize)
	for i := range table {
		table[i] = ids[(i*7/5)%3]
	}
	must(t, e.m.UpdateMaglev(22, table))
	got, err := e.m.MaglevTables()
	must(t, err)
	if len(got[22]) != len(table) || got[22][12345] != table[12345] {
		t.Fatalf("maglev table read back with %d entries", len(got[22]))
	}

	seen := map[netip.Addr]bool{}
	for sport := uint16(44000); sport < 44040; sport++ {
		ports := uint32(maps.Port16(sport))<<16 | uint32(maps.Port16(30102))
		idx := lbHash(maps.Addr4(clientIP), maps.Addr4(nodeIP), ports^6) % maps.DefaultMaglevSize
		want := policyPods[table[idx]]
		if got := e.synFrom(t, clientIP, sport, 30102); got != want {
			t.Fatalf("flow from port %d went to %s, want table[%d] = %s", sport, got, idx, want)
		}
		seen[want] = true
	}
	if len(seen) != 3 {
		t.Errorf("40 flows reached %v, want all three backends", seen)
	}

	// A new table replaces the old one whole.
	for i := range table {
		table[i] = 10
	}
	must(t, e.m.UpdateMaglev(22, table))
	if got := e.synFrom(t, clientIP, 45000, 30102); got != policyPods[10] {
		t.Fatalf("after the swap, went to %s, want %s", got, policyPods[10])
	}
	// No table (the agent mid-update): dropped and counted, never sent to a wrong backend.
	must(t, e.m.DeleteMaglev(22))
	before := e.reasons(t)[datapath.SluiceReasonREASON_DROP_NO_BACKEND]
	p := e.fromClient(layers.IPProtocolTCP, 45001, 30102)
	p.SYN, p.Payload = true, nil
	e.xdp(t, p.Bytes(), xdpDrop)
	if after := e.reasons(t)[datapath.SluiceReasonREASON_DROP_NO_BACKEND]; after != before+1 {
		t.Errorf("drop_no_backend %d -> %d", before, after)
	}
}

func TestPolicySourceRanges(t *testing.T) {
	e := newEnv(t)
	e.policyService(t, 23, 30103, lb.Frontend{Flags: lb.FrontendSourceRanges})
	must(t, e.m.UpdateSourceRange(maps.SourceRange{ServiceID: 23, Prefix: netip.MustParsePrefix("10.0.0.8/30")}))
	// Another service's range allows nothing here.
	must(t, e.m.UpdateSourceRange(maps.SourceRange{ServiceID: 24, Prefix: netip.MustParsePrefix("0.0.0.0/0")}))
	got, err := e.m.SourceRanges()
	must(t, err)
	if !got[maps.SourceRange{ServiceID: 23, Prefix: netip.MustParsePrefix("10.0.0.8/30")}] || len(got) != 2 {
		t.Fatalf("source ranges read back as %v", got)
	}

	e.synFrom(t, clientIP, 46000, 30103) // 10.0.0.9: inside
	for _, src := range []string{"10.0.0.12", "10.0.0.200", "192.168.0.9"} {
		before := e.reasons(t)[datapath.SluiceReasonREASON_DROP_SOURCE_RANGE]
		p := e.fromClient(layers.IPProtocolTCP, 46001, 30103)
		p.Src, p.SYN, p.Payload = ap(netip.MustParseAddr(src), 46001), true, nil
		e.xdp(t, p.Bytes(), xdpDrop)
		if after := e.reasons(t)[datapath.SluiceReasonREASON_DROP_SOURCE_RANGE]; after != before+1 {
			t.Errorf("%s: drop_source_range %d -> %d", src, before, after)
		}
	}
}

func TestPolicyDropWithoutLocalEndpoint(t *testing.T) {
	e := newEnv(t)
	e.policyService(t, 25, 30104, lb.Frontend{Flags: lb.FrontendDropEmpty})
	for _, proto := range []layers.IPProtocol{layers.IPProtocolTCP, layers.IPProtocolUDP} {
		if proto == layers.IPProtocolUDP {
			must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30104, Proto: lb.UDP}, lb.Frontend{ServiceID: 26, Flags: lb.FrontendDropEmpty}))
		}
		before := e.reasons(t)
		p := e.fromClient(proto, 47000, 30104)
		p.SYN = proto == layers.IPProtocolTCP
		e.xdp(t, p.Bytes(), xdpDrop)
		after := e.reasons(t)
		if after[datapath.SluiceReasonREASON_DROP_NO_LOCAL_ENDPOINT] != before[datapath.SluiceReasonREASON_DROP_NO_LOCAL_ENDPOINT]+1 {
			t.Errorf("%s: drop_no_local_endpoint not counted", proto)
		}
		for _, r := range []maps.Reason{datapath.SluiceReasonREASON_REJECT_TCP_RST, datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE} {
			if after[r] != before[r] {
				t.Errorf("%s: rejected (%s) instead of dropped", proto, maps.ReasonNames[r])
			}
		}
	}
}

// A load-balancer IP need not route back to this node: remote backends see the frontend's SNAT
// address (a node address), and the reply leaves from the load-balancer IP.
func TestPolicySNATAddressOfLoadBalancerIP(t *testing.T) {
	e := newEnv(t)
	lbIP := netip.MustParseAddr("203.0.113.10")
	must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: 30, Slot: 1}, 1))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: lbIP, Port: 80, Proto: lb.TCP}, lb.Frontend{ServiceID: 30, Count: 1, SNATAddr: nodeIP}))
	must(t, e.m.SetFrontendPort(80))

	p := e.fromClient(layers.IPProtocolTCP, 48000, 80)
	p.Dst, p.SYN, p.Payload = ap(lbIP, 80), true, nil
	out := e.xdp(t, p.Bytes(), xdpTX)
	if err := testutil.VerifyChecksums(out); err != nil {
		t.Fatal(err)
	}
	src, _ := netip.AddrFromSlice(out[26:30])
	dst, _ := netip.AddrFromSlice(out[30:34])
	snat := uint16(out[34])<<8 | uint16(out[35])
	if src != nodeIP || dst != backendIP {
		t.Fatalf("forwarded %s -> %s, want %s -> %s", src, dst, nodeIP, backendIP)
	}

	reply := e.fromClient(layers.IPProtocolTCP, 0, 0)
	reply.SrcMAC, reply.Src, reply.Dst = backendMAC, ap(backendIP, 8080), ap(nodeIP, snat)
	reply.SYN, reply.ACK, reply.Payload = true, true, nil
	back := e.xdp(t, reply.Bytes(), xdpTX)
	if err := testutil.VerifyChecksums(back); err != nil {
		t.Fatal(err)
	}
	rsrc, _ := netip.AddrFromSlice(back[26:30])
	rdst, _ := netip.AddrFromSlice(back[30:34])
	if rsrc != lbIP || rdst != clientIP || uint16(back[34])<<8|uint16(back[35]) != 80 {
		t.Fatalf("reply %s -> %s, want %s:80 -> %s", rsrc, rdst, lbIP, clientIP)
	}
}

// Maglev's promise, measured on flows through the program: removing one of N backends moves
// the flows of that backend and, of the others', only a small margin. The program is loaded in
// trace mode (no conntrack entries), so each run decides every flow afresh.
func TestPolicyMaglevRemovalMovesFewFlows(t *testing.T) {
	const n, flows = 10, 10000
	node := testutil.NewNode(t, "sl-maglev-", nodeIP, nil)
	dp := loadShared(t, datapath.Config{Trace: true, XDPIfindex: uint32(node.Ifindex)})
	e := &env{ns: node.Netns, ifindex: node.Ifindex, nodeMAC: node.MAC, dp: dp, m: maps.NewKernel(&dp.Objs.SluiceMaps)}

	var keys []string
	var ids []uint32
	for i := 1; i <= n; i++ {
		addr := netip.AddrFrom4([4]byte{10, 244, 1, byte(i)})
		must(t, e.m.UpdateBackend(uint32(i), lb.Backend{Addr: addr, Port: 80, Local: true}))
		keys, ids = append(keys, netip.AddrPortFrom(addr, 80).String()), append(ids, uint32(i))
	}
	setTable := func(keys []string, ids []uint32) {
		idx, err := maglev.Table(keys, nil, maps.DefaultMaglevSize)
		must(t, err)
		table := make([]uint32, len(idx))
		for i, j := range idx {
			table[i] = ids[j]
		}
		must(t, e.m.UpdateMaglev(40, table))
	}
	setTable(keys, ids)
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30110, Proto: lb.TCP}, lb.Frontend{ServiceID: 40, Count: n, Flags: lb.FrontendMaglev}))
	must(t, e.m.SetFrontendPort(30110))

	pick := func() []netip.Addr {
		out := make([]netip.Addr, flows)
		for i := range out {
			src := netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})
			p := e.fromClient(layers.IPProtocolTCP, uint16(1024+i%50000), 30110)
			p.Src, p.SYN, p.Payload = ap(src, uint16(1024+i%50000)), true, nil
			ret, got := e.run(t, e.dp.Objs.SluiceXdp, true, p.Bytes())
			if ret != xdpPass {
				t.Fatalf("flow %d: verdict %d", i, ret)
			}
			out[i], _ = netip.AddrFromSlice(got[30:34])
		}
		return out
	}
	before := pick()
	removed := netip.MustParseAddr("10.244.1.5")
	setTable(append(slices.Clone(keys[:4]), keys[5:]...), append(slices.Clone(ids[:4]), ids[5:]...))
	after := pick()

	var onRemoved, moved int
	for i := range before {
		switch {
		case before[i] == removed:
			onRemoved++
		case after[i] != before[i]:
			moved++
		}
		if after[i] == removed {
			t.Fatalf("flow %d still goes to the removed backend", i)
		}
	}
	total := float64(onRemoved+moved) / flows
	t.Logf("%d flows over %d backends; removing one moved %.2f%% of all flows: its own %.2f%% and %.2f%% of the others'",
		flows, n, 100*total, 100*float64(onRemoved)/flows, 100*float64(moved)/flows)
	// 1/N plus a margin: the table itself moves about 0.5% of the others' entries (internal/maglev).
	if total > 1.0/n+0.02 || float64(moved)/flows > 0.02 {
		t.Errorf("moved %.2f%% of flows (%d of the other backends'): want at most 1/N + 2%%", 100*total, moved)
	}
}

// A remembered backend whose entry is gone (deleted while the affinity set still named it) is
// not the client's any more: its new connection is balanced again and remembered anew, instead
// of being dropped, its dead entry refreshed, for as long as it retries.
func TestPolicyAffinityToAMissingBackend(t *testing.T) {
	e := newEnv(t)
	e.policyService(t, 20, 30100, lb.Frontend{Flags: lb.FrontendAffinity, AffinityTimeout: 10})
	first := e.synFrom(t, clientIP, 40000, 30100)
	firstID := e.dropFromAffinityService(t, first)
	must(t, e.m.DeleteBackend(firstID)) // the affinity set still names it
	second := e.synFrom(t, clientIP, 41000, 30100)
	if second == first {
		t.Fatalf("sent to %s, whose backend entry is gone", first)
	}
	for sport := uint16(41001); sport < 41005; sport++ {
		if got := e.synFrom(t, clientIP, sport, 30100); got != second {
			t.Fatalf("connection went to %s, want the newly remembered %s", got, second)
		}
	}
}
