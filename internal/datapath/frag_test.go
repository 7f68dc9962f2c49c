package datapath_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/testutil"
)

// A datagram that arrives in fragments follows its first fragment's flow: the first is
// translated as a whole datagram would be (its L4 checksum update covers the whole), the later
// ones (no L4 header) get the same addresses, found through the ports the first left in
// sluice_frags. Both directions, both backend kinds. Fragments to a next hop go through the
// kernel (sluice0) when there is one, all of a datagram's the same way: XDP leaves them to tc.

// fragment splits an Ethernet/IPv4 frame (no options) into fragments of at most n payload
// bytes (a multiple of 8), as a sender's IP layer would.
func fragment(frame []byte, n int) [][]byte {
	ip := frame[14:]
	data := ip[20:binary.BigEndian.Uint16(ip[2:])]
	var out [][]byte
	for off := 0; off < len(data); off += n {
		chunk := data[off:min(off+n, len(data))]
		h := bytes.Clone(ip[:20])
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(chunk)))
		flags := uint16(off / 8)
		if off+n < len(data) {
			flags |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], flags)
		fixIPChecksum(h)
		out = append(out, append(append(bytes.Clone(frame[:14]), h...), chunk...))
	}
	return out
}

// fragRows are the rows for a datagram in and the datagram it must leave as, fragment by
// fragment (3000 bytes of payload: three fragments).
// want nil: each fragment passes untouched.
func fragRows(desc string, in, want func() testutil.Pkt, verdict uint32) []golden {
	var rows []golden
	for i := range 3 {
		g := golden{desc: desc + [3]string{": first fragment", ": second fragment", ": third fragment"}[i], verdict: verdict,
			in: func(*flow) []byte { return fragment(in().Bytes(), 1480)[i] }}
		if want != nil {
			g.want = func(*flow, []byte) []byte { return fragment(want().Bytes(), 1480)[i] }
		}
		rows = append(rows, g)
	}
	return rows
}

func TestFragmentsFollowTheirFirst(t *testing.T) {
	for _, prog := range []struct {
		name      string
		xdp       bool
		fwd, pass uint32
	}{{"xdp", true, xdpTX, xdpPass}, {"tc", false, tcRedirect, tcOK}} {
		t.Run(prog.name, func(t *testing.T) {
			e := icmpEnv(t)
			p := e.dp.Objs.SluiceTcIngress
			if prog.xdp {
				p = e.dp.Objs.SluiceXdp
			}
			var snat uint16
			big := func(sport, dport uint16) testutil.Pkt {
				d := e.fromClient(layers.IPProtocolUDP, sport, dport)
				d.IPID, d.Payload = 0x4242, bytes.Repeat([]byte("0123456789"), 300)
				return d
			}
			opener := big(40200, 30081)
			opener.IPID, opener.Payload = 1, []byte("hello")
			toBackend := func() testutil.Pkt {
				d := big(40200, 30081)
				d.SrcMAC, d.DstMAC, d.TTL = e.nodeMAC, backendMAC, 63
				d.Src, d.Dst = ap(nodeIP, snat), ap(backendIP, 5353)
				return d
			}
			reply := func() testutil.Pkt {
				d := big(0, 0)
				d.SrcMAC, d.DstMAC, d.IPID = backendMAC, e.nodeMAC, 0x5151
				d.Src, d.Dst = ap(backendIP, 5353), ap(nodeIP, snat)
				return d
			}
			replyToClient := func() testutil.Pkt {
				d := reply()
				d.SrcMAC, d.DstMAC, d.TTL = e.nodeMAC, clientMAC, 63
				d.Src, d.Dst = ap(nodeIP, 30081), ap(clientIP, 40200)
				return d
			}
			rows := []golden{{desc: "a small datagram opens the flow", verdict: prog.fwd,
				in: func(*flow) []byte { return opener.Bytes() },
				want: func(_ *flow, got []byte) []byte {
					snat = snatFrom(t, got, 34)
					d := opener
					d.SrcMAC, d.DstMAC, d.TTL = e.nodeMAC, backendMAC, 63
					d.Src, d.Dst = ap(nodeIP, snat), ap(backendIP, 5353)
					return d.Bytes()
				}}}
			if prog.xdp {
				rows = append(rows, fragRows("client's 3 KB datagram to the remote backend: to tc", func() testutil.Pkt { return big(40200, 30081) }, nil, prog.pass)...)
				rows = append(rows, fragRows("backend's 3 KB reply to the client: to tc", reply, nil, prog.pass)...)
			} else {
				rows = append(rows, fragRows("client's 3 KB datagram to the remote backend, no sluice0: redirected", func() testutil.Pkt { return big(40200, 30081) }, toBackend, prog.fwd)...)
				rows = append(rows, fragRows("backend's 3 KB reply to the client, no sluice0: redirected", reply, replyToClient, prog.fwd)...)
			}
			toPod := func() testutil.Pkt { d := big(40201, 30083); d.Dst = ap(podIP, 5353); return d }
			rows = append(rows, fragRows("client's 3 KB datagram to the local backend", func() testutil.Pkt { return big(40201, 30083) }, toPod, prog.pass)...)
			runTable(t, e, p, prog.xdp, rows)

			// The pod's fragmented reply leaves through tc egress with the frontend's address.
			podReply := func() testutil.Pkt {
				d := big(0, 0)
				d.SrcMAC, d.DstMAC, d.IPID, d.TTL = e.nodeMAC, clientMAC, 0x6161, 63
				d.Src, d.Dst = ap(podIP, 5353), ap(clientIP, 40201)
				return d
			}
			restored := func() testutil.Pkt { d := podReply(); d.Src = ap(nodeIP, 30083); return d }
			runTable(t, e, e.dp.Objs.SluiceTcEgress, false, fragRows("the local backend's 3 KB reply", podReply, restored, tcOK))

			// Out of order: a later fragment before its first is not known yet.
			unseen := big(40202, 30081)
			unseen.IPID = 0x7373
			early := fragment(unseen.Bytes(), 1480)[1]
			before := e.reasons(t)[datapath.SluiceReasonREASON_PASS_FRAGMENT]
			if ret, out := e.run(t, p, prog.xdp, early); ret != prog.pass || !bytes.Equal(out, early) {
				t.Errorf("a later fragment before its first: verdict %d, changed %v; want passed untouched", ret, !bytes.Equal(out, early))
			}
			if e.reasons(t)[datapath.SluiceReasonREASON_PASS_FRAGMENT] != before+1 {
				t.Errorf("pass_fragment not counted")
			}
			if prog.xdp {
				return
			}
			// With sluice0, every fragment of a datagram goes through the kernel, translated
			// (the kernel decrements the TTL), even those that fit the next hop.
			must(t, e.dp.SetStackDevice(e.ifindex, stackMAC))
			viaStack := func() testutil.Pkt { d := big(40200, 30081); d.IPID = 0x4343; return d }
			toStack := func() testutil.Pkt {
				d := toBackend()
				d.IPID, d.SrcMAC, d.DstMAC, d.TTL = 0x4343, clientMAC, stackMAC, 64
				return d
			}
			runTable(t, e, p, false, fragRows("client's 3 KB datagram to the remote backend, sluice0 known: to the kernel", viaStack, toStack, tcRedirect))
		})
	}
}
