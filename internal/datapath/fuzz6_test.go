package datapath_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// FuzzXDP6 is FuzzXDP for IPv6, through the XDP program attached (IPv4's, which hands IPv6 to
// the IPv6 programs): every frame is passed untouched, dropped with a counted reason, refused
// with a well-formed RST or ICMPv6 error, or translated exactly as a flow's entry in
// sluice_ct6 says, with valid checksums. Seeds carry extension headers and fragments.
func FuzzXDP6(f *testing.F) {
	e := newEnv6(f)
	for _, port := range []uint16{30080, 30081, 30082, 30090, 22} {
		for _, proto := range []layers.IPProtocol{layers.IPProtocolTCP, layers.IPProtocolUDP} {
			p := e.fromClient6(proto, 40000, port)
			p.SYN = proto == layers.IPProtocolTCP
			f.Add(p.Bytes())
			p.VLAN = 7
			f.Add(p.Bytes())
			p.VLAN, p.HopByHop = 0, true
			f.Add(p.Bytes())
			p.HopByHop, p.MoreFragments, p.IPID = false, true, 77
			f.Add(p.Bytes())
		}
	}
	reply := e.fromClient6(layers.IPProtocolTCP, 0, 0)
	reply.SrcMAC, reply.Src, reply.Dst, reply.ACK = backendMAC, ap(backendIP6, 8080), ap(nodeIP6, 1234), true
	f.Add(reply.Bytes())
	f.Add(testutil.NeighborSolicitation(clientMAC, clientIP6, nodeIP6))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return
		}
		before := e.reasons(t)
		in = bytes.Clone(in)
		ret, out := e.run(t, e.dp.Objs.SluiceXdp, true, in)
		if err := checkVerdict6(e, in, ret, out, before, e.reasons(t)); err != nil {
			t.Fatalf("%v\ninput:  %s\noutput: %s", err, testutil.Decode(in), testutil.Decode(out))
		}
	})
}

func checkVerdict6(e *env6, in []byte, ret uint32, out []byte, before, after map[maps.Reason]uint64) error {
	counted := false
	for r := range after {
		if after[r] > before[r] {
			counted = true
		}
	}
	changed := !bytes.Equal(trimPadding(in), trimPadding(out))
	switch ret {
	case xdpPass:
		if !changed {
			return nil
		}
		// A later fragment has no ports: its address says.
		if _, dst, _, later, ok := tuple6(out); !ok || dst != ap(podIP6, 80) && (later == nil || dst.Addr() != podIP6) {
			return fmt.Errorf("passed a rewritten frame that is no local-backend DNAT")
		}
		return checkTranslation6(e, in, out)
	case xdpDrop:
		if counted {
			return nil
		}
		if _, dst, proto, _, ok := tuple6(in); ok && proto == 6 && dst.Port() == 30090 {
			return nil // a RST to a service without endpoints: never answered
		}
		return errors.New("dropped without counting a reason")
	case xdpTX, xdpRedirect:
		if testutil.VerifyChecksums(in) == nil {
			if err := testutil.VerifyChecksums(out); err != nil {
				return fmt.Errorf("valid input sent with bad checksums: %w", err)
			}
		}
		if after[datapath.SluiceReasonREASON_REJECT_TCP_RST] > before[datapath.SluiceReasonREASON_REJECT_TCP_RST] ||
			after[datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE] > before[datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE] {
			return nil
		}
		return checkTranslation6(e, in, out)
	}
	return fmt.Errorf("verdict %d", ret)
}

// checkTranslation6 checks that out is in rewritten as sluice_ct6 says (a later fragment: as its
// first fragment's flow, whose ports sluice_frags6 holds).
func checkTranslation6(e *env6, in, out []byte) error {
	src, dst, proto, frag, ok := tuple6(in)
	if !ok {
		return errors.New("rewrote a frame that is no IPv6 TCP/UDP packet")
	}
	if frag != nil {
		fk := datapath.Sluice6FragKey{Saddr: a6(src.Addr()), Daddr: a6(dst.Addr()), Id: binary.NativeEndian.Uint32(frag), Proto: proto}
		var ports datapath.Sluice6FragPorts
		if err := e.v6.Objs.SluiceFrags6.Lookup(&fk, &ports); err != nil {
			return fmt.Errorf("rewrote a later fragment of no known datagram: %w", err)
		}
		src = netip.AddrPortFrom(src.Addr(), maps.PortFrom16(ports.Sport))
		dst = netip.AddrPortFrom(dst.Addr(), maps.PortFrom16(ports.Dport))
	}
	k := datapath.Sluice6CtKey{Saddr: a6(src.Addr()), Daddr: a6(dst.Addr()), Sport: maps.Port16(src.Port()), Dport: maps.Port16(dst.Port()), Proto: proto}
	var v datapath.Sluice6CtEntry
	if err := e.v6.Objs.SluiceCt6.Lookup(&k, &v); err != nil {
		return fmt.Errorf("rewrote a packet of no known flow (%s -> %s): %w", src, dst, errors.Join(err, ebpf.ErrKeyNotExist))
	}
	osrc, odst, _, _, ok := tuple6(out)
	want := [2]netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom16(v.NatSaddr.B), maps.PortFrom16(v.NatSport)),
		netip.AddrPortFrom(netip.AddrFrom16(v.NatDaddr.B), maps.PortFrom16(v.NatDport))}
	if frag != nil {
		want[0], want[1] = netip.AddrPortFrom(want[0].Addr(), 0), netip.AddrPortFrom(want[1].Addr(), 0)
	}
	if !ok || osrc != want[0] || odst != want[1] {
		return fmt.Errorf("rewrote %s -> %s to %s -> %s, the flow says %s -> %s", src, dst, osrc, odst, want[0], want[1])
	}
	if testutil.VerifyChecksums(in) == nil {
		if err := testutil.VerifyChecksums(out); err != nil {
			return fmt.Errorf("valid input sent with bad checksums: %w", err)
		}
	}
	return nil
}

// tuple6 reads an IPv6 TCP/UDP/SCTP frame's tuple past its extension headers, as the datapath
// walks them; a later fragment has no ports (0) and returns its fragment header's ID bytes.
func tuple6(frame []byte) (src, dst netip.AddrPort, proto uint8, laterID []byte, ok bool) {
	l3 := 14
	if len(frame) < l3 {
		return
	}
	if et := binary.BigEndian.Uint16(frame[12:]); et == 0x8100 || et == 0x88a8 {
		l3 = 18
	}
	if len(frame) < l3+40 || binary.BigEndian.Uint16(frame[l3-2:]) != 0x86dd || frame[l3]>>4 != 6 {
		return
	}
	ip := frame[l3:]
	s, d := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	next, off := ip[6], 40
	for i := 0; i < 4; i++ {
		if next != 0 && next != 43 && next != 60 && next != 44 {
			break
		}
		if len(ip) < off+8 {
			return
		}
		if next == 44 {
			if binary.BigEndian.Uint16(ip[off+2:])&0xfff8 != 0 {
				return netip.AddrPortFrom(s, 0), netip.AddrPortFrom(d, 0), ip[off], ip[off+4 : off+8], true
			}
			next, off = ip[off], off+8
			continue
		}
		next, off = ip[off], off+(int(ip[off+1])+1)*8
	}
	if next != 6 && next != 17 && next != 132 || len(ip) < off+4 {
		return
	}
	l4 := ip[off:]
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4)), netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:])), next, nil, true
}
