package datapath_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// Flows the kernel NATs to a backend from the node's address share the SNAT range with
// sluice's flows (bpf/lib/hostnat.h). With a range of two ports, 61000-61001, every order of
// arrival must leave the backend with two distinct tuples.

const ctKernel = maps.CTKernel

// kernelFlow is a packet of a flow the kernel masqueraded to the node's address: it leaves the
// node (tc egress) from nodeIP:sport to the backend.
func (e *env) kernelFlow(sport uint16, syn, ack bool) []byte {
	p := e.fromClient(layers.IPProtocolTCP, 0, 0)
	p.SrcMAC, p.DstMAC, p.Src, p.Dst = e.nodeMAC, backendMAC, ap(nodeIP, sport), ap(backendIP, 8080)
	p.SYN, p.ACK = syn, ack
	return p.Bytes()
}

func (e *env) egress(t *testing.T, in []byte) []byte {
	t.Helper()
	ret, out := e.run(t, e.dp.Objs.SluiceTcEgress, false, in)
	if ret != tcOK {
		t.Fatalf("tc egress verdict %d, want %d (ok)", ret, tcOK)
	}
	if err := testutil.VerifyChecksums(out); err != nil {
		t.Fatal(err)
	}
	return out
}

func newHostNATEnv(t *testing.T) *env {
	e := newEnvWith(t, datapath.Config{SNATPortMin: 61000, SNATPortMax: 61001})
	// As the agent does for each device it attaches to: the SNAT address of flows leaving it.
	must(t, e.dp.SetDeviceAddress(e.ifindex, lb.IPv4, nodeIP))
	return e
}

func srcPort(frame []byte) uint16 { return binary.BigEndian.Uint16(frame[34:]) }
func dstPort(frame []byte) uint16 { return binary.BigEndian.Uint16(frame[36:]) }

// The kernel's flow first: tracked under its own port, untouched both ways; sluice's next flow
// to that backend takes the other port.
func TestKernelFlowKeepsItsPort(t *testing.T) {
	e := newHostNATEnv(t)
	in := e.kernelFlow(61000, true, false)
	if out := e.egress(t, in); !bytes.Equal(out, in) {
		t.Fatalf("kernel SYN changed:\n%s", testutil.Diff(in, out))
	}
	rev, ok := e.ct(t, ctKey(ap(backendIP, 8080), ap(nodeIP, 61000), 6))
	if !ok || rev.Flags&ctKernel == 0 || rev.Flags&ctIngress == 0 {
		t.Fatalf("no kernel reply entry for 61000 (%v, %+v)", ok, rev)
	}
	for i := uint16(0); i < 4; i++ {
		out := e.xdp(t, e.tcp(43000+i, true, false, false, false), xdpTX)
		if got := srcPort(out); got != 61001 {
			t.Fatalf("sluice flow %d took SNAT port %d, want 61001 (61000 is the kernel's)", i, got)
		}
		e.xdp(t, e.fromBackend(61001, true, true, false, false), xdpTX) // answered: the port is busy
		if i == 0 {
			// Later SYNs from other client ports find 61001 held and 61000 the kernel's.
			e.xdp(t, e.tcp(43100, true, false, false, false), xdpDrop)
			break
		}
	}
	// The backend's reply to the kernel's flow goes to the stack unchanged, at XDP and tc.
	reply := e.fromBackend(61000, true, true, false, false)
	if out := e.xdp(t, reply, xdpPass); !bytes.Equal(out, reply) {
		t.Fatalf("reply to the kernel's flow changed at XDP:\n%s", testutil.Diff(reply, out))
	}
	if ret, out := e.run(t, e.dp.Objs.SluiceTcIngress, false, reply); ret != tcOK || !bytes.Equal(out, reply) {
		t.Fatalf("reply to the kernel's flow at tc: verdict %d, diff:\n%s", ret, testutil.Diff(reply, out))
	}
	if rev, _ := e.ct(t, ctKey(ap(backendIP, 8080), ap(nodeIP, 61000), 6)); rev.Flags&ctSYN != 0 {
		t.Errorf("the kernel's flow is still a SYN after its answer (flags %#x)", rev.Flags)
	}
}

// sluice's flow first: the kernel's flow that leaves with the same port is moved to the free
// one, its replies moved back, and later segments follow; with no port free it is counted and
// left alone.
func TestKernelFlowMovedOffASluicePort(t *testing.T) {
	e := newHostNATEnv(t)
	out := e.xdp(t, e.tcp(43000, true, false, false, false), xdpTX)
	taken := srcPort(out)
	free := uint16(61000 + 61001 - int(taken))
	before := e.reasons(t)

	out = e.egress(t, e.kernelFlow(taken, true, false))
	if got := srcPort(out); got != free {
		t.Fatalf("kernel SYN on sluice's port %d left with %d, want %d", taken, got, free)
	}
	if got := e.reasons(t)[datapath.SluiceReasonREASON_KERNEL_FLOW_MOVED] - before[datapath.SluiceReasonREASON_KERNEL_FLOW_MOVED]; got != 1 {
		t.Errorf("kernel_flow_moved +%d, want +1", got)
	}
	// The backend answers the moved flow; the kernel gets its own port back, at XDP and tc.
	reply := e.fromBackend(free, true, true, false, false)
	for _, xdp := range []bool{true, false} {
		prog, want := e.dp.Objs.SluiceTcIngress, uint32(tcOK)
		if xdp {
			prog, want = e.dp.Objs.SluiceXdp, xdpPass
		}
		ret, got := e.run(t, prog, xdp, reply)
		if ret != want || dstPort(got) != taken {
			t.Fatalf("xdp=%v: reply to the moved flow: verdict %d, to port %d; want %d, port %d", xdp, ret, dstPort(got), want, taken)
		}
		if err := testutil.VerifyChecksums(got); err != nil {
			t.Fatal(err)
		}
	}
	// The kernel's next segment follows; sluice's own flow still has its port.
	if got := srcPort(e.egress(t, e.kernelFlow(taken, false, true))); got != free {
		t.Errorf("kernel ACK left with %d, want %d", got, free)
	}
	if got := dstPort(e.xdp(t, e.fromBackend(taken, true, true, false, false), xdpTX)); got != 43000 {
		t.Errorf("reply to sluice's flow went to client port %d, want 43000", got)
	}

	// Both ports held (sluice's flow and the moved one): another kernel flow, which the kernel
	// may well give the port it does not know is in use, has nowhere to go; counted, left alone.
	before = e.reasons(t)
	in := e.kernelFlow(free, true, false)
	if out := e.egress(t, in); !bytes.Equal(in, out) {
		t.Fatalf("a kernel flow with no port free was changed:\n%s", testutil.Diff(in, out))
	}
	if got := e.reasons(t)[datapath.SluiceReasonREASON_KERNEL_FLOW_UNTRACKED] - before[datapath.SluiceReasonREASON_KERNEL_FLOW_UNTRACKED]; got != 1 {
		t.Errorf("kernel_flow_untracked +%d, want +1", got)
	}
}

// Packets sluice itself sends (they arrived on a device it runs on) and flows from other
// addresses are not the kernel's NAT: no entry, no change.
func TestEgressLeavesOtherTrafficUntracked(t *testing.T) {
	e := newHostNATEnv(t)
	// A pod's own flow (not masqueraded: another source address) to the backend.
	p := e.fromClient(layers.IPProtocolTCP, 0, 0)
	p.SrcMAC, p.DstMAC, p.Src, p.Dst, p.SYN = e.nodeMAC, backendMAC, ap(podIP, 61000), ap(backendIP, 8080), true
	in := p.Bytes()
	if out := e.egress(t, in); !bytes.Equal(in, out) {
		t.Fatalf("a pod's flow changed:\n%s", testutil.Diff(in, out))
	}
	if _, ok := e.ct(t, ctKey(ap(backendIP, 8080), ap(podIP, 61000), 6)); ok {
		t.Error("a pod's own flow was tracked")
	}
	// The node's ephemeral ports are above the SNAT range: nothing to track.
	in = e.kernelFlow(40000, true, false)
	e.egress(t, in)
	if _, ok := e.ct(t, ctKey(ap(backendIP, 8080), ap(nodeIP, 40000), 6)); ok {
		t.Error("a flow from outside the SNAT range was tracked")
	}
}
