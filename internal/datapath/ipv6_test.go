package datapath_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// The IPv6 programs (bpf/sluice6.c) on golden packets, the IPv4 table's rows and more, each
// checked as IPv4's are: verdict, every byte, the checksums recomputed independently, the
// reason counter.

var (
	nodeIP6    = netip.MustParseAddr("fd00::1")
	clientIP6  = netip.MustParseAddr("fd00::9")
	backendIP6 = netip.MustParseAddr("fd00::2")
	podIP6     = netip.MustParseAddr("fd00:244::10")
)

// env6 is env with the IPv6 programs loaded beside the IPv4 ones and the node's IPv6 side:
// fd00::1/64 on eth0, static neighbours for the client and the remote backend.
type env6 struct {
	*env
	v6 *datapath.IPv6
}

func newEnv6(t testing.TB) *env6 {
	t.Helper()
	return newEnv6Of(t, newEnv(t))
}

// newEnv6Of adds the IPv6 side to e.
func newEnv6Of(t testing.TB, e4 *env) *env6 {
	t.Helper()
	e := &env6{env: e4}
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "-6", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad"},
		{"ip", "-6", "neigh", "replace", backendIP6.String(), "lladdr", backendMAC.String(), "dev", "eth0", "nud", "permanent"},
		{"ip", "-6", "neigh", "replace", clientIP6.String(), "lladdr", clientMAC.String(), "dev", "eth0", "nud", "permanent"},
	} {
		e.ns.MustExec(t, c...)
	}
	v6, err := e.dp.LoadIPv6()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v6.Close() })
	e.v6 = v6

	// svc 11: TCP 30080 -> remote [fd00::2]:8080; 12: UDP 30081 -> remote [fd00::2]:5353;
	// 13: TCP 30082 -> local pod [fd00:244::10]:80; 14/15: TCP/UDP 30090, no endpoints. Service and
	// backend IDs are shared with IPv4's (one allocator), so these start past newEnv's.
	// Through maps.Kernel, as the reconciler writes: IPv6 entries go to IPv6's maps.
	e.m.WithIPv6(&e.v6.Objs.Sluice6Maps)
	for id, be := range map[uint32]lb.Backend{
		11: {Addr: backendIP6, Port: 8080},
		12: {Addr: backendIP6, Port: 5353},
		13: {Addr: podIP6, Port: 80, Local: true},
	} {
		must(t, e.m.UpdateBackend(id, be))
		must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: id, Slot: 1}, id))
	}
	for _, f := range []struct {
		port  uint16
		proto lb.Proto
		fe    lb.Frontend
	}{
		{30080, lb.TCP, lb.Frontend{ServiceID: 11, Count: 1}},
		{30081, lb.UDP, lb.Frontend{ServiceID: 12, Count: 1}},
		{30082, lb.TCP, lb.Frontend{ServiceID: 13, Count: 1}},
		{30090, lb.TCP, lb.Frontend{ServiceID: 14}},
		{30090, lb.UDP, lb.Frontend{ServiceID: 15}},
	} {
		must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP6, Port: f.port, Proto: f.proto}, f.fe))
	}
	return e
}

// icmp6Unreachable is the ICMPv6 port unreachable answering in.
func icmp6Unreachable(nodeMAC net.HardwareAddr, in testutil.Pkt) []byte {
	return icmp6Error(nodeMAC, in, layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable, 0)
}

// icmp6Error is the ICMPv6 error answering in from its destination: the header's second word
// rest, then in's IPv6 header, extension headers and L4 header up to its checksum (UDP's 8
// bytes, TCP's 20), as in was sent.
func icmp6Error(nodeMAC net.HardwareAddr, in testutil.Pkt, typ, code uint8, rest uint32) []byte {
	return icmp6Packet(nodeMAC, in.SrcMAC, in.Dst.Addr(), in.Src.Addr(), 64, typ, code, rest, quote6(in, 0))
}

// quote6 is what an ICMPv6 error quotes of p: its headers and its L4 header up to the checksum,
// or n bytes of L4 when n > 0.
func quote6(p testutil.Pkt, n int) []byte {
	if n == 0 {
		n = 8
		if p.Proto == layers.IPProtocolTCP {
			n = 20
		}
	}
	p.SrcMAC, p.DstMAC = clientMAC, backendMAC // not quoted
	return p.Bytes()[p.L3Offset() : p.L4Offset()+n]
}

// icmp6Packet is an ICMPv6 error frame with the given header fields and quote.
func icmp6Packet(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, hop, typ, code uint8, rest uint32, quote []byte) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv6},
		ip, icmp, gopacket.Payload(append(binary.BigEndian.AppendUint32(nil, rest), quote...)))
	if err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func a6(a netip.Addr) datapath.Sluice6AddrT { return datapath.Sluice6AddrT{B: a.As16()} }

func (e *env6) fromClient6(proto layers.IPProtocol, sport, dport uint16) testutil.Pkt {
	return testutil.Pkt{SrcMAC: clientMAC, DstMAC: e.nodeMAC, Proto: proto,
		Src: ap(clientIP6, sport), Dst: ap(nodeIP6, dport), Payload: []byte("hello sluice")}
}

// ingressTable6 is the ingress path's IPv6 table; xdp selects the verdict codes.
func ingressTable6(t *testing.T, e *env6, xdp bool) []golden {
	pass, drop, fwd := uint32(xdpPass), uint32(xdpDrop), uint32(xdpTX)
	if !xdp {
		pass, drop, fwd = tcOK, tcShot, tcRedirect
	}
	const l4 = 14 + 40 // where the SNAT port is, without extension headers
	tcpSYN := func(sport, dport uint16) testutil.Pkt {
		p := e.fromClient6(layers.IPProtocolTCP, sport, dport)
		p.SYN, p.Seq, p.Payload = true, 1000, nil
		return p
	}
	toRemote := func(p testutil.Pkt, snat, bport uint16) testutil.Pkt {
		p.SrcMAC, p.DstMAC = e.nodeMAC, backendMAC
		p.Src, p.Dst = ap(nodeIP6, snat), ap(backendIP6, bport)
		p.TTL = 63
		return p
	}
	return []golden{
		{desc: "neighbour solicitation passes untouched", verdict: pass, in: func(*flow) []byte {
			return testutil.NeighborSolicitation(clientMAC, clientIP6, nodeIP6)
		}},
		{desc: "an IPv4 packet is not the IPv6 programs' (passed untouched)", verdict: pass,
			in: func(*flow) []byte { return e.fromClient(layers.IPProtocolUDP, 40000, 30081).Bytes() }},
		{desc: "TCP to a port that is no frontend passes untouched", verdict: pass,
			in: func(*flow) []byte { return tcpSYN(40000, 22).Bytes() }},
		{desc: "TCP to the NodePort on another address passes untouched", verdict: pass, in: func(*flow) []byte {
			p := tcpSYN(40000, 30080)
			p.Dst = ap(netip.MustParseAddr("fd00::50"), 30080)
			return p.Bytes()
		}},
		{desc: "TCP to NodePort, remote backend: the SYN, a later packet and the SYN-ACK", steps: []golden{
			{desc: "TCP SYN to NodePort, remote backend: DNAT+SNAT, hop limit-1, MACs from the FIB", verdict: fwd,
				in: func(*flow) []byte { return tcpSYN(40001, 30080).Bytes() },
				want: func(f *flow, got []byte) []byte {
					f.snatPort = snatFrom(t, got, l4)
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
						Src: ap(backendIP6, 8080), Dst: ap(nodeIP6, f.snatPort), SYN: true, ACK: true, Seq: 5000, Ack: 1001, Window: 1000}.Bytes()
				},
				want: func(f *flow, got []byte) []byte {
					return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP, TTL: 63,
						Src: ap(nodeIP6, 30080), Dst: ap(clientIP6, 40001), SYN: true, ACK: true, Seq: 5000, Ack: 1001, Window: 1000}.Bytes()
				}},
		}},
		{desc: "UDP to NodePort, remote backend: a datagram and the reply", steps: []golden{
			{desc: "UDP to NodePort, remote backend: DNAT+SNAT with UDP checksum", verdict: fwd,
				in: func(*flow) []byte { return e.fromClient6(layers.IPProtocolUDP, 40002, 30081).Bytes() },
				want: func(f *flow, got []byte) []byte {
					f.snatPort = snatFrom(t, got, l4)
					return toRemote(e.fromClient6(layers.IPProtocolUDP, 40002, 30081), f.snatPort, 5353).Bytes()
				}},
			{desc: "backend's UDP reply: translated back to the client", verdict: fwd,
				in: func(f *flow) []byte {
					return testutil.Pkt{SrcMAC: backendMAC, DstMAC: e.nodeMAC, Proto: layers.IPProtocolUDP,
						Src: ap(backendIP6, 5353), Dst: ap(nodeIP6, f.snatPort), Payload: []byte("answer")}.Bytes()
				},
				want: func(f *flow, got []byte) []byte {
					return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolUDP, TTL: 63,
						Src: ap(nodeIP6, 30081), Dst: ap(clientIP6, 40002), Payload: []byte("answer")}.Bytes()
				}},
		}},
		{desc: "UDP with checksum 0 (invalid over IPv6): passed untouched, counted", verdict: pass,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_MALFORMED),
			in: func(*flow) []byte {
				p := e.fromClient6(layers.IPProtocolUDP, 40003, 30081)
				p.NoUDPChecksum = true
				return p.Bytes()
			}},
		{desc: "SYN with a hop-by-hop options header: L4 found past it, translated, header kept", verdict: fwd,
			in: func(*flow) []byte {
				p := tcpSYN(40004, 30080)
				p.HopByHop = true
				return p.Bytes()
			},
			want: func(f *flow, got []byte) []byte {
				p := tcpSYN(40004, 30080)
				p.HopByHop = true
				return toRemote(p, snatFrom(t, got, l4+8), 8080).Bytes()
			}},
		{desc: "TCP SYN to NodePort, local backend: DNAT only, client address kept, to the stack", verdict: pass,
			in: func(*flow) []byte { return tcpSYN(40005, 30082).Bytes() },
			want: func(*flow, []byte) []byte {
				p := tcpSYN(40005, 30082)
				p.Dst = ap(podIP6, 80)
				return p.Bytes()
			}},
		{desc: "TCP SYN, no endpoints: RST+ACK, seq 0, ack = seq+1", verdict: fwd,
			reason: reasonPtr(datapath.SluiceReasonREASON_REJECT_TCP_RST),
			in:     func(*flow) []byte { return tcpSYN(40006, 30090).Bytes() },
			want: func(*flow, []byte) []byte {
				return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP,
					Src: ap(nodeIP6, 30090), Dst: ap(clientIP6, 40006), RST: true, ACK: true, Seq: 0, Ack: 1001}.Bytes()
			}},
		{desc: "TCP ACK with data behind a hop-by-hop header, no endpoints: RST with seq = their ack, no extension header", verdict: fwd,
			in: func(*flow) []byte {
				p := e.fromClient6(layers.IPProtocolTCP, 40008, 30090)
				p.ACK, p.Seq, p.Ack, p.HopByHop = true, 77, 99, true
				return p.Bytes()
			},
			want: func(*flow, []byte) []byte {
				return testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP,
					Src: ap(nodeIP6, 30090), Dst: ap(clientIP6, 40008), RST: true, Seq: 99}.Bytes()
			}},
		{desc: "TCP RST, no endpoints: dropped, never answered", verdict: drop,
			in: func(*flow) []byte {
				p := tcpSYN(40009, 30090)
				p.SYN, p.RST = false, true
				return p.Bytes()
			}},
		{desc: "UDP, no endpoints: ICMPv6 port unreachable quoting the datagram's headers", verdict: fwd,
			reason: reasonPtr(datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE),
			in:     func(*flow) []byte { return e.fromClient6(layers.IPProtocolUDP, 40010, 30090).Bytes() },
			want: func(*flow, []byte) []byte {
				return icmp6Unreachable(e.nodeMAC, e.fromClient6(layers.IPProtocolUDP, 40010, 30090))
			}},
		{desc: "UDP behind a hop-by-hop header, no endpoints: the quote has the extension header too", verdict: fwd,
			in: func(*flow) []byte {
				p := e.fromClient6(layers.IPProtocolUDP, 40011, 30090)
				p.HopByHop = true
				return p.Bytes()
			},
			want: func(*flow, []byte) []byte {
				p := e.fromClient6(layers.IPProtocolUDP, 40011, 30090)
				p.HopByHop = true
				return icmp6Unreachable(e.nodeMAC, p)
			}},
		{desc: "hop limit 1 to a remote backend: dropped, counted", verdict: drop,
			reason: reasonPtr(datapath.SluiceReasonREASON_DROP_TTL_EXCEEDED),
			in: func(*flow) []byte {
				p := tcpSYN(40007, 30080)
				p.TTL = 1
				return p.Bytes()
			}},
	}
}

func TestGoldenIPv6XDP(t *testing.T) {
	e := newEnv6(t)
	runTable(t, e.env, e.v6.Objs.SluiceXdp6, true, ingressTable6(t, e, true))
}

func TestGoldenIPv6TCIngress(t *testing.T) {
	e := newEnv6(t)
	runTable(t, e.env, e.v6.Objs.SluiceTcIngress6, false, ingressTable6(t, e, false))
}

// A local backend's reply leaves through tc egress and gets the frontend's address back.
func TestGoldenIPv6TCEgressLocalReply(t *testing.T) {
	e := newEnv6(t)
	syn := e.fromClient6(layers.IPProtocolTCP, 41000, 30082)
	syn.SYN, syn.Payload = true, nil
	if ret, _ := e.run(t, e.v6.Objs.SluiceXdp6, true, syn.Bytes()); ret != xdpPass {
		t.Fatalf("SYN to local backend: verdict %d", ret)
	}
	must(t, e.m.SetBackendPort(80))
	reply := testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: clientMAC, Proto: layers.IPProtocolTCP, TTL: 63,
		Src: ap(podIP6, 80), Dst: ap(clientIP6, 41000), SYN: true, ACK: true, Seq: 9, Ack: 1, Window: 500}
	want := reply
	want.Src = ap(nodeIP6, 30082)
	// Through the IPv6 program, and through the IPv4 one attached, which hands it over.
	for _, prog := range []*ebpf.Program{e.v6.Objs.SluiceTcEgress6, e.dp.Objs.SluiceTcEgress} {
		runTable(t, e.env, prog, false, []golden{
			{desc: "pod's SYN-ACK: source restored to the frontend", verdict: tcOK,
				in: func(*flow) []byte { return reply.Bytes() }, want: func(*flow, []byte) []byte { return want.Bytes() }},
			{desc: "node's own traffic leaves untouched", verdict: tcOK,
				in: func(*flow) []byte {
					p := reply
					p.Src = ap(nodeIP6, 22)
					return p.Bytes()
				}},
		})
	}
}

// The programs attached are IPv4's: they hand IPv6 packets to the IPv6 programs once those are
// loaded, and the table above gives the same results through them. Before, IPv6 is the kernel's.
func TestIPv6ThroughTheIPv4Programs(t *testing.T) {
	e := newEnv(t)
	syn := testutil.Pkt{SrcMAC: clientMAC, DstMAC: e.nodeMAC, Proto: layers.IPProtocolTCP,
		Src: ap(clientIP6, 40000), Dst: ap(nodeIP6, 30080), SYN: true}
	runTable(t, e, e.dp.Objs.SluiceXdp, true, []golden{
		{desc: "no IPv6 programs loaded: an IPv6 SYN to a NodePort passes untouched", verdict: xdpPass,
			in: func(*flow) []byte { return syn.Bytes() }},
	})

	e6 := newEnv6Of(t, e)
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		xdp  bool
	}{{"xdp", e.dp.Objs.SluiceXdp, true}, {"tc", e.dp.Objs.SluiceTcIngress, false}} {
		t.Run(c.name, func(t *testing.T) {
			var table []golden
			for _, g := range ingressTable6(t, e6, c.xdp) {
				if !strings.Contains(g.desc, "IPv4 packet") { // IPv4's own, through these
					table = append(table, g)
				}
			}
			runTable(t, e, c.prog, c.xdp, table)
		})
	}
}

// A translated packet over the next hop's MTU gets ICMPv6 packet too big with that MTU, quoting
// the packet as the client sent it (IPv6 routers never fragment: there is no DF to read). The
// quote's checksum loop runs in a program of its own (calls6.h).
func TestIPv6TooBigForTheNextHop(t *testing.T) {
	e := newEnv6(t)
	// As IPv4's test: bpf_fib_lookup reads a route's MTU only when it is locked.
	e.ns.MustExec(t, "ip", "-6", "route", "add", backendIP6.String()+"/128", "dev", "eth0", "mtu", "lock", "1280")
	big := func(sport uint16) testutil.Pkt {
		p := e.fromClient6(layers.IPProtocolUDP, sport, 30081)
		p.Payload = make([]byte, 1300)
		return p
	}
	for _, prog := range []*ebpf.Program{e.v6.Objs.SluiceTcIngress6, e.dp.Objs.SluiceTcIngress} {
		runTable(t, e.env, prog, false, []golden{
			{desc: "UDP over the MTU: packet too big, MTU 1280, quoting the datagram's headers", verdict: tcRedirect,
				reason: reasonPtr(datapath.SluiceReasonREASON_ICMP_FRAG_NEEDED_SENT),
				in:     func(*flow) []byte { return big(40130).Bytes() },
				want:   func(*flow, []byte) []byte { return icmp6Error(e.nodeMAC, big(40130), 2, 0, 1280) }},
			{desc: "UDP within the MTU: translated", verdict: tcRedirect,
				in: func(*flow) []byte {
					p := e.fromClient6(layers.IPProtocolUDP, 40132, 30081)
					p.Payload = make([]byte, 1232)
					return p.Bytes()
				},
				want: func(_ *flow, got []byte) []byte {
					p := e.fromClient6(layers.IPProtocolUDP, 40132, 30081)
					p.Payload = make([]byte, 1232)
					p.SrcMAC, p.DstMAC, p.TTL = e.nodeMAC, backendMAC, 63
					p.Src, p.Dst = ap(nodeIP6, snatFrom(t, got, 14+40)), ap(backendIP6, 5353)
					return p.Bytes()
				}},
		})
	}
}

// ICMPv6 errors about translated flows are translated for the flow's other end, as IPv4's
// (TestICMPErrorsAboutRemoteBackendsFlows): the quote gets the tuple that end knows, the error
// its addresses, and the ICMPv6 checksum both, over the pseudo-header.
func TestIPv6ICMPErrorsAboutRemoteBackendsFlows(t *testing.T) {
	e := newEnv6(t)
	routerIP6 := netip.MustParseAddr("fd00::fe")
	reason := reasonPtr(datapath.SluiceReasonREASON_ICMP_RELATED)
	for i, prog := range []*ebpf.Program{e.v6.Objs.SluiceTcIngress6, e.dp.Objs.SluiceTcIngress} {
		datagram := e.fromClient6(layers.IPProtocolUDP, 40100+uint16(i), 30081)
		syn := e.fromClient6(layers.IPProtocolTCP, 40110+uint16(i), 30080)
		syn.SYN, syn.Seq, syn.Payload = true, 1000, nil
		sent := func(p testutil.Pkt, snat, bport uint16) testutil.Pkt {
			p.Src, p.Dst, p.TTL = ap(nodeIP6, snat), ap(backendIP6, bport), 63
			return p
		}
		asClientSent := func(p testutil.Pkt) testutil.Pkt { p.TTL = 63; return p }
		var udpSNAT, tcpSNAT uint16
		runTable(t, e.env, prog, false, []golden{
			{desc: "client's datagram opens a flow to the remote backend", verdict: tcRedirect,
				in: func(*flow) []byte { return datagram.Bytes() },
				want: func(_ *flow, got []byte) []byte {
					udpSNAT = snatFrom(t, got, 14+40)
					p := sent(datagram, udpSNAT, 5353)
					p.SrcMAC, p.DstMAC = e.nodeMAC, backendMAC
					return p.Bytes()
				}},
			{desc: "client's SYN opens a flow to the remote backend", verdict: tcRedirect,
				in: func(*flow) []byte { return syn.Bytes() },
				want: func(_ *flow, got []byte) []byte {
					tcpSNAT = snatFrom(t, got, 14+40)
					p := sent(syn, tcpSNAT, 8080)
					p.SrcMAC, p.DstMAC = e.nodeMAC, backendMAC
					return p.Bytes()
				}},
			{desc: "backend's port unreachable: to the client, from the frontend, quoting the client's datagram", verdict: tcRedirect, reason: reason,
				in: func(*flow) []byte {
					return icmp6Packet(backendMAC, e.nodeMAC, backendIP6, nodeIP6, 64, 1, 4, 0, quote6(sent(datagram, udpSNAT, 5353), 0))
				},
				want: func(*flow, []byte) []byte {
					return icmp6Packet(e.nodeMAC, clientMAC, nodeIP6, clientIP6, 63, 1, 4, 0, quote6(asClientSent(datagram), 0))
				}},
			{desc: "router's packet too big about a TCP segment: to the client from the frontend, MTU kept", verdict: tcRedirect, reason: reason,
				in: func(*flow) []byte {
					return icmp6Packet(backendMAC, e.nodeMAC, routerIP6, nodeIP6, 64, 2, 0, 1280, quote6(sent(syn, tcpSNAT, 8080), 0))
				},
				want: func(*flow, []byte) []byte {
					return icmp6Packet(e.nodeMAC, clientMAC, nodeIP6, clientIP6, 63, 2, 0, 1280, quote6(asClientSent(syn), 0))
				}},
			{desc: "time exceeded with a long quote: translated, the rest of the quote kept", verdict: tcRedirect, reason: reason,
				in: func(*flow) []byte {
					p := sent(datagram, udpSNAT, 5353)
					return icmp6Packet(backendMAC, e.nodeMAC, routerIP6, nodeIP6, 64, 3, 0, 0, quote6(p, 8+len(p.Payload)))
				},
				want: func(*flow, []byte) []byte {
					return icmp6Packet(e.nodeMAC, clientMAC, nodeIP6, clientIP6, 63, 3, 0, 0, quote6(asClientSent(datagram), 8+len(datagram.Payload)))
				}},
			{desc: "about a flow sluice does not know: untouched", verdict: tcOK,
				in: func(*flow) []byte {
					return icmp6Packet(backendMAC, e.nodeMAC, backendIP6, nodeIP6, 64, 1, 4, 0, quote6(sent(datagram, 9999, 5353), 0))
				}},
			{desc: "echo request to the node: untouched", verdict: tcOK,
				in: func(*flow) []byte {
					return icmp6Packet(clientMAC, e.nodeMAC, clientIP6, nodeIP6, 64, 128, 0, 0, nil)
				}},
		})
	}
}

// IPv6's kernel NAT flows beside sluice's, as IPv4's (TestKernelFlowMovedOffASluicePort): with
// two SNAT ports, sluice's flow first, the kernel's flow that leaves with the same port is
// moved to the free one and its replies moved back, through the programs attached.
func TestIPv6KernelFlowMovedOffASluicePort(t *testing.T) {
	e := newEnv6Of(t, newEnvWith(t, datapath.Config{SNATPortMin: 61000, SNATPortMax: 61001}))
	must(t, e.v6.Objs.SluiceDeviceAddrs6.Update(uint32(e.ifindex), a6(nodeIP6), ebpf.UpdateAny))
	const l4 = 14 + 40
	syn := e.fromClient6(layers.IPProtocolTCP, 43000, 30080)
	syn.SYN, syn.Payload = true, nil
	ret, out := e.run(t, e.dp.Objs.SluiceXdp, true, syn.Bytes())
	if ret != xdpTX {
		t.Fatalf("sluice's SYN: verdict %d", ret)
	}
	taken := binary.BigEndian.Uint16(out[l4:])
	free := uint16(61000 + 61001 - int(taken))

	kernel := testutil.Pkt{SrcMAC: e.nodeMAC, DstMAC: backendMAC, Proto: layers.IPProtocolTCP,
		Src: ap(nodeIP6, taken), Dst: ap(backendIP6, 8080), SYN: true}
	before := e.reasons(t)
	ret, out = e.run(t, e.dp.Objs.SluiceTcEgress, false, kernel.Bytes())
	if ret != tcOK || binary.BigEndian.Uint16(out[l4:]) != free {
		t.Fatalf("kernel SYN on sluice's port %d: verdict %d, left with port %d, want %d", taken, ret, binary.BigEndian.Uint16(out[l4:]), free)
	}
	if err := testutil.VerifyChecksums(out); err != nil {
		t.Fatal(err)
	}
	if got := e.reasons(t)[datapath.SluiceReasonREASON_KERNEL_FLOW_MOVED] - before[datapath.SluiceReasonREASON_KERNEL_FLOW_MOVED]; got != 1 {
		t.Errorf("kernel_flow_moved +%d, want +1", got)
	}
	reply := testutil.Pkt{SrcMAC: backendMAC, DstMAC: e.nodeMAC, Proto: layers.IPProtocolTCP,
		Src: ap(backendIP6, 8080), Dst: ap(nodeIP6, free), SYN: true, ACK: true}
	for _, c := range []struct {
		prog *ebpf.Program
		xdp  bool
		want uint32
	}{{e.dp.Objs.SluiceXdp, true, xdpPass}, {e.dp.Objs.SluiceTcIngress, false, tcOK}} {
		ret, got := e.run(t, c.prog, c.xdp, reply.Bytes())
		if ret != c.want || binary.BigEndian.Uint16(got[l4+2:]) != taken {
			t.Fatalf("xdp=%v: reply to the moved flow: verdict %d, to port %d; want %d, port %d", c.xdp, ret, binary.BigEndian.Uint16(got[l4+2:]), c.want, taken)
		}
		if err := testutil.VerifyChecksums(got); err != nil {
			t.Fatal(err)
		}
	}
}

// An IPv6 datagram in fragments (the sender's: IPv6 routers never fragment): the first, with
// the UDP header, opens the flow and leaves its ports for the rest, which get the same
// addresses and nothing else (their bytes are payload). XDP hands fragments to tc.
func TestIPv6FragmentsFollowTheirFirst(t *testing.T) {
	e := newEnv6(t)
	first := e.fromClient6(layers.IPProtocolUDP, 40200, 30081)
	first.MoreFragments, first.IPID, first.Payload = true, 77, make([]byte, 96)
	later := first
	later.MoreFragments, later.FragOffset, later.Payload = false, 13, make([]byte, 40)
	// What the datapath does to a later fragment, done by hand: MACs, addresses, hop limit.
	translated := func(in []byte) []byte {
		out := bytes.Clone(in)
		copy(out[0:6], backendMAC)
		copy(out[6:12], e.nodeMAC)
		out[14+7]--
		n, b := nodeIP6.As16(), backendIP6.As16()
		copy(out[14+8:], n[:])
		copy(out[14+24:], b[:])
		return out
	}
	var snat uint16
	runTable(t, e.env, e.dp.Objs.SluiceXdp, true, []golden{
		{desc: "XDP leaves a first fragment to tc, counted", verdict: xdpPass,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_TO_TC),
			in:     func(*flow) []byte { return first.Bytes() }},
	})
	runTable(t, e.env, e.dp.Objs.SluiceTcIngress, false, []golden{
		{desc: "first fragment: translated, fragment header kept", verdict: tcRedirect,
			in: func(*flow) []byte { return first.Bytes() },
			want: func(_ *flow, got []byte) []byte {
				p := first
				snat = snatFrom(t, got, 14+40+8)
				p.SrcMAC, p.DstMAC, p.TTL = e.nodeMAC, backendMAC, 63
				p.Src, p.Dst = ap(nodeIP6, snat), ap(backendIP6, 5353)
				return p.Bytes()
			}},
		{desc: "later fragment: the first's flow, addresses only", verdict: tcRedirect,
			in:   func(*flow) []byte { return later.Bytes() },
			want: func(_ *flow, got []byte) []byte { return translated(later.Bytes()) }},
		{desc: "later fragment of no datagram sluice knows: passed untouched, counted", verdict: tcOK,
			reason: reasonPtr(datapath.SluiceReasonREASON_PASS_FRAGMENT),
			in: func(*flow) []byte {
				p := later
				p.IPID = 78
				return p.Bytes()
			}},
	})
}
