package datapath_test

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

var (
	clusterIP6 = netip.MustParseAddr("fd00:96::10")
	emptyIP6   = netip.MustParseAddr("fd00:96::12")
)

// podEnv6 is podEnv with the IPv6 side: the pod has podIP6 (a /128 route and a neighbour entry
// on podh), the IPv4 programs on podh hand its IPv6 packets to IPv6's pod programs.
// Services: ClusterIP [fd00:96::10]:80 -> remote [fd00::2]:8080 (svc 11's backend, svc 21);
// UDP [fd00:96::12]:53, no endpoints (svc 22).
type podEnv6 struct {
	*podEnv
	e6 *env6
}

func newPodEnv6(t *testing.T) *podEnv6 {
	t.Helper()
	pe := newPodEnv(t)
	e := &podEnv6{podEnv: pe, e6: newEnv6Of(t, pe.env)}
	for _, c := range [][]string{
		{"ip", "-6", "route", "add", podIP6.String() + "/128", "dev", podDeviceName},
		{"ip", "-6", "neigh", "replace", podIP6.String(), "lladdr", podMAC.String(), "dev", podDeviceName, "nud", "permanent"},
	} {
		e.ns.MustExec(t, c...)
	}
	m := e.m
	must(t, m.UpdateSlot(maps.SlotKey{ServiceID: 21, Slot: 1}, 11))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: clusterIP6, Port: 80, Proto: lb.TCP}, lb.Frontend{ServiceID: 21, Count: 1}))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: emptyIP6, Port: 53, Proto: lb.UDP}, lb.Frontend{ServiceID: 22}))
	return e
}

// fromPod6 is what the pod sends over IPv6: to its gateway's MAC (podh's), from podIP6.
func (e *podEnv6) fromPod6(proto layers.IPProtocol, sport uint16, dst netip.AddrPort) testutil.Pkt {
	p := testutil.Pkt{SrcMAC: podMAC, DstMAC: e.devMAC, Proto: proto, Src: ap(podIP6, sport), Dst: dst, Window: 64240}
	if proto == layers.IPProtocolTCP {
		p.SYN = true
	} else {
		p.Payload = []byte("query")
	}
	return p
}

// The pod programs over IPv6, through the IPv4 ones attached (they hand IPv6 on): checked as
// every golden, verdict, every byte, both checksums.
func TestGoldenIPv6PodDevice(t *testing.T) {
	e := newPodEnv6(t)
	toPodHost := func(p testutil.Pkt) testutil.Pkt {
		p.SrcMAC, p.DstMAC, p.TTL = e.devMAC, podMAC, 63
		return p
	}
	for _, seq := range []struct {
		desc string
		rows []podRow
	}{
		{"TCP to an IPv6 ClusterIP, remote backend: DNAT only, the reply restored at egress", []podRow{
			{golden: golden{desc: "SYN: DNAT to the backend, the pod's address kept, to the stack", verdict: tcOK,
				in: func(*flow) []byte { return e.fromPod6(layers.IPProtocolTCP, 45000, ap(clusterIP6, 80)).Bytes() },
				want: func(*flow, []byte) []byte {
					return e.fromPod6(layers.IPProtocolTCP, 45000, ap(backendIP6, 8080)).Bytes()
				}}},
			{egress: true, golden: golden{desc: "backend's SYN-ACK into the pod: source restored to the ClusterIP", verdict: tcOK,
				in: func(*flow) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(backendIP6, 8080), Dst: ap(podIP6, 45000),
						SYN: true, ACK: true, Seq: 7, Ack: 1, Window: 900}).Bytes()
				},
				want: func(*flow, []byte) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(clusterIP6, 80), Dst: ap(podIP6, 45000),
						SYN: true, ACK: true, Seq: 7, Ack: 1, Window: 900}).Bytes()
				}}},
		}},
		{"UDP to an IPv6 ClusterIP with no endpoint", []podRow{
			{golden: golden{desc: "ICMPv6 port unreachable, sent back into the pod", verdict: tcRedirect,
				reason: reasonPtr(datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE),
				in:     func(*flow) []byte { return e.fromPod6(layers.IPProtocolUDP, 45003, ap(emptyIP6, 53)).Bytes() },
				want: func(*flow, []byte) []byte {
					return icmp6Unreachable(e.devMAC, e.fromPod6(layers.IPProtocolUDP, 45003, ap(emptyIP6, 53)))
				}}},
		}},
		{"what a socket hook already translated", []podRow{
			{golden: golden{desc: "the pod's SYN to a backend passes untouched", verdict: tcOK,
				in: func(*flow) []byte { return e.fromPod6(layers.IPProtocolTCP, 45004, ap(backendIP6, 8080)).Bytes() }}},
			{egress: true, golden: golden{desc: "its SYN-ACK passes untouched", verdict: tcOK,
				in: func(*flow) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(backendIP6, 8080), Dst: ap(podIP6, 45004),
						SYN: true, ACK: true, Window: 900}).Bytes()
				}}},
		}},
	} {
		runPodSeq(t, e.podEnv, seq.desc, seq.rows)
	}
}
