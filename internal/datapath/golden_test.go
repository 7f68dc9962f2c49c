package datapath_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

const (
	xdpPass     = 2
	xdpTX       = 3
	xdpDrop     = 1
	tcOK        = 0
	tcShot      = 2
	tcRedirect  = 7
	verdictNone = 0xffff
)

var (
	nodeIP     = netip.MustParseAddr("10.0.0.1")
	clientIP   = netip.MustParseAddr("10.0.0.9")
	backendIP  = netip.MustParseAddr("10.0.0.2")
	podIP      = netip.MustParseAddr("10.244.1.10")
	clientMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x09}
	backendMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// env is one loaded datapath in its own namespace, with a device that has the node address
// and static neighbours for the client and the remote backend.
type env struct {
	ns      *testutil.Netns
	dp      *datapath.Datapath
	m       *maps.Kernel
	ifindex int
	nodeMAC net.HardwareAddr
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, datapath.Config{})
}

func newEnvWith(t testing.TB, cfg datapath.Config) *env {
	t.Helper()
	node := testutil.NewNode(t, "sl-golden-", nodeIP, map[netip.Addr]net.HardwareAddr{backendIP: backendMAC, clientIP: clientMAC})
	e := &env{ns: node.Netns, ifindex: node.Ifindex, nodeMAC: node.MAC}
	cfg.XDPIfindex = uint32(node.Ifindex) // for test runs on kernels before 5.14
	dp := loadShared(t, cfg)
	e.dp, e.m = dp, maps.NewKernel(&dp.Objs.SluiceMaps)

	// svc 1: TCP 30080 -> remote 10.0.0.2:8080; svc 2: UDP 30081 -> remote 10.0.0.2:5353;
	// svc 3: TCP 30082 -> local pod 10.244.1.10:80; svc 4/5: TCP/UDP 30090, no endpoints.
	must(t, e.m.UpdateBackend(1, lb.Backend{Addr: backendIP, Port: 8080}))
	must(t, e.m.UpdateBackend(2, lb.Backend{Addr: backendIP, Port: 5353}))
	must(t, e.m.UpdateBackend(3, lb.Backend{Addr: podIP, Port: 80, Local: true}))
	for svc, be := range map[uint32]uint32{1: 1, 2: 2, 3: 3} {
		must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: svc, Slot: 1}, be))
	}
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30080, Proto: lb.TCP}, lb.Frontend{ServiceID: 1, Count: 1}))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30081, Proto: lb.UDP}, lb.Frontend{ServiceID: 2, Count: 1}))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30082, Proto: lb.TCP}, lb.Frontend{ServiceID: 3, Count: 1}))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30090, Proto: lb.TCP}, lb.Frontend{ServiceID: 4}))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30090, Proto: lb.UDP}, lb.Frontend{ServiceID: 5}))
	for _, p := range []uint16{30080, 30081, 30082, 30090} {
		must(t, e.m.SetFrontendPort(p))
	}
	// As the reconciler does: every backend's port, so that replies pass the prefilter.
	for _, p := range []uint16{80, 8080, 5353} {
		must(t, e.m.SetBackendPort(p))
	}
	return e
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) run(t *testing.T, prog *ebpf.Program, xdp bool, in []byte) (uint32, []byte) {
	t.Helper()
	var ret uint32
	var out []byte
	err := e.ns.Do(func() error {
		var err error
		if xdp {
			ret, out, err = testutil.RunXDP(prog, e.ifindex, in)
		} else {
			ret, out, err = testutil.RunTC(prog, e.ifindex, in)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret, out
}

// flow remembers what an earlier step of a row observed (the SNAT port the datapath chose).
type flow struct{ snatPort uint16 }

func ap(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }

// fromClient is a client packet to the node.
func (e *env) fromClient(proto layers.IPProtocol, sport, dport uint16) testutil.Pkt {
	return testutil.Pkt{
		SrcMAC: clientMAC, DstMAC: e.nodeMAC, Proto: proto,
		Src: ap(clientIP, sport), Dst: ap(nodeIP, dport), IPID: 7, Window: 64240,
		Payload: []byte("hello sluice"),
	}
}

type golden struct {
	desc string
	// in builds the input; want builds the expected output (nil: same as input).
	in      func(f *flow) []byte
	verdict uint32
	want    func(f *flow, got []byte) []byte
	reason  *maps.Reason // a counter this row must raise by one
	// steps, if set, make the row a sequence (a flow's packets both ways): run in order as
	// subtests of the row, so -run selects the whole case. The row's other fields are unused.
	steps []golden
}

func reasonPtr(r maps.Reason) *maps.Reason { return &r }

// snatFrom reads the SNAT source port from a translated frame and checks it is in range.
func snatFrom(t *testing.T, got []byte, l4 int) uint16 {
	t.Helper()
	if len(got) < l4+2 {
		t.Fatalf("output of %d bytes has no L4 header", len(got))
	}
	port := binary.BigEndian.Uint16(got[l4:])
	d := datapath.Defaults()
	if port < d.SNATPortMin || port > d.SNATPortMax {
		t.Fatalf("SNAT port %d outside %d-%d", port, d.SNATPortMin, d.SNATPortMax)
	}
	return port
}

// snatFromT reads the port without checking it; the comparison with the expected packet
// still fails on a wrong one.
func snatFromT(got []byte, l4 int) uint16 {
	if len(got) < l4+2 {
		return 0
	}
	return binary.BigEndian.Uint16(got[l4:])
}

// ingressTable is the ingress path's table; xdp selects the verdict codes.
func ingressTable(t *testing.T, e *env, xdp bool) []golden {
	pass, drop, fwd := uint32(xdpPass), uint32(xdpDrop), uint32(xdpTX)
	if !xdp {
		pass, drop, fwd = tcOK, tcShot, tcRedirect
	}
	tcpSYN := func(sport, dport uint16) testutil.Pkt {
		p := e.fromClient(layers.IPProtocolTCP, sport, dport)
		p.SYN, p.Seq, p.Payload = true, 1000, nil
		return p
	}
	toRemote := func(p testutil.Pkt, snat uint16, bport uint16) testutil.Pkt {
		p.SrcMAC, p.DstMAC = e.nodeMAC, backendMAC
		p.Src, p.Dst = ap(nodeIP, snat), ap(backendIP, bport)
		p.TTL = 63
		return p
	}
	arp := func() []byte {
		buf := gopacket.NewSerializeBuffer()
		_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{},
			&layers.Ethernet{SrcMAC: clientMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
			&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
				Operation: layers.ARPRequest, SourceHwAddress: clientMAC, SourceProtAddress: clientIP.AsSlice(),
				DstHwAddress: make([]byte, 6), DstProtAddress: nodeIP.AsSlice()})
		return buf.Bytes()
	}

	return []golden{
		{desc: "ARP request passes untouched", in: func(*flow) []byte { return arp() }, verdict: pass},
		{desc: "ICMP echo to the node passes untouched", verdict: pass, in: func(*flow) []byte {
			p := e.fromClient(layers.IPProtocolICMPv4, 0, 0)
			p.ICMPType = 8
			return p.Bytes()
		}},
		{desc: "TCP to a port that is no frontend passes untouched", verdict: pass,
			in: func(*flow) []byte { return tcpSYN(40000, 22).Bytes() }},
		{desc: "UDP to a port that is no frontend passes untouched", verdict: pass,
			in: func(*flow) []byte { return e.fromClient(layers.IPProtocolUDP, 40000, 53).Bytes() }},
		{desc: "TCP to the NodePort on another address passes untouched", verdict: pass, in: func(*flow) []byte {
			p := tcpSYN(40000, 30080)
			p.Dst = ap(netip.MustParseAddr("10.0.0.50"), 30080)
			return p.Bytes()
		}},
		{desc: "TCP to NodePort, remote backend: the SYN, a later packet and the SYN-ACK", steps: []golden{
			{desc: "TCP SYN to NodePort, remote backend: DNAT+SNAT, TTL-1, MACs from the FIB", verdict: fwd,
				in: func(*flow) []byte { return tcpSYN(40001, 30080).Bytes() },
				want: func(f *flow, got []byte) []byte {
					f.snatPort = snatFrom(t, got, 34)
					return toRemote(tcpSYN(40001, 30080), f.snatPort, 8080).Bytes()
				}},
			{desc: "later packet of the same flow: same backend, same SNAT port", verdict: fwd,
				in: func(*flow) []byte {
					p := tcpSYN(40001, 30080)
					p.SYN, p.ACK, p.Seq, p.Ack, p.Payload = false, true, 1001, 5001, []byte("GET / HTTP/1.1\r\n\r\n")
					return p.Bytes()
				},
				want: func(f *flow, got []byte) []byte {
					p := tcpSYN(40001, 30080)
					p.SYN, p.ACK, p.Seq, p.Ack, p.Payload = false, true, 1001, 5001, []byte("GET / HTTP/1.1\r\n\r\n")
					return toRemote(p, f.snatPort, 8080).Bytes()
				}},
			{desc: "backend's SYN-ACK: translated back to the client", verdict: fwd,
				in: func(f *flow) []byte {
					return testutil.Pkt{SrcMAC: backendMAC, DstMAC: e.nodeMAC, Proto: layers.IPProtocolTCP,
						Src: ap(backendIP, 8080), Dst: ap(nodeIP, f.snatPort), SYN: true, ACK: true, Seq: 5000, Ack: 1001, Window: 1000}.Bytes()
				},
				want: func(f *flow, got []byte) []byte {
					return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP, TTL: 63,
						Src: ap(nodeIP, 30080), Dst: ap(clientIP, 40001), SYN: true, ACK: true, Seq: 5000, Ack: 1001, Window: 1000}.Bytes()
				}},
		}},
		{desc: "UDP to NodePort, remote backend: a datagram and the reply", steps: []golden{
			{desc: "UDP to NodePort, remote backend: DNAT+SNAT with UDP checksum", verdict: fwd,
				in: func(*flow) []byte { return e.fromClient(layers.IPProtocolUDP, 40002, 30081).Bytes() },
				want: func(f *flow, got []byte) []byte {
					f.snatPort = snatFrom(t, got, 34)
					return toRemote(e.fromClient(layers.IPProtocolUDP, 40002, 30081), f.snatPort, 5353).Bytes()
				}},
			{desc: "backend's UDP reply: translated back to the client", verdict: fwd,
				in: func(f *flow) []byte {
					return testutil.Pkt{SrcMAC: backendMAC, DstMAC: e.nodeMAC, Proto: layers.IPProtocolUDP,
						Src: ap(backendIP, 5353), Dst: ap(nodeIP, f.snatPort), Payload: []byte("answer")}.Bytes()
				},
				want: func(f *flow, got []byte) []byte {
					return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolUDP, TTL: 63,
						Src: ap(nodeIP, 30081), Dst: ap(clientIP, 40002), Payload: []byte("answer")}.Bytes()
				}},
		}},
		{desc: "UDP without checksum: translated, checksum stays 0", verdict: fwd,
			in: func(*flow) []byte {
				p := e.fromClient(layers.IPProtocolUDP, 40003, 30081)
				p.NoUDPChecksum = true
				return p.Bytes()
			},
			want: func(f *flow, got []byte) []byte {
				p := toRemote(e.fromClient(layers.IPProtocolUDP, 40003, 30081), snatFrom(t, got, 34), 5353)
				p.NoUDPChecksum = true
				return p.Bytes()
			}},
		{desc: "TCP SYN to NodePort, local backend: DNAT only, client address kept, to the stack", verdict: pass,
			in: func(*flow) []byte { return tcpSYN(40004, 30082).Bytes() },
			want: func(f *flow, got []byte) []byte {
				p := tcpSYN(40004, 30082)
				p.Dst = ap(podIP, 80)
				return p.Bytes()
			}},
		vlanRow(e, xdp, fwd, toRemote, tcpSYN),
		{desc: "SYN with IP options: L4 found past them, translated, options kept", verdict: fwd,
			in: func(*flow) []byte {
				p := tcpSYN(40006, 30080)
				p.IPOptions = ipOptions()
				return p.Bytes()
			},
			want: func(f *flow, got []byte) []byte {
				p := toRemote(tcpSYN(40006, 30080), snatFrom(t, got, 42), 8080)
				p.IPOptions = ipOptions()
				return p.Bytes()
			}},
		{desc: "TCP SYN, no endpoints: RST+ACK, seq 0, ack = seq+1", verdict: fwd,
			reason: reasonPtr(datapath.SluiceReasonREASON_REJECT_TCP_RST),
			in:     func(*flow) []byte { return tcpSYN(40007, 30090).Bytes() },
			want: func(*flow, []byte) []byte {
				return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP, DF: true,
					Src: ap(nodeIP, 30090), Dst: ap(clientIP, 40007), RST: true, ACK: true, Seq: 0, Ack: 1001}.Bytes()
			}},
		{desc: "TCP ACK with data, no endpoints: RST with seq = their ack", verdict: fwd,
			in: func(*flow) []byte {
				p := e.fromClient(layers.IPProtocolTCP, 40008, 30090)
				p.ACK, p.Seq, p.Ack = true, 77, 99
				p.IPOptions = ipOptions()
				return p.Bytes()
			},
			want: func(*flow, []byte) []byte {
				return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP, DF: true,
					Src: ap(nodeIP, 30090), Dst: ap(clientIP, 40008), RST: true, Seq: 99}.Bytes()
			}},
		{desc: "TCP ACK to a NodePort with no flow: left to the kernel, counted (only a SYN opens a flow)", verdict: pass,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_NO_FLOW),
			in: func(*flow) []byte {
				p := e.fromClient(layers.IPProtocolTCP, 40019, 30080)
				p.ACK, p.Seq, p.Ack = true, 5, 6
				return p.Bytes()
			}},
		{desc: "TCP RST, no endpoints: dropped, never answered", verdict: drop,
			in: func(*flow) []byte {
				p := tcpSYN(40009, 30090)
				p.SYN, p.RST = false, true
				return p.Bytes()
			}},
		{desc: "UDP, no endpoints: ICMP port unreachable quoting the datagram", verdict: fwd,
			reason: reasonPtr(datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE),
			in:     func(*flow) []byte { return e.fromClient(layers.IPProtocolUDP, 40010, 30090).Bytes() },
			want: func(*flow, []byte) []byte {
				return icmpUnreachable(e.nodeMAC, e.fromClient(layers.IPProtocolUDP, 40010, 30090))
			}},
		{desc: "UDP with IP options, no endpoints: ICMP quotes the options too", verdict: fwd,
			in: func(*flow) []byte {
				p := e.fromClient(layers.IPProtocolUDP, 40011, 30090)
				p.IPOptions = ipOptions()
				return p.Bytes()
			},
			want: func(*flow, []byte) []byte {
				p := e.fromClient(layers.IPProtocolUDP, 40011, 30090)
				p.IPOptions = ipOptions()
				return icmpUnreachable(e.nodeMAC, p)
			}},
		{desc: "later fragment of no datagram sluice knows: passed untouched, counted", verdict: pass,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_FRAGMENT),
			in: func(*flow) []byte {
				p := e.fromClient(layers.IPProtocolUDP, 40013, 30081)
				p.FragOffset = 100
				return p.Bytes()
			}},
		{desc: "truncated TCP header: passed untouched, counted", verdict: pass,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_MALFORMED),
			in: func(*flow) []byte {
				b := tcpSYN(40014, 30080).Bytes()
				b = b[:34+12]
				binary.BigEndian.PutUint16(b[16:], 20+12)
				fixIPChecksum(b[14:34])
				return b
			}},
		{desc: "IHL 4 (bad): passed untouched", verdict: pass,
			in: func(*flow) []byte {
				b := tcpSYN(40015, 30080).Bytes()
				b[14] = 0x44
				return b
			}},
		{desc: "IPv4 total length beyond the frame: passed untouched", verdict: pass,
			in: func(*flow) []byte {
				b := tcpSYN(40016, 30080).Bytes()
				binary.BigEndian.PutUint16(b[16:], 1400)
				fixIPChecksum(b[14:34])
				return b
			}},
		{desc: "TCP data offset beyond the packet: passed untouched", verdict: pass,
			in: func(*flow) []byte {
				b := tcpSYN(40017, 30080).Bytes()
				b[34+12] = 0xf0
				return b
			}},
		{desc: "TTL 1 to a remote backend: dropped, counted", verdict: drop,
			reason: reasonPtr(datapath.SluiceReasonREASON_DROP_TTL_EXCEEDED),
			in: func(*flow) []byte {
				p := tcpSYN(40018, 30080)
				p.TTL = 1
				return p.Bytes()
			}},
	}
}

// vlanRow: XDP leaves tagged frames to tc (which knows the egress device); tc translates them
// and, egressing where they came in, keeps the tag.
func vlanRow(e *env, xdp bool, fwd uint32, toRemote func(testutil.Pkt, uint16, uint16) testutil.Pkt, tcpSYN func(uint16, uint16) testutil.Pkt) golden {
	in := func(*flow) []byte {
		p := tcpSYN(40005, 30080)
		p.VLAN = 42
		return p.Bytes()
	}
	if xdp {
		return golden{desc: "VLAN-tagged SYN: left to tc untouched, counted", verdict: xdpPass, in: in,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_TO_TC)}
	}
	return golden{desc: "VLAN-tagged SYN: translated, tag kept", verdict: fwd, in: in,
		want: func(f *flow, got []byte) []byte {
			p := toRemote(tcpSYN(40005, 30080), snatFromT(got, 38), 8080)
			p.VLAN = 42
			return p.Bytes()
		}}
}

func ipOptions() []layers.IPv4Option {
	// Record-route-like option of 8 bytes (type 7): keeps the header at 28 bytes.
	return []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}, {OptionType: 1}}
}

// trimPadding cuts the Ethernet padding gopacket adds to frames under 60 bytes: the datapath
// builds the bare frame and the device pads it on the wire.
func trimPadding(b []byte) []byte {
	if len(b) < 38 {
		return b
	}
	l3 := 14
	if binary.BigEndian.Uint16(b[12:]) == 0x8100 {
		l3 = 18
	}
	if binary.BigEndian.Uint16(b[l3-2:]) != 0x0800 {
		return b
	}
	if n := l3 + int(binary.BigEndian.Uint16(b[l3+2:])); n < len(b) {
		return b[:n]
	}
	return b
}

func fixIPChecksum(h []byte) {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], testutil.Checksum(h, 0))
}

// icmpUnreachable is the expected ICMP port unreachable answering the client's UDP packet p.
func icmpUnreachable(nodeMAC net.HardwareAddr, p testutil.Pkt) []byte {
	return icmpUnreachableFrom(nodeMAC, p)
}

// icmpUnreachableFrom answers the UDP packet p from the address it was sent to, out of the
// device whose MAC is devMAC.
func icmpUnreachableFrom(devMAC net.HardwareAddr, p testutil.Pkt) []byte {
	orig := p.Bytes()
	quote := orig[14 : p.L4Offset()+8]
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: devMAC, DstMAC: p.SrcMAC, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolICMPv4,
			SrcIP: p.Dst.Addr().AsSlice(), DstIP: p.Src.Addr().AsSlice()},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)},
		gopacket.Payload(quote))
	return buf.Bytes()
}

func (e *env) reasons(t *testing.T) map[maps.Reason]uint64 {
	t.Helper()
	r, err := e.m.Reasons()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func runTable(t *testing.T, e *env, prog *ebpf.Program, xdp bool, table []golden) {
	t.Helper()
	for _, g := range table {
		if g.steps != nil {
			t.Run(g.desc, func(t *testing.T) { runSteps(t, e, prog, xdp, g.steps, &flow{}) })
			continue
		}
		runSteps(t, e, prog, xdp, []golden{g}, &flow{})
	}
}

// runSteps runs rows in order, sharing what earlier ones observed; a failed step stops the
// rest (they would only repeat its failure).
func runSteps(t *testing.T, e *env, prog *ebpf.Program, xdp bool, steps []golden, f *flow) {
	t.Helper()
	for _, g := range steps {
		run := func(t *testing.T, in []byte) (uint32, []byte) { return e.run(t, prog, xdp, in) }
		if !checkGolden(t, e, g, f, xdp, run) {
			return
		}
	}
}

// checkGolden runs row g as a subtest with run and checks it: verdict, every byte, both
// checksums, and the reason counter. It reports whether the row passed.
func checkGolden(t *testing.T, e *env, g golden, f *flow, xdp bool, run func(*testing.T, []byte) (uint32, []byte)) bool {
	t.Helper()
	return t.Run(g.desc, func(t *testing.T) {
		in := g.in(f)
		before := e.reasons(t)
		ret, got := run(t, in)
		if ret != g.verdict {
			t.Fatalf("verdict %d, want %d; output:\n%s", ret, g.verdict, testutil.Decode(got))
		}
		want := in
		if g.want != nil {
			want = g.want(f, got)
			if err := testutil.VerifyChecksums(got); err != nil {
				t.Errorf("checksums: %v", err)
			}
		}
		if ret == xdpDrop && xdp || ret == tcShot && !xdp {
			want = got // the frame's content does not matter once dropped
		}
		if d := testutil.Diff(trimPadding(want), trimPadding(got)); d != "" {
			t.Errorf("output differs:\n%s", d)
		}
		if g.reason != nil {
			if after := e.reasons(t); after[*g.reason] != before[*g.reason]+1 {
				t.Errorf("counter %s went %d -> %d, want +1", maps.ReasonNames[*g.reason], before[*g.reason], after[*g.reason])
			}
		}
	})
}

func TestGoldenXDP(t *testing.T) {
	e := newEnv(t)
	runTable(t, e, e.dp.Objs.SluiceXdp, true, ingressTable(t, e, true))
}

func TestGoldenTCIngress(t *testing.T) {
	e := newEnv(t)
	runTable(t, e, e.dp.Objs.SluiceTcIngress, false, ingressTable(t, e, false))
}

// A local backend's reply leaves through tc egress and gets the frontend's address back.
func TestGoldenTCEgressLocalReply(t *testing.T) {
	e := newEnv(t)
	syn := e.fromClient(layers.IPProtocolTCP, 41000, 30082)
	syn.SYN, syn.Payload = true, nil
	if ret, _ := e.run(t, e.dp.Objs.SluiceXdp, true, syn.Bytes()); ret != xdpPass {
		t.Fatalf("SYN to local backend: verdict %d", ret)
	}
	reply := testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP, TTL: 63,
		Src: ap(podIP, 80), Dst: ap(clientIP, 41000), SYN: true, ACK: true, Seq: 9, Ack: 1, Window: 500}
	want := reply
	want.Src = ap(nodeIP, 30082)
	runTable(t, e, e.dp.Objs.SluiceTcEgress, false, []golden{
		{desc: "pod's SYN-ACK: source restored to the frontend", verdict: tcOK,
			in: func(*flow) []byte { return reply.Bytes() }, want: func(*flow, []byte) []byte { return want.Bytes() }},
		{desc: "node's own traffic leaves untouched", verdict: tcOK,
			in: func(*flow) []byte {
				p := reply
				p.Src = ap(nodeIP, 22)
				return p.Bytes()
			}},
	})
}

// With every SNAT port to a backend taken, a new flow is dropped and counted; established
// flows and flows to other backends are unaffected.
func TestGoldenSNATExhaustion(t *testing.T) {
	e := newEnvWith(t, datapath.Config{SNATPortMin: 61000, SNATPortMax: 61001})
	syn := func(sport, dport uint16) []byte {
		p := e.fromClient(layers.IPProtocolTCP, sport, dport)
		p.SYN, p.Payload = true, nil
		return p.Bytes()
	}
	used := map[uint16]bool{}
	for i, sport := range []uint16{42001, 42002} {
		ret, out := e.run(t, e.dp.Objs.SluiceXdp, true, syn(sport, 30080))
		if ret != xdpTX {
			t.Fatalf("flow %d: verdict %d", i, ret)
		}
		used[binary.BigEndian.Uint16(out[34:])] = true
	}
	if !used[61000] || !used[61001] {
		t.Fatalf("two flows should take both ports: %v", used)
	}
	before := e.reasons(t)[datapath.SluiceReasonREASON_DROP_SNAT_EXHAUSTED]
	if ret, _ := e.run(t, e.dp.Objs.SluiceXdp, true, syn(42003, 30080)); ret != xdpDrop {
		t.Errorf("third flow: verdict %d, want drop", ret)
	}
	if after := e.reasons(t)[datapath.SluiceReasonREASON_DROP_SNAT_EXHAUSTED]; after != before+1 {
		t.Errorf("drop_snat_exhausted %d -> %d", before, after)
	}
	// The established flow still goes through, and so does a flow to another backend port.
	if ret, _ := e.run(t, e.dp.Objs.SluiceXdp, true, syn(42001, 30080)); ret != xdpTX {
		t.Errorf("established flow: verdict %d", ret)
	}
	if ret, _ := e.run(t, e.dp.Objs.SluiceXdp, true, e.fromClient(layers.IPProtocolUDP, 42004, 30081).Bytes()); ret != xdpTX {
		t.Errorf("flow to another backend: verdict %d", ret)
	}
}
