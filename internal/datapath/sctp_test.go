package datapath_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// SCTP NodePorts: an INIT opens a flow, ports and addresses are translated both ways with the
// CRC32c updated for the new ports (addresses are outside it), a packet without a flow that is
// no INIT is the kernel's, and no endpoint is refused with ICMP port unreachable.

const (
	sctpInit    = 1
	sctpInitAck = 2
	sctpData    = 0
)

// sctpTag is the verification tag a chunk travels with: 0 on an INIT (RFC 9260 8.5.1), the
// peer's Initiate Tag otherwise.
func sctpTag(chunk byte) uint32 {
	if chunk == sctpInit {
		return 0
	}
	return testutil.SCTPInitTag
}

func (e *env) sctpServices(t testing.TB) {
	t.Helper()
	must(t, e.m.UpdateBackend(60, lb.Backend{Addr: backendIP, Port: 3868}))
	must(t, e.m.UpdateBackend(61, lb.Backend{Addr: podIP, Port: 3868, Local: true}))
	must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: 60, Slot: 1}, 60))
	must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: 61, Slot: 1}, 61))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30868, Proto: lb.SCTP}, lb.Frontend{ServiceID: 60, Count: 1}))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30869, Proto: lb.SCTP}, lb.Frontend{ServiceID: 61, Count: 1}))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30870, Proto: lb.SCTP}, lb.Frontend{ServiceID: 62}))
	for _, p := range []uint16{30868, 30869, 30870} {
		must(t, e.m.SetFrontendPort(p))
	}
	must(t, e.m.SetBackendPort(3868))
}

// sctpTuple reads an SCTP frame's addresses and ports.
func sctpTuple(t *testing.T, f []byte) (src, dst netip.AddrPort) {
	t.Helper()
	if err := testutil.VerifyChecksums(f); err != nil {
		t.Fatalf("checksums: %v\n%s", err, testutil.Decode(f))
	}
	s, _ := netip.AddrFromSlice(f[26:30])
	d, _ := netip.AddrFromSlice(f[30:34])
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(f[34:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(f[36:]))
}

func TestSCTPRemoteBackend(t *testing.T) {
	e := newEnv(t)
	e.sctpServices(t)
	client := ap(clientIP, 40000)
	for _, payload := range []int{0, 1, 37, 400, 1400} {
		client = ap(clientIP, client.Port()+1)
		in := testutil.SCTPFrame(clientMAC, e.nodeMAC, client, ap(nodeIP, 30868), sctpTag(sctpInit), sctpInit, payload)
		out := e.xdp(t, in, xdpTX)
		src, dst := sctpTuple(t, out)
		if src.Addr() != nodeIP || dst != ap(backendIP, 3868) {
			t.Fatalf("payload %d: INIT forwarded %s -> %s, want %s:SNAT -> %s:3868", payload, src, dst, nodeIP, backendIP)
		}
		if len(out) < len(in) || string(out[46:len(in)]) != string(in[46:]) {
			t.Fatalf("payload %d: the chunks were changed", payload)
		}

		back := testutil.SCTPFrame(backendMAC, e.nodeMAC, ap(backendIP, 3868), src, sctpTag(sctpInitAck), sctpInitAck, payload+8)
		rsrc, rdst := sctpTuple(t, e.xdp(t, back, xdpTX))
		if rsrc != ap(nodeIP, 30868) || rdst != client {
			t.Fatalf("payload %d: INIT-ACK returned %s -> %s, want %s:30868 -> %s", payload, rsrc, rdst, nodeIP, client)
		}
		// Later packets of the association follow the flow.
		data := testutil.SCTPFrame(clientMAC, e.nodeMAC, client, ap(nodeIP, 30868), sctpTag(sctpData), sctpData, payload+3)
		if s2, d2 := sctpTuple(t, e.xdp(t, data, xdpTX)); s2 != src || d2 != dst {
			t.Fatalf("DATA went %s -> %s, not the INIT's %s -> %s", s2, d2, src, dst)
		}
	}
}

func TestSCTPLocalBackendAndEgress(t *testing.T) {
	e := newEnv(t)
	e.sctpServices(t)
	client := ap(clientIP, 41000)
	in := testutil.SCTPFrame(clientMAC, e.nodeMAC, client, ap(nodeIP, 30869), sctpTag(sctpInit), sctpInit, 64)
	src, dst := sctpTuple(t, e.xdp(t, in, xdpPass))
	if src != client || dst != ap(podIP, 3868) {
		t.Fatalf("INIT to the local pod: %s -> %s", src, dst)
	}
	// The pod's reply leaves through the device: tc egress restores the frontend.
	reply := testutil.SCTPFrame(e.nodeMAC, clientMAC, ap(podIP, 3868), client, sctpTag(sctpInitAck), sctpInitAck, 100)
	ret, out := e.run(t, e.dp.Objs.SluiceTcEgress, false, reply)
	if ret != tcOK {
		t.Fatalf("tc egress verdict %d", ret)
	}
	if rsrc, rdst := sctpTuple(t, out); rsrc != ap(nodeIP, 30869) || rdst != client {
		t.Fatalf("reply restored to %s -> %s", rsrc, rdst)
	}
	// A pod that offloads the CRC (CHECKSUM_PARTIAL) sends it as 0, to be computed when the
	// packet leaves, over the rewritten ports: it must stay 0.
	reply[42], reply[43], reply[44], reply[45] = 0, 0, 0, 0
	if ret, out = e.run(t, e.dp.Objs.SluiceTcEgress, false, reply); ret != tcOK {
		t.Fatalf("tc egress verdict %d for an offloaded CRC", ret)
	}
	if crc := binary.BigEndian.Uint32(out[42:]); crc != 0 || binary.BigEndian.Uint16(out[34:]) != 30869 {
		t.Errorf("offloaded CRC: port %d CRC %#x after egress, want 30869 and 0 (to be computed later)", binary.BigEndian.Uint16(out[34:]), crc)
	}
	// And the same INIT through tc ingress (the tc-only datapath).
	client2 := ap(clientIP, 41001)
	ret, out = e.run(t, e.dp.Objs.SluiceTcIngress, false, testutil.SCTPFrame(clientMAC, e.nodeMAC, client2, ap(nodeIP, 30869), sctpTag(sctpInit), sctpInit, 5))
	if ret != tcOK {
		t.Fatalf("tc ingress verdict %d", ret)
	}
	if s, d := sctpTuple(t, out); s != client2 || d != ap(podIP, 3868) {
		t.Fatalf("tc: %s -> %s", s, d)
	}
}

func TestSCTPNoFlowAndNoEndpoint(t *testing.T) {
	e := newEnv(t)
	e.sctpServices(t)
	before := e.reasons(t)
	data := testutil.SCTPFrame(clientMAC, e.nodeMAC, ap(clientIP, 42000), ap(nodeIP, 30868), sctpTag(sctpData), sctpData, 20)
	if out := e.xdp(t, data, xdpPass); testutil.Diff(data, trimPadding(out)) != "" {
		t.Fatal("a DATA chunk without a flow was changed")
	}
	if got := e.reasons(t)[datapath.SluiceReasonREASON_PASS_NO_FLOW]; got != before[datapath.SluiceReasonREASON_PASS_NO_FLOW]+1 {
		t.Error("pass_no_flow not counted")
	}
	init := testutil.SCTPFrame(clientMAC, e.nodeMAC, ap(clientIP, 42001), ap(nodeIP, 30870), sctpTag(sctpInit), sctpInit, 20)
	out := e.xdp(t, init, xdpTX)
	if err := testutil.VerifyChecksums(out); err != nil {
		t.Fatal(err)
	}
	pkt := testutil.Decode(out)
	icmp, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if !ok || icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 3) {
		t.Fatalf("no endpoint: want ICMP port unreachable, got\n%s", pkt)
	}
}

// A truncated SCTP header is never rewritten.
func TestSCTPMalformed(t *testing.T) {
	e := newEnv(t)
	e.sctpServices(t)
	f := testutil.SCTPFrame(clientMAC, e.nodeMAC, ap(clientIP, 43000), ap(nodeIP, 30868), sctpTag(sctpInit), sctpInit, 0)
	short := append([]byte(nil), f[:34+10]...)
	binary.BigEndian.PutUint16(short[16:], 30)
	fixIPChecksum(short[14:34])
	if out := e.xdp(t, short, xdpPass); testutil.Diff(short, trimPadding(out)) != "" {
		t.Fatal("a truncated SCTP header was changed")
	}
}
