package datapath_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/testutil"
)

var (
	clusterIP     = netip.MustParseAddr("10.96.0.10")
	hairpinIP     = netip.MustParseAddr("10.96.0.11")
	emptyIP       = netip.MustParseAddr("10.96.0.12")
	podMAC        = net.HardwareAddr{0x02, 0, 0, 0, 0x01, 0x10}
	podDeviceName = "podh"
)

// podEnv is the golden env plus a pod's device, podh, the host side of a veth whose pod (its
// peer's side, podIP) has a /32 route and a neighbour entry, as a ptp CNI plugin leaves them.
// Services: ClusterIP 10.96.0.10:80 -> remote 10.0.0.2:8080 (svc 1); 10.96.0.11:80 -> the pod
// itself, 10.244.1.10:80 (svc 3, hairpin); UDP 10.96.0.12:53, no endpoints (svc 5); NodePort
// 30095 with externalTrafficPolicy Local and no local endpoint (svc 6, drops) whose entry for
// clients on the node gives svc 1.
type podEnv struct {
	*env
	dev    int
	devMAC net.HardwareAddr
}

func newPodEnv(t *testing.T) *podEnv {
	t.Helper()
	e := &podEnv{env: newEnvWith(t, datapath.Config{PodPrograms: true})}
	for _, c := range [][]string{
		{"ip", "link", "add", podDeviceName, "type", "veth", "peer", "name", "podc"},
		{"ip", "link", "set", podDeviceName, "up"},
		{"ip", "link", "set", "podc", "up"},
		{"ip", "route", "add", podIP.String() + "/32", "dev", podDeviceName},
		{"ip", "neigh", "replace", podIP.String(), "lladdr", podMAC.String(), "dev", podDeviceName, "nud", "permanent"},
	} {
		e.ns.MustExec(t, c...)
	}
	must(t, e.ns.Do(func() error {
		ifc, err := net.InterfaceByName(podDeviceName)
		if err == nil {
			e.dev, e.devMAC = ifc.Index, ifc.HardwareAddr
		}
		return err
	}))
	m := e.m
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: clusterIP, Port: 80, Proto: lb.TCP}, lb.Frontend{ServiceID: 1, Count: 1}))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: hairpinIP, Port: 80, Proto: lb.TCP}, lb.Frontend{ServiceID: 3, Count: 1}))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: emptyIP, Port: 53, Proto: lb.UDP}, lb.Frontend{ServiceID: 5}))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30095, Proto: lb.TCP}, lb.Frontend{ServiceID: 6, Flags: lb.FrontendDropEmpty}))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30095, Proto: lb.TCP, Socket: true}, lb.Frontend{ServiceID: 1, Count: 1}))
	for _, p := range []uint16{80, 53, 30095} {
		must(t, m.SetFrontendPort(p))
	}
	return e
}

func (e *podEnv) runPod(t *testing.T, prog *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	var ret uint32
	var out []byte
	must(t, e.ns.Do(func() (err error) {
		ret, out, err = testutil.RunTC(prog, e.dev, in)
		return err
	}))
	return ret, out
}

// fromPod is what the pod sends: to its gateway's MAC (podh's), from podIP.
func (e *podEnv) fromPod(proto layers.IPProtocol, sport uint16, dst netip.AddrPort) testutil.Pkt {
	p := testutil.Pkt{SrcMAC: podMAC, DstMAC: e.devMAC, Proto: proto, Src: ap(podIP, sport), Dst: dst, IPID: 9, Window: 64240}
	if proto == layers.IPProtocolTCP {
		p.SYN = true
	} else {
		p.Payload = []byte("query")
	}
	return p
}

// podRow is a golden row run on the pod device by one of its two programs.
type podRow struct {
	golden
	egress bool // sluice_tc_to_pod, else sluice_tc_from_pod
}

// The pod programs on a pod's device, packet by packet: what the pod sends at ingress, what
// it receives at egress. Checked as the other goldens: verdict, every byte, both checksums.
func TestGoldenPodDevice(t *testing.T) {
	e := newPodEnv(t)
	toPodHost := func(p testutil.Pkt) testutil.Pkt {
		p.SrcMAC, p.DstMAC, p.TTL = e.devMAC, podMAC, 63
		return p
	}
	for _, seq := range []struct {
		desc string
		rows []podRow
	}{
		{"TCP to a ClusterIP, remote backend: DNAT only, the reply restored at egress", []podRow{
			{golden: golden{desc: "SYN: DNAT to the backend, the pod's address kept, to the stack", verdict: tcOK,
				in: func(*flow) []byte { return e.fromPod(layers.IPProtocolTCP, 45000, ap(clusterIP, 80)).Bytes() },
				want: func(*flow, []byte) []byte {
					p := e.fromPod(layers.IPProtocolTCP, 45000, ap(backendIP, 8080))
					return p.Bytes()
				}}},
			{egress: true, golden: golden{desc: "backend's SYN-ACK into the pod: source restored to the ClusterIP", verdict: tcOK,
				in: func(*flow) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(backendIP, 8080), Dst: ap(podIP, 45000),
						SYN: true, ACK: true, Seq: 7, Ack: 1, Window: 900}).Bytes()
				},
				want: func(*flow, []byte) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(clusterIP, 80), Dst: ap(podIP, 45000),
						SYN: true, ACK: true, Seq: 7, Ack: 1, Window: 900}).Bytes()
				}}},
		}},
		{"TCP to the pod's own ClusterIP (hairpin): the ClusterIP as source, both ways back into the pod", []podRow{
			{golden: golden{desc: "SYN: DNAT to the pod itself and SNAT, sent back out of its device", verdict: tcRedirect,
				in: func(*flow) []byte { return e.fromPod(layers.IPProtocolTCP, 45001, ap(hairpinIP, 80)).Bytes() },
				want: func(f *flow, got []byte) []byte {
					f.snatPort = snatFrom(t, got, 34)
					p := toPodHost(e.fromPod(layers.IPProtocolTCP, f.snatPort, ap(podIP, 80)))
					p.Src = ap(hairpinIP, f.snatPort)
					return p.Bytes()
				}}},
			{golden: golden{desc: "the pod's SYN-ACK to itself: restored, sent back in", verdict: tcRedirect,
				in: func(f *flow) []byte {
					return testutil.Pkt{SrcMAC: podMAC, DstMAC: e.devMAC, Proto: layers.IPProtocolTCP, Src: ap(podIP, 80),
						Dst: ap(hairpinIP, f.snatPort), SYN: true, ACK: true, Seq: 3, Ack: 1, Window: 800}.Bytes()
				},
				want: func(*flow, []byte) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(hairpinIP, 80), Dst: ap(podIP, 45001),
						SYN: true, ACK: true, Seq: 3, Ack: 1, Window: 800}).Bytes()
				}}},
		}},
		{"a NodePort with externalTrafficPolicy Local and no local endpoint: the pod gets the Cluster endpoints", []podRow{
			{golden: golden{desc: "SYN: the entry for clients on the node, DNAT to svc 1's backend", verdict: tcOK,
				in: func(*flow) []byte { return e.fromPod(layers.IPProtocolTCP, 45002, ap(nodeIP, 30095)).Bytes() },
				want: func(*flow, []byte) []byte {
					return e.fromPod(layers.IPProtocolTCP, 45002, ap(backendIP, 8080)).Bytes()
				}}},
		}},
		{"UDP to a ClusterIP with no endpoint", []podRow{
			{golden: golden{desc: "port unreachable, sent back into the pod", verdict: tcRedirect,
				reason: reasonPtr(datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE),
				in:     func(*flow) []byte { return e.fromPod(layers.IPProtocolUDP, 45003, ap(emptyIP, 53)).Bytes() },
				want: func(*flow, []byte) []byte {
					return icmpUnreachableFrom(e.devMAC, e.fromPod(layers.IPProtocolUDP, 45003, ap(emptyIP, 53)))
				}}},
		}},
		{"what a socket hook already translated", []podRow{
			{golden: golden{desc: "the pod's SYN to a backend passes untouched", verdict: tcOK,
				in: func(*flow) []byte { return e.fromPod(layers.IPProtocolTCP, 45004, ap(backendIP, 8080)).Bytes() }}},
			{egress: true, golden: golden{desc: "its SYN-ACK passes untouched", verdict: tcOK,
				in: func(*flow) []byte {
					return toPodHost(testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(backendIP, 8080), Dst: ap(podIP, 45004),
						SYN: true, ACK: true, Window: 900}).Bytes()
				}}},
		}},
	} {
		runPodSeq(t, e, seq.desc, seq.rows)
	}
}

// runPodSeq runs a sequence of pod rows as a subtest, on the programs IPv4's attach.
func runPodSeq(t *testing.T, e *podEnv, desc string, rows []podRow) {
	t.Run(desc, func(t *testing.T) {
		f := &flow{}
		for _, r := range rows {
			prog := e.dp.Objs.SluiceTcFromPod
			if r.egress {
				prog = e.dp.Objs.SluiceTcToPod
			}
			if !runPodRow(t, e, prog, r.golden, f) {
				return
			}
		}
	})
}

// runPodRow is runSteps' check on the pod device.
func runPodRow(t *testing.T, e *podEnv, prog *ebpf.Program, g golden, f *flow) bool {
	return checkGolden(t, e.env, g, f, false, func(t *testing.T, in []byte) (uint32, []byte) { return e.runPod(t, prog, in) })
}
