package datapath_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// Connection-table behaviour across packets: TCP state on both entries of a flow, refresh and
// recreation of the reverse entry, new choices on closed flows, and the XDP -> tc handoff.

const (
	ctIngress = 0x01
	ctEgress  = 0x02
	ctLocal   = 0x04
	ctReply   = 0x08
	ctClosing = 0x10
	ctSYN     = 0x20
	ctFIN     = 0x40
)

func ctKey(src, dst netip.AddrPort, proto uint8) datapath.SluiceCtKey {
	return datapath.SluiceCtKey{Saddr: maps.Addr4(src.Addr()), Daddr: maps.Addr4(dst.Addr()),
		Sport: maps.Port16(src.Port()), Dport: maps.Port16(dst.Port()), Proto: proto}
}

func (e *env) ct(t *testing.T, k datapath.SluiceCtKey) (datapath.SluiceCtEntry, bool) {
	t.Helper()
	var v datapath.SluiceCtEntry
	err := e.dp.Objs.SluiceCt.Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// age moves an entry's last_seen back by d seconds, as if that much time had passed.
func (e *env) age(t *testing.T, k datapath.SluiceCtKey, seconds uint64) {
	t.Helper()
	v, ok := e.ct(t, k)
	if !ok {
		t.Fatal("no entry to age")
	}
	v.LastSeen -= seconds * 1e9
	if err := e.dp.Objs.SluiceCt.Update(&k, &v, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
}

func (e *env) tcp(sport uint16, syn, ack, fin, rst bool) []byte {
	p := e.fromClient(layers.IPProtocolTCP, sport, 30080)
	p.SYN, p.ACK, p.FIN, p.RST, p.Payload = syn, ack, fin, rst, nil
	return p.Bytes()
}

func (e *env) fromBackend(snat uint16, syn, ack, fin, rst bool) []byte {
	p := e.fromClient(layers.IPProtocolTCP, 0, 0)
	p.SrcMAC, p.Src, p.Dst = backendMAC, ap(backendIP, 8080), ap(nodeIP, snat)
	p.SYN, p.ACK, p.FIN, p.RST, p.Payload = syn, ack, fin, rst, nil
	return p.Bytes()
}

func (e *env) xdp(t *testing.T, in []byte, want uint32) []byte {
	t.Helper()
	ret, out := e.run(t, e.dp.Objs.SluiceXdp, true, in)
	if ret != want {
		t.Fatalf("verdict %d, want %d", ret, want)
	}
	return out
}

func TestConntrackTCPLifecycle(t *testing.T) {
	e := newEnv(t)
	client := ap(clientIP, 43000)
	fk := ctKey(client, ap(nodeIP, 30080), 6)

	out := e.xdp(t, e.tcp(43000, true, false, false, false), xdpTX)
	snat := binary.BigEndian.Uint16(out[34:])
	rk := ctKey(ap(backendIP, 8080), ap(nodeIP, snat), 6)
	fwd, ok1 := e.ct(t, fk)
	rev, ok2 := e.ct(t, rk)
	if !ok1 || !ok2 || fwd.Flags != ctIngress|ctSYN || rev.Flags != ctIngress|ctReply|ctSYN {
		t.Fatalf("after SYN: fwd %+v (%v) rev %+v (%v): want both entries in SYN state", fwd, ok1, rev, ok2)
	}

	e.xdp(t, e.fromBackend(snat, true, true, false, false), xdpTX)
	fwd, _ = e.ct(t, fk)
	rev, _ = e.ct(t, rk)
	if fwd.Flags&ctSYN != 0 || rev.Flags&ctSYN != 0 {
		t.Fatalf("after SYN-ACK: fwd %#x rev %#x: want established on both", fwd.Flags, rev.Flags)
	}

	// Client half-closes: only its direction has FIN, the flow stays open.
	e.xdp(t, e.tcp(43000, false, true, true, false), xdpTX)
	fwd, _ = e.ct(t, fk)
	rev, _ = e.ct(t, rk)
	if fwd.Flags&ctFIN == 0 || fwd.Flags&ctClosing != 0 || rev.Flags&ctClosing != 0 {
		t.Fatalf("after client FIN: fwd %#x rev %#x: want FIN on fwd, not closing", fwd.Flags, rev.Flags)
	}
	// The backend keeps sending: still translated, same port.
	e.xdp(t, e.fromBackend(snat, false, true, false, false), xdpTX)
	// The backend's FIN closes both.
	e.xdp(t, e.fromBackend(snat, false, true, true, false), xdpTX)
	fwd, _ = e.ct(t, fk)
	rev, _ = e.ct(t, rk)
	if fwd.Flags&ctClosing == 0 || rev.Flags&ctClosing == 0 {
		t.Fatalf("after FIN both ways: fwd %#x rev %#x: want closing on both", fwd.Flags, rev.Flags)
	}
	// The last ACK still goes through on the same port.
	out = e.xdp(t, e.tcp(43000, false, true, false, false), xdpTX)
	if got := binary.BigEndian.Uint16(out[34:]); got != snat {
		t.Fatalf("last ACK on port %d, want %d", got, snat)
	}
	// A new SYN on the closing tuple is a new connection: a new SNAT port (the old one waits
	// out the backend's TIME_WAIT).
	out = e.xdp(t, e.tcp(43000, true, false, false, false), xdpTX)
	if got := binary.BigEndian.Uint16(out[34:]); got == snat {
		t.Fatalf("new connection reused SNAT port %d of a closing flow", got)
	}
}

func TestConntrackRSTClosesBothAndFreesAfterReuseDelay(t *testing.T) {
	e := newEnvWith(t, datapath.Config{SNATPortMin: 61000, SNATPortMax: 61000})
	fk := ctKey(ap(clientIP, 43100), ap(nodeIP, 30080), 6)
	rk := ctKey(ap(backendIP, 8080), ap(nodeIP, 61000), 6)
	e.xdp(t, e.tcp(43100, true, false, false, false), xdpTX)
	e.xdp(t, e.tcp(43100, false, false, false, true), xdpTX) // client aborts: RST
	fwd, _ := e.ct(t, fk)
	rev, _ := e.ct(t, rk)
	if fwd.Flags&ctClosing == 0 || rev.Flags&ctClosing == 0 {
		t.Fatalf("after RST: fwd %#x rev %#x: want closing on both", fwd.Flags, rev.Flags)
	}
	// The only port is held until the close timeout and the reuse delay have passed.
	e.xdp(t, e.tcp(43101, true, false, false, false), xdpDrop)
	e.age(t, rk, 30)
	e.xdp(t, e.tcp(43101, true, false, false, false), xdpDrop)
	e.age(t, rk, 31)
	e.xdp(t, e.tcp(43101, true, false, false, false), xdpTX)

	// An unanswered SYN holds its port only for the SYN timeout, not the 6 h of a flow.
	e.age(t, rk, 59)
	e.xdp(t, e.tcp(43102, true, false, false, false), xdpDrop)
	e.age(t, rk, 2)
	e.xdp(t, e.tcp(43102, true, false, false, false), xdpTX)
}

// Each direction refreshes the other, and recreates it if it was evicted.
func TestConntrackPeersRefreshAndRecreate(t *testing.T) {
	e := newEnv(t)
	udp := func(sport uint16) []byte { return e.fromClient(layers.IPProtocolUDP, sport, 30081).Bytes() }
	fk := ctKey(ap(clientIP, 43200), ap(nodeIP, 30081), 17)
	out := e.xdp(t, udp(43200), xdpTX)
	snat := binary.BigEndian.Uint16(out[34:])
	rk := ctKey(ap(backendIP, 5353), ap(nodeIP, snat), 17)

	// A backend streaming to a silent client keeps the client's entry alive.
	e.age(t, fk, 50)
	e.age(t, rk, 50)
	reply := e.fromClient(layers.IPProtocolUDP, 0, 0)
	reply.SrcMAC, reply.Src, reply.Dst = backendMAC, ap(backendIP, 5353), ap(nodeIP, snat)
	e.xdp(t, reply.Bytes(), xdpTX)
	e.age(t, fk, 20) // 70 s since the client's last packet, 20 s since the reply
	out = e.xdp(t, udp(43200), xdpTX)
	if got := binary.BigEndian.Uint16(out[34:]); got != snat {
		t.Fatalf("client entry expired under a live flow: port %d, want %d", got, snat)
	}

	// The LRU evicts the reverse entry: the next forward packet (a second later) recreates it,
	// and counts it.
	if err := e.dp.Objs.SluiceCt.Delete(&rk); err != nil {
		t.Fatal(err)
	}
	e.age(t, fk, 2)
	lost := e.reasons(t)[datapath.SluiceReasonREASON_CT_PEER_LOST]
	e.xdp(t, udp(43200), xdpTX)
	if rev, ok := e.ct(t, rk); !ok || rev.Flags != ctIngress|ctReply || maps.PortFrom16(rev.NatDport) != 43200 {
		t.Fatalf("reverse entry not recreated: %+v %v", rev, ok)
	}
	if got := e.reasons(t)[datapath.SluiceReasonREASON_CT_PEER_LOST]; got != lost+1 {
		t.Errorf("ct_peer_lost %d -> %d, want +1", lost, got)
	}

	// A reverse tuple taken over by another flow is left alone.
	other := datapath.SluiceCtEntry{NatSaddr: maps.Addr4(nodeIP), NatDaddr: maps.Addr4(netip.MustParseAddr("10.0.0.77")),
		NatSport: maps.Port16(30081), NatDport: maps.Port16(999), Flags: ctIngress | ctReply, LastSeen: 1}
	rev, _ := e.ct(t, rk)
	other.LastSeen = rev.LastSeen
	if err := e.dp.Objs.SluiceCt.Update(&rk, &other, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	e.age(t, fk, 2)
	e.xdp(t, udp(43200), xdpTX)
	if got, _ := e.ct(t, rk); got.NatDaddr != other.NatDaddr {
		t.Errorf("another flow's entry was overwritten: %+v", got)
	}
}

// Without a neighbour entry XDP leaves the packet untranslated to tc, which finds the same
// flow and hands it to bpf_redirect_neigh; the service counts it once.
func TestNoNeighbourHandsOffToTC(t *testing.T) {
	e := newEnv(t)
	e.ns.MustExec(t, "ip", "neigh", "del", backendIP.String(), "dev", "eth0")
	in := e.tcp(43300, true, false, false, false)
	out := e.xdp(t, in, xdpPass)
	if string(out) != string(in) {
		t.Fatal("XDP changed a packet it passed to tc")
	}
	if r := e.reasons(t)[datapath.SluiceReasonREASON_PASS_TO_TC]; r != 1 {
		t.Errorf("pass_to_tc = %d", r)
	}
	ret, out := e.run(t, e.dp.Objs.SluiceTcIngress, false, in)
	if ret != tcRedirect {
		t.Fatalf("tc verdict %d, want redirect", ret)
	}
	if got := netip.AddrFrom4([4]byte(out[30:34])); got != backendIP {
		t.Errorf("tc sent it to %s", got)
	}
	s, err := e.m.ServiceStats(1)
	if err != nil || s.Packets != 1 {
		t.Errorf("service counted %d packets (%v), want 1", s.Packets, err)
	}
}

// tc egress touches only local backends' replies: not a remote flow's ingress entries.
func TestEgressIgnoresIngressEntries(t *testing.T) {
	e := newEnv(t)
	must(t, e.m.SetBackendPort(8080)) // past the prefilter: the hook flag must stop it
	out := e.xdp(t, e.tcp(43400, true, false, false, false), xdpTX)
	snat := binary.BigEndian.Uint16(out[34:])
	in := e.fromBackend(snat, true, true, false, false) // a tuple with an ingress entry
	ret, got := e.run(t, e.dp.Objs.SluiceTcEgress, false, in)
	if ret != tcOK || string(got[:len(in)]) != string(in) {
		t.Errorf("egress rewrote a packet matching an ingress-only entry (verdict %d)", ret)
	}
}

// A full table (an LRU) never refuses a new flow: the least recently used entries go. A flow
// whose entry went loses its translation; its next TCP segment is left to the kernel and
// counted (pass_no_flow), which is what a user sees.
func TestConntrackFullEvictsLeastRecentlyUsed(t *testing.T) {
	e := newEnvWith(t, datapath.Config{MaxConntrack: 64})
	for sport := uint16(44000); sport < 44100; sport++ {
		e.xdp(t, e.tcp(sport, true, false, false, false), xdpTX)
	}
	n := 0
	var k datapath.SluiceCtKey
	var v datapath.SluiceCtEntry
	for it := e.dp.Objs.SluiceCt.Iterate(); it.Next(&k, &v); {
		n++
	}
	if n > 64 {
		t.Fatalf("%d entries in a 64-entry table", n)
	}
	if _, ok := e.ct(t, ctKey(ap(clientIP, 44099), ap(nodeIP, 30080), 6)); !ok {
		t.Error("the newest flow was evicted")
	}
	// The kernel's LRU is approximate (lists per CPU, evicted in batches): some early flow went,
	// not necessarily the very first.
	evicted := uint16(0)
	for sport := uint16(44000); sport < 44050 && evicted == 0; sport++ {
		if _, ok := e.ct(t, ctKey(ap(clientIP, sport), ap(nodeIP, 30080), 6)); !ok {
			evicted = sport
		}
	}
	if evicted == 0 {
		t.Fatal("none of the first 50 of 100 flows (200 entries) left a 64-entry table")
	}
	before := e.reasons(t)[datapath.SluiceReasonREASON_PASS_NO_FLOW]
	e.xdp(t, e.tcp(evicted, false, true, false, false), xdpPass)
	if got := e.reasons(t)[datapath.SluiceReasonREASON_PASS_NO_FLOW]; got != before+1 {
		t.Errorf("pass_no_flow %d -> %d for an evicted flow's segment", before, got)
	}
}

// runGSO runs tc ingress on frame as a GRO-merged packet of segments of gsoSize bytes of
// payload, and returns the verdict and the frame as the program left it.
func (e *env) runGSO(t *testing.T, frame []byte, gsoSize uint32) (uint32, []byte) {
	t.Helper()
	var ret uint32
	out := make([]byte, len(frame)+512)
	err := e.ns.Do(func() error {
		var err error
		segs := (uint32(len(frame)) + gsoSize - 1) / gsoSize
		ret, err = e.dp.Objs.SluiceTcIngress.Run(&ebpf.RunOptions{Data: frame, DataOut: out,
			Context: skbGSO{Ifindex: uint32(e.ifindex), GSOSegs: segs, GSOSize: gsoSize}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret, out
}

// skbGSO is struct __sk_buff up to gso_size: enough to hand BPF_PROG_TEST_RUN a GRO-merged
// packet (ifindex at 40, gso_segs at 164, gso_size at 176).
type skbGSO struct {
	_       [10]uint32
	Ifindex uint32
	_       [30]uint32
	GSOSegs uint32
	_       [2]uint32
	GSOSize uint32
}

// GRO merges a TCP stream's segments into one large sk_buff before tc sees it: tc must forward
// it (it leaves as segments), not take its length for a packet over the MTU. (An iperf3 run
// through sluice in tc mode stalled on this: every merged packet was dropped as
// drop_frag_needed.)
func TestTCForwardsGROMergedPackets(t *testing.T) {
	e := newEnv(t)
	syn := e.tcp(45000, true, false, false, false)
	e.xdp(t, syn, xdpTX)
	p := e.fromClient(layers.IPProtocolTCP, 45000, 30080)
	p.ACK, p.Payload = true, make([]byte, 2800)
	frame := p.Bytes()
	before := e.reasons(t)[datapath.SluiceReasonREASON_DROP_FRAG_NEEDED]
	if ret, _ := e.runGSO(t, frame, 1400); ret != tcRedirect {
		t.Errorf("verdict %d, want redirect (%d); drop_frag_needed %d -> %d", ret, tcRedirect,
			before, e.reasons(t)[datapath.SluiceReasonREASON_DROP_FRAG_NEEDED])
	}
}

// Generic XDP runs after GRO, so it meets merged packets longer than the MTU; the FIB lookup
// answers "fragmentation needed" from the IP length. XDP must hand such a packet, untouched,
// to tc (which knows it leaves as segments), not drop it.
func TestXDPHandsOversizePacketsToTC(t *testing.T) {
	e := newEnv(t)
	e.xdp(t, e.tcp(45100, true, false, false, false), xdpTX)
	p := e.fromClient(layers.IPProtocolTCP, 45100, 30080)
	p.ACK, p.Payload = true, make([]byte, 2800)
	frame := p.Bytes()
	reasons := e.reasons(t)
	out := e.xdp(t, frame, xdpPass)
	if d := testutil.Diff(frame, out); d != "" {
		t.Errorf("the packet handed to tc was changed:\n%s", d)
	}
	after := e.reasons(t)
	if after[datapath.SluiceReasonREASON_PASS_TO_TC] != reasons[datapath.SluiceReasonREASON_PASS_TO_TC]+1 ||
		after[datapath.SluiceReasonREASON_DROP_FRAG_NEEDED] != reasons[datapath.SluiceReasonREASON_DROP_FRAG_NEEDED] {
		t.Errorf("reasons: pass_to_tc %d -> %d, drop_frag_needed %d -> %d; want one pass_to_tc",
			reasons[datapath.SluiceReasonREASON_PASS_TO_TC], after[datapath.SluiceReasonREASON_PASS_TO_TC],
			reasons[datapath.SluiceReasonREASON_DROP_FRAG_NEEDED], after[datapath.SluiceReasonREASON_DROP_FRAG_NEEDED])
	}
}

// A dead flow's SNAT port is taken by one CPU only: a dead entry is claimed (an atomic add to
// last_seen) before it is deleted, so a CPU that finds it already claimed by another leaves the
// port to it instead of deleting the other's fresh entry. With a one-port range every SYN
// probes the same port.
func TestSNATClaimOfADeadEntry(t *testing.T) {
	const port, claimBit = 20000, uint64(1) << 62
	for _, c := range []struct {
		description string
		lastSeen    func(now uint64) uint64
		want        uint32 // verdict of the next SYN
	}{
		{"a dead entry is taken over", func(uint64) uint64 { return 1 }, xdpTX},
		{"a dead entry another CPU is claiming is left to it", func(uint64) uint64 { return 1 | claimBit }, xdpDrop},
		{"a live entry is left alone", func(now uint64) uint64 { return now }, xdpDrop},
	} {
		t.Run(c.description, func(t *testing.T) {
			e := newEnvWith(t, datapath.Config{SNATPortMin: port, SNATPortMax: port})
			out := e.xdp(t, e.tcp(46000, true, false, false, false), xdpTX)
			if got := binary.BigEndian.Uint16(out[34:]); got != port {
				t.Fatalf("first flow got SNAT port %d", got)
			}
			rk := ctKey(ap(backendIP, 8080), ap(nodeIP, port), 6)
			v, _ := e.ct(t, rk)
			v.LastSeen = c.lastSeen(v.LastSeen)
			if err := e.dp.Objs.SluiceCt.Update(&rk, &v, ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
			exhausted := e.reasons(t)[datapath.SluiceReasonREASON_DROP_SNAT_EXHAUSTED]
			e.xdp(t, e.tcp(46001, true, false, false, false), c.want)
			got, _ := e.ct(t, rk)
			switch c.want {
			case xdpTX:
				if maps.PortFrom16(got.NatDport) != 46001 || got.LastSeen&(3<<62) != 0 {
					t.Errorf("port %d now held by %+v, want the new flow's entry", port, got)
				}
			default:
				if got.LastSeen != v.LastSeen || maps.PortFrom16(got.NatDport) != 46000 {
					t.Errorf("port %d entry changed to %+v, want %+v left alone", port, got, v)
				}
				if e.reasons(t)[datapath.SluiceReasonREASON_DROP_SNAT_EXHAUSTED] != exhausted+1 {
					t.Errorf("drop_snat_exhausted not counted")
				}
			}
		})
	}
}

// FlushFlows finds a flow by its endpoint's address in both of its entries (the forward one
// rewrites to it, the reverse one is keyed by it), and leaves other flows alone.
func TestFlushFlowsByEndpoint(t *testing.T) {
	e := newEnv(t)
	udp := func(sport uint16) []byte {
		p := e.fromClient(layers.IPProtocolUDP, sport, 30081)
		return p.Bytes()
	}
	e.xdp(t, udp(41000), xdpTX)
	e.xdp(t, udp(41001), xdpTX)
	e.xdp(t, e.tcp(43000, true, false, false, false), xdpTX) // TCP: not flushed
	before := countEntries(t, e.dp.Objs.SluiceCt)
	n, err := e.m.FlushFlows(lb.UDP, map[maps.FlowTarget]bool{{ServiceID: 2, Backend: ap(backendIP, 5353)}: true})
	if err != nil || n != 4 {
		t.Fatalf("flushed %d entries (%v), want the two UDP flows' 4", n, err)
	}
	if got := countEntries(t, e.dp.Objs.SluiceCt); got != before-4 {
		t.Errorf("%d entries left of %d", got, before)
	}
	if n, _ := e.m.FlushFlows(lb.UDP, map[maps.FlowTarget]bool{{ServiceID: 1, Backend: ap(backendIP, 8080)}: true}); n != 0 {
		t.Errorf("a UDP flush took %d TCP entries", n)
	}
}

// A local backend's flow is DNAT only, so its reverse entry is keyed by the client's own tuple:
// a client that reuses its source port for another frontend of the same backend meets it. A
// closed TCP flow's tuple goes to the new flow (the backend sees a SYN on a TIME_WAIT tuple, as
// without NAT); a live flow keeps it, and the new one gets another source port (the client's
// address kept), as the kernel's NAT resolves the clash.
func TestConntrackClosedLocalFlowYieldsItsTuple(t *testing.T) {
	e := newEnv(t)
	must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: 7, Slot: 1}, 3))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30083, Proto: lb.TCP}, lb.Frontend{ServiceID: 7, Count: 1}))
	must(t, e.m.SetFrontendPort(30083))
	seg := func(sport, dport uint16, syn, rst bool) []byte {
		p := e.fromClient(layers.IPProtocolTCP, sport, dport)
		p.SYN, p.RST, p.Payload = syn, rst, nil
		return p.Bytes()
	}
	rk := func(sport uint16) datapath.SluiceCtKey { return ctKey(ap(podIP, 80), ap(clientIP, sport), 6) }

	e.xdp(t, seg(43200, 30082, true, false), xdpPass)
	e.xdp(t, seg(43200, 30082, false, true), xdpPass) // the client aborts: closed
	e.xdp(t, seg(43200, 30083, true, false), xdpPass)
	if rev, _ := e.ct(t, rk(43200)); rev.NatSport != maps.Port16(30083) || rev.Flags&ctClosing != 0 {
		t.Errorf("the reverse entry after the new SYN: %+v; want the new flow's (restoring 30083)", rev)
	}

	e.xdp(t, seg(43201, 30082, true, false), xdpPass)
	out := e.xdp(t, seg(43201, 30083, true, false), xdpPass)
	if rev, _ := e.ct(t, rk(43201)); rev.NatSport != maps.Port16(30083-1) {
		t.Errorf("the live flow's reverse entry: %+v; want it kept (restoring 30082)", rev)
	}
	sport := snatFrom(t, out, 34)
	want := e.fromClient(layers.IPProtocolTCP, sport, 80)
	want.SYN, want.Payload, want.Dst = true, nil, ap(podIP, 80)
	if d := testutil.Diff(trimPadding(want.Bytes()), trimPadding(out)); d != "" {
		t.Errorf("the second flow: want DNAT and another source port:\n%s", d)
	}
	if rev, ok := e.ct(t, rk(sport)); !ok || rev.NatSport != maps.Port16(30083) || rev.NatDport != maps.Port16(43201) {
		t.Errorf("the second flow's reverse entry: %+v %v; want it to restore 30083 -> 43201", rev, ok)
	}
}
