package datapath_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// ICMP errors about translated flows are translated for the flow's other end, as conntrack's
// RELATED NAT does: the quote gets the tuple that end knows (with its IPv4 and L4 checksums),
// the error the addresses that end talks to, the ICMP checksum follows, and the next-hop MTU
// of "fragmentation needed" is kept.

var (
	routerIP = netip.MustParseAddr("10.0.0.77") // a router between the node and a backend or client
	stackMAC = net.HardwareAddr{0x02, 0x5e, 0, 0, 0, 0x01}
)

// icmpError is an ICMP error frame of type/code quoting quote; mtu is the next-hop MTU of
// "fragmentation needed" (0 otherwise).
func icmpError(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, ttl uint8, df bool, typ, code uint8, mtu uint16, quote []byte) []byte {
	ip := &layers.IPv4{Version: 4, TTL: ttl, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	if df {
		ip.Flags = layers.IPv4DontFragment
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Seq: mtu},
		gopacket.Payload(quote)); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// quoteOf is what an ICMP error quotes of p: its IPv4 header and n bytes of its L4 header.
func quoteOf(p testutil.Pkt, n int) []byte {
	p.SrcMAC, p.DstMAC = clientMAC, backendMAC // not quoted
	return p.Bytes()[p.L3Offset() : p.L4Offset()+n]
}

// icmpEnv adds a UDP service with a local backend to newEnv's: svc 6, UDP 30083 -> pod:5353.
func icmpEnv(t *testing.T) *env {
	e := newEnv(t)
	must(t, e.m.UpdateBackend(6, lb.Backend{Addr: podIP, Port: 5353, Local: true}))
	must(t, e.m.UpdateSlot(maps.SlotKey{ServiceID: 6, Slot: 1}, 6))
	must(t, e.m.UpdateFrontend(lb.FrontendKey{Addr: nodeIP, Port: 30083, Proto: lb.UDP}, lb.Frontend{ServiceID: 6, Count: 1}))
	must(t, e.m.SetFrontendPort(30083))
	return e
}

func TestICMPErrorsAboutRemoteBackendsFlows(t *testing.T) {
	e := icmpEnv(t)
	reason := reasonPtr(datapath.SluiceReasonREASON_ICMP_RELATED)
	datagram := e.fromClient(layers.IPProtocolUDP, 40100, 30081)
	syn := e.fromClient(layers.IPProtocolTCP, 40101, 30080)
	syn.SYN, syn.Seq, syn.Payload = true, 1000, nil
	// What the backend received: translated, TTL 63.
	sent := func(p testutil.Pkt, snat, bport uint16) testutil.Pkt {
		p.Src, p.Dst, p.TTL = ap(nodeIP, snat), ap(backendIP, bport), 63
		return p
	}
	// What the client sent, as the error quotes it: the TTL it had on the backend's side.
	asClientSent := func(p testutil.Pkt) testutil.Pkt { p.TTL = 63; return p }
	var udpSNAT, tcpSNAT uint16
	runTable(t, e, e.dp.Objs.SluiceTcIngress, false, []golden{
		{desc: "client's datagram opens a flow to the remote backend", verdict: tcRedirect,
			in: func(*flow) []byte { return datagram.Bytes() },
			want: func(_ *flow, got []byte) []byte {
				udpSNAT = snatFrom(t, got, 34)
				p := sent(datagram, udpSNAT, 5353)
				p.SrcMAC, p.DstMAC = e.nodeMAC, backendMAC
				return p.Bytes()
			}},
		{desc: "client's SYN opens a flow to the remote backend", verdict: tcRedirect,
			in: func(*flow) []byte { return syn.Bytes() },
			want: func(_ *flow, got []byte) []byte {
				tcpSNAT = snatFrom(t, got, 34)
				p := sent(syn, tcpSNAT, 8080)
				p.SrcMAC, p.DstMAC = e.nodeMAC, backendMAC
				return p.Bytes()
			}},
		{desc: "backend's port unreachable: to the client, from the frontend, quoting the client's datagram", verdict: tcRedirect, reason: reason,
			in: func(*flow) []byte {
				return icmpError(backendMAC, e.nodeMAC, backendIP, nodeIP, 64, false, 3, 3, 0, quoteOf(sent(datagram, udpSNAT, 5353), 8))
			},
			want: func(*flow, []byte) []byte {
				return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 63, false, 3, 3, 0, quoteOf(asClientSent(datagram), 8))
			}},
		{desc: "router's fragmentation needed about a TCP segment (whole header quoted): to the client from the frontend, MTU kept", verdict: tcRedirect, reason: reason,
			in: func(*flow) []byte {
				return icmpError(backendMAC, e.nodeMAC, routerIP, nodeIP, 64, false, 3, 4, 1280, quoteOf(sent(syn, tcpSNAT, 8080), 20))
			},
			want: func(*flow, []byte) []byte {
				return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 63, false, 3, 4, 1280, quoteOf(asClientSent(syn), 20))
			}},
		{desc: "time exceeded with a long quote: translated, the rest of the quote kept", verdict: tcRedirect, reason: reason,
			in: func(*flow) []byte {
				p := sent(datagram, udpSNAT, 5353)
				return icmpError(backendMAC, e.nodeMAC, routerIP, nodeIP, 64, false, 11, 0, 0, quoteOf(p, 8+len(p.Payload)))
			},
			want: func(*flow, []byte) []byte {
				return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 63, false, 11, 0, 0, quoteOf(asClientSent(datagram), 8+len(datagram.Payload)))
			}},
		{desc: "a client-side router's fragmentation needed about a reply: to the backend, from the SNAT address", verdict: tcRedirect, reason: reason,
			in: func(*flow) []byte {
				reply := testutil.Pkt{Proto: layers.IPProtocolUDP, Src: ap(nodeIP, 30081), Dst: ap(clientIP, 40100), TTL: 63, Payload: []byte("answer")}
				return icmpError(clientMAC, e.nodeMAC, routerIP, nodeIP, 64, false, 3, 4, 1400, quoteOf(reply, 8))
			},
			want: func(*flow, []byte) []byte {
				reply := testutil.Pkt{Proto: layers.IPProtocolUDP, Src: ap(backendIP, 5353), Dst: ap(nodeIP, udpSNAT), TTL: 63, Payload: []byte("answer")}
				return icmpError(e.nodeMAC, backendMAC, nodeIP, backendIP, 63, false, 3, 4, 1400, quoteOf(reply, 8))
			}},
	})
}

func TestICMPErrorsAboutLocalBackendsFlows(t *testing.T) {
	e := icmpEnv(t)
	reason := reasonPtr(datapath.SluiceReasonREASON_ICMP_RELATED)
	datagram := e.fromClient(layers.IPProtocolUDP, 40110, 30083)
	syn := e.fromClient(layers.IPProtocolTCP, 40111, 30082)
	syn.SYN, syn.Seq, syn.Payload = true, 1000, nil
	toPod := func(p testutil.Pkt, port uint16) testutil.Pkt { p.Dst = ap(podIP, port); return p }
	runTable(t, e, e.dp.Objs.SluiceTcIngress, false, []golden{
		{desc: "client's datagram to the local backend: DNAT, to the stack", verdict: tcOK,
			in:   func(*flow) []byte { return datagram.Bytes() },
			want: func(*flow, []byte) []byte { return toPod(datagram, 5353).Bytes() }},
		{desc: "client's SYN to the local backend: DNAT, to the stack", verdict: tcOK,
			in:   func(*flow) []byte { return syn.Bytes() },
			want: func(*flow, []byte) []byte { return toPod(syn, 80).Bytes() }},
		{desc: "a client-side router's error about the pod's reply: to the pod, the router's address kept, to the stack", verdict: tcOK, reason: reason,
			in: func(*flow) []byte {
				reply := testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(nodeIP, 30082), Dst: ap(clientIP, 40111), TTL: 63, SYN: true, ACK: true, Seq: 7, Ack: 1001}
				return icmpError(clientMAC, e.nodeMAC, routerIP, nodeIP, 64, false, 3, 4, 1400, quoteOf(reply, 20))
			},
			want: func(*flow, []byte) []byte {
				reply := testutil.Pkt{Proto: layers.IPProtocolTCP, Src: ap(podIP, 80), Dst: ap(clientIP, 40111), TTL: 63, SYN: true, ACK: true, Seq: 7, Ack: 1001}
				return icmpError(clientMAC, e.nodeMAC, routerIP, podIP, 64, false, 3, 4, 1400, quoteOf(reply, 20))
			}},
	})
	runTable(t, e, e.dp.Objs.SluiceTcEgress, false, []golden{
		{desc: "the pod's port unreachable leaves from the frontend, quoting the client's datagram", verdict: tcOK, reason: reason,
			in: func(*flow) []byte {
				return icmpError(e.nodeMAC, clientMAC, podIP, clientIP, 63, false, 3, 3, 0, quoteOf(toPod(datagram, 5353), 8))
			},
			want: func(*flow, []byte) []byte {
				return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 63, false, 3, 3, 0, quoteOf(datagram, 8))
			}},
		{desc: "the node's own fragmentation needed about a segment to the pod leaves from the frontend", verdict: tcOK, reason: reason,
			in: func(*flow) []byte {
				return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 64, false, 3, 4, 1280, quoteOf(toPod(syn, 80), 8))
			},
			want: func(*flow, []byte) []byte {
				return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 64, false, 3, 4, 1280, quoteOf(syn, 8))
			}},
	})
}

// Errors that are not about a flow of ours, or that cannot be read, pass untouched.
func TestICMPErrorsNotOurs(t *testing.T) {
	e := icmpEnv(t)
	stranger := testutil.Pkt{Proto: layers.IPProtocolUDP, Src: ap(nodeIP, 40120), Dst: ap(backendIP, 53), Payload: []byte("q")}
	rows := []golden{
		{desc: "about a flow sluice does not know: untouched", verdict: tcOK,
			in: func(*flow) []byte {
				return icmpError(backendMAC, e.nodeMAC, backendIP, nodeIP, 64, false, 3, 3, 0, quoteOf(stranger, 8))
			}},
		{desc: "quote cut inside the L4 header: untouched", verdict: tcOK,
			in: func(*flow) []byte {
				return icmpError(backendMAC, e.nodeMAC, backendIP, nodeIP, 64, false, 3, 3, 0, quoteOf(stranger, 4))
			}},
		{desc: "redirect (not an error about a packet's delivery): untouched", verdict: tcOK,
			in: func(*flow) []byte {
				return icmpError(backendMAC, e.nodeMAC, backendIP, nodeIP, 64, false, 5, 1, 0, quoteOf(stranger, 8))
			}},
	}
	runTable(t, e, e.dp.Objs.SluiceTcIngress, false, rows)
	runTable(t, e, e.dp.Objs.SluiceTcEgress, false, rows)
	for _, g := range rows {
		if ret, _ := e.run(t, e.dp.Objs.SluiceXdp, true, g.in(nil)); ret != xdpPass {
			t.Errorf("XDP, %s: verdict %d, want pass (ICMP is tc's)", g.desc, ret)
		}
	}
}

// A translated packet over the next hop's MTU is answered as a router answers it: with DF,
// "fragmentation needed" with that MTU goes back to the sender, quoting its packet as it sent
// it; without DF it is dropped and counted (sluice does not fragment). A GSO packet is judged
// by its segments. On Linux 5.10 the MTU is found by bisecting FIB lookups.
func TestTooBigForTheNextHop(t *testing.T) {
	e := icmpEnv(t)
	// bpf_fib_lookup reads a route's MTU only when it is locked (or with ip_forward_use_pmtu);
	// the kernel's own forwarding honours it either way.
	e.ns.MustExec(t, "ip", "route", "add", backendIP.String()+"/32", "dev", "eth0", "mtu", "lock", "1280")
	big := func(proto layers.IPProtocol, sport uint16, df bool) testutil.Pkt {
		p := e.fromClient(proto, sport, 30081)
		if proto == layers.IPProtocolTCP {
			p.Dst = ap(nodeIP, 30080)
		}
		p.DF, p.Payload = df, make([]byte, 1300)
		return p
	}
	// The quote reaches the L4 checksum (TCP 20 bytes, UDP 8), which the kernel may still have
	// to fill in.
	fragNeeded := func(p testutil.Pkt) []byte {
		n := 8
		if p.Proto == layers.IPProtocolTCP {
			n = 20
		}
		return icmpError(e.nodeMAC, clientMAC, nodeIP, clientIP, 64, true, 3, 4, 1280, quoteOf(p, n))
	}
	runTable(t, e, e.dp.Objs.SluiceTcIngress, false, []golden{
		{desc: "UDP with DF over the MTU: fragmentation needed, MTU 1280", verdict: tcRedirect,
			reason: reasonPtr(datapath.SluiceReasonREASON_ICMP_FRAG_NEEDED_SENT),
			in:     func(*flow) []byte { return big(layers.IPProtocolUDP, 40130, true).Bytes() },
			want:   func(*flow, []byte) []byte { return fragNeeded(big(layers.IPProtocolUDP, 40130, true)) }},
		{desc: "UDP without DF over the MTU: dropped, counted", verdict: tcShot,
			reason: reasonPtr(datapath.SluiceReasonREASON_DROP_FRAG_NEEDED),
			in:     func(*flow) []byte { return big(layers.IPProtocolUDP, 40131, false).Bytes() }},
		{desc: "UDP without DF over the MTU, sluice0 known: translated (TTL kept), to the kernel through sluice0 to fragment", verdict: tcRedirect,
			reason: reasonPtr(datapath.SluiceReasonREASON_FRAG_BY_STACK),
			in: func(*flow) []byte {
				must(t, e.dp.SetStackDevice(e.ifindex, stackMAC))
				return big(layers.IPProtocolUDP, 40134, false).Bytes()
			},
			want: func(_ *flow, got []byte) []byte {
				must(t, e.dp.SetStackDevice(0, nil))
				p := big(layers.IPProtocolUDP, 40134, false)
				p.SrcMAC, p.DstMAC = clientMAC, stackMAC
				p.Src, p.Dst = ap(nodeIP, snatFrom(t, got, 34)), ap(backendIP, 5353)
				return p.Bytes()
			}},
		{desc: "UDP with DF within the MTU: translated", verdict: tcRedirect,
			in: func(*flow) []byte {
				p := e.fromClient(layers.IPProtocolUDP, 40132, 30081)
				p.DF, p.Payload = true, make([]byte, 1252)
				return p.Bytes()
			},
			want: func(_ *flow, got []byte) []byte {
				p := e.fromClient(layers.IPProtocolUDP, 40132, 30081)
				p.DF, p.Payload = true, make([]byte, 1252)
				p.SrcMAC, p.DstMAC, p.TTL = e.nodeMAC, backendMAC, 63
				p.Src, p.Dst = ap(nodeIP, snatFrom(t, got, 34)), ap(backendIP, 5353)
				return p.Bytes()
			}},
	})

	// A GRO-merged TCP packet whose 1400-byte segments do not fit.
	syn := e.fromClient(layers.IPProtocolTCP, 40133, 30080)
	syn.SYN, syn.DF, syn.Payload = true, true, nil
	e.run(t, e.dp.Objs.SluiceTcIngress, false, syn.Bytes())
	seg := e.fromClient(layers.IPProtocolTCP, 40133, 30080)
	seg.ACK, seg.DF, seg.Payload = true, true, make([]byte, 2800)
	before := e.reasons(t)[datapath.SluiceReasonREASON_ICMP_FRAG_NEEDED_SENT]
	ret, out := e.runGSO(t, seg.Bytes(), 1400)
	if ret != tcRedirect || e.reasons(t)[datapath.SluiceReasonREASON_ICMP_FRAG_NEEDED_SENT] != before+1 {
		t.Fatalf("GSO packet with 1440-byte segments: verdict %d, icmp_frag_needed %d -> %d; want redirect, +1",
			ret, before, e.reasons(t)[datapath.SluiceReasonREASON_ICMP_FRAG_NEEDED_SENT])
	}
	got := out[:14+binary.BigEndian.Uint16(out[16:])]
	if err := testutil.VerifyChecksums(got); err != nil {
		t.Errorf("checksums: %v", err)
	}
	if d := testutil.Diff(fragNeeded(seg), got); d != "" {
		t.Errorf("GSO packet: output differs:\n%s", d)
	}
}
