package testutil

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// IPv6 frames: Pkt with IPv6 addresses. TTL is the hop limit; HopByHop adds a hop-by-hop
// options header (PadN) before L4, and FragOffset, MoreFragments and IPID a fragment header.

func (p Pkt) is6() bool { return p.Src.Addr().Is6() && !p.Src.Addr().Is4In6() }

// ext6 is the extension headers' bytes between the IPv6 header and L4, and the first's type.
func (p Pkt) ext6() ([]byte, layers.IPProtocol) {
	var ext []byte
	next := p.Proto
	if p.FragOffset != 0 || p.MoreFragments {
		f := make([]byte, 8)
		f[0] = byte(next)
		off := p.FragOffset << 3
		if p.MoreFragments {
			off |= 1
		}
		binary.BigEndian.PutUint16(f[2:], off)
		binary.BigEndian.PutUint32(f[4:], uint32(p.IPID))
		ext, next = f, layers.IPProtocolIPv6Fragment
	}
	if p.HopByHop {
		h := []byte{byte(next), 0, 1, 4, 0, 0, 0, 0} // PadN of 4 bytes
		ext, next = append(h, ext...), layers.IPProtocolIPv6HopByHop
	}
	return ext, next
}

func (p Pkt) bytes6() []byte {
	hl := p.TTL
	if hl == 0 {
		hl = 64
	}
	ext, first := p.ext6()
	eth := &layers.Ethernet{SrcMAC: p.SrcMAC, DstMAC: p.DstMAC, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: hl, NextHeader: p.Proto, SrcIP: p.Src.Addr().AsSlice(), DstIP: p.Dst.Addr().AsSlice()}
	var l4 gopacket.SerializableLayer
	switch p.Proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(p.Src.Port()), DstPort: layers.TCPPort(p.Dst.Port()),
			SYN: p.SYN, ACK: p.ACK, FIN: p.FIN, RST: p.RST, Seq: p.Seq, Ack: p.Ack, Window: p.Window,
		}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.Src.Port()), DstPort: layers.UDPPort(p.Dst.Port())}
		_ = udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	default:
		panic(fmt.Sprintf("testutil: unsupported IPv6 protocol %v", p.Proto))
	}
	// L4 with its checksum over the pseudo-header, then the extension headers put in front.
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip, l4, gopacket.Payload(p.Payload)); err != nil {
		panic(fmt.Sprintf("testutil: serialize: %v", err))
	}
	b := buf.Bytes()
	l3 := append([]byte(nil), b[:40]...)
	l3[6] = byte(first)
	binary.BigEndian.PutUint16(l3[4:], uint16(len(b)-40+len(ext)))
	frame := gopacket.NewSerializeBuffer()
	ls := []gopacket.SerializableLayer{eth}
	if p.VLAN != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: p.VLAN, Type: layers.EthernetTypeIPv6})
	}
	ls = append(ls, gopacket.Payload(append(append(l3, ext...), b[40:]...)))
	if err := gopacket.SerializeLayers(frame, gopacket.SerializeOptions{}, ls...); err != nil {
		panic(fmt.Sprintf("testutil: serialize: %v", err))
	}
	b = frame.Bytes()
	if p.Proto == layers.IPProtocolUDP && p.NoUDPChecksum {
		off := p.L4Offset()
		b[off+6], b[off+7] = 0, 0
	}
	return b
}

// verify6 checks the L4 checksum of an IPv6 packet (ip: from its header) over the IPv6
// pseudo-header, walking the extension headers; a later fragment has none to check.
func verify6(ip []byte) error {
	if len(ip) < 40 {
		return fmt.Errorf("frame too short for IPv6")
	}
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if 40+plen > len(ip) {
		return fmt.Errorf("IPv6 payload length %d does not fit the %d bytes after L2", plen, len(ip)-40)
	}
	next, off := ip[6], 40
	for {
		switch next {
		case 0, 43, 60:
			if off+8 > 40+plen {
				return fmt.Errorf("extension header truncated")
			}
			next, off = ip[off], off+(int(ip[off+1])+1)*8
			continue
		case 44:
			if off+8 > 40+plen {
				return fmt.Errorf("fragment header truncated")
			}
			if binary.BigEndian.Uint16(ip[off+2:])&0xfff8 != 0 {
				return nil // a later fragment: its first's checksum covers the datagram
			}
			if binary.BigEndian.Uint16(ip[off+2:])&1 != 0 {
				return nil // a first fragment: the checksum covers what follows it too
			}
			next, off = ip[off], off+8
			continue
		}
		break
	}
	l4 := ip[off : 40+plen]
	var pseudo uint32
	for i := 8; i < 40; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	pseudo += uint32(next) + uint32(len(l4))
	switch next {
	case 6:
		if c := Checksum(l4, pseudo); c != 0 {
			return fmt.Errorf("TCP checksum wrong (residue %#04x)", c)
		}
	case 17:
		if len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:]) == 0 {
			return fmt.Errorf("UDP checksum 0 over IPv6")
		}
		if c := Checksum(l4, pseudo); c != 0 {
			return fmt.Errorf("UDP checksum wrong (residue %#04x)", c)
		}
	case 58:
		if c := Checksum(l4, pseudo); c != 0 {
			return fmt.Errorf("ICMPv6 checksum wrong (residue %#04x)", c)
		}
	}
	return nil
}

// NeighborSolicitation is an ICMPv6 neighbour solicitation from src for target, to target's
// solicited-node multicast address.
func NeighborSolicitation(srcMAC net.HardwareAddr, src, target netip.Addr) []byte {
	t := target.As16()
	dst := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: t[13], 14: t[14], 15: t[15]})
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, t[13], t[14], t[15]}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice(),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: srcMAC}}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, ns); err != nil {
		panic(fmt.Sprintf("testutil: serialize: %v", err))
	}
	return buf.Bytes()
}
