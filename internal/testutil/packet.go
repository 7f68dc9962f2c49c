package testutil

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Pkt describes an Ethernet/IPv4/TCP-or-UDP frame for the golden-packet tests (IPv6 with
// IPv6 addresses: packet6.go).
type Pkt struct {
	SrcMAC, DstMAC net.HardwareAddr
	VLAN           uint16 // 802.1Q VLAN ID; 0 means untagged
	Src, Dst       netip.AddrPort
	Proto          layers.IPProtocol // TCP or UDP
	TTL            uint8             // default 64
	IPID           uint16
	IPOptions      []layers.IPv4Option
	FragOffset     uint16 // in 8-byte units
	MoreFragments  bool
	SYN, ACK, FIN  bool
	RST            bool
	Seq, Ack       uint32
	Window         uint16 // sent as is, 0 included
	DF             bool
	ICMPType       uint8 // with Proto ICMPv4: type and code; Src/Dst ports unused
	ICMPCode       uint8
	Payload        []byte
	NoUDPChecksum  bool // send UDP checksum 0 ("none")
	HopByHop       bool // IPv6 (packet6.go): a hop-by-hop options header before L4
}

// Bytes serializes the frame with correct lengths and checksums.
func (p Pkt) Bytes() []byte {
	if p.is6() {
		return p.bytes6()
	}
	ttl := p.TTL
	if ttl == 0 {
		ttl = 64
	}
	eth := &layers.Ethernet{SrcMAC: p.SrcMAC, DstMAC: p.DstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{
		Version: 4, TTL: ttl, Protocol: p.Proto, Id: p.IPID,
		SrcIP: p.Src.Addr().AsSlice(), DstIP: p.Dst.Addr().AsSlice(),
		Options: p.IPOptions, FragOffset: p.FragOffset,
	}
	if p.MoreFragments {
		ip.Flags |= layers.IPv4MoreFragments
	}
	if p.DF {
		ip.Flags |= layers.IPv4DontFragment
	}
	ls := []gopacket.SerializableLayer{eth}
	if p.VLAN != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: p.VLAN, Type: layers.EthernetTypeIPv4})
	}
	ls = append(ls, ip)
	switch p.Proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(p.Src.Port()), DstPort: layers.TCPPort(p.Dst.Port()),
			SYN: p.SYN, ACK: p.ACK, FIN: p.FIN, RST: p.RST, Seq: p.Seq, Ack: p.Ack, Window: p.Window,
		}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, tcp)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.Src.Port()), DstPort: layers.UDPPort(p.Dst.Port())}
		_ = udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, udp)
	case layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.ICMPType, p.ICMPCode)})
	default:
		panic(fmt.Sprintf("testutil: unsupported protocol %v", p.Proto))
	}
	ls = append(ls, gopacket.Payload(p.Payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		panic(fmt.Sprintf("testutil: serialize: %v", err))
	}
	b := buf.Bytes()
	if p.Proto == layers.IPProtocolUDP && p.NoUDPChecksum {
		off := p.L4Offset()
		b[off+6], b[off+7] = 0, 0
	}
	return b
}

// L3Offset is where the IPv4 header starts.
func (p Pkt) L3Offset() int {
	if p.VLAN != 0 {
		return 18
	}
	return 14
}

// L4Offset is where the TCP/UDP header starts.
func (p Pkt) L4Offset() int {
	if p.is6() {
		ext, _ := p.ext6()
		return p.L3Offset() + 40 + len(ext)
	}
	n := 20
	for _, o := range p.IPOptions {
		if o.OptionType <= 1 {
			n++
		} else {
			n += int(o.OptionLength)
		}
	}
	return p.L3Offset() + (n+3)/4*4
}

// Checksum is the Internet checksum (RFC 1071) of b with initial sum.
func Checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// VerifyChecksums checks, from scratch, the IPv4 header checksum and the TCP, UDP or ICMP
// checksum of an Ethernet frame. It is independent of how the frame was produced.
func VerifyChecksums(frame []byte) error {
	l3 := 14
	if len(frame) < l3 {
		return fmt.Errorf("frame of %d bytes has no Ethernet header", len(frame))
	}
	if binary.BigEndian.Uint16(frame[12:]) == 0x8100 {
		l3 = 18
	}
	if binary.BigEndian.Uint16(frame[l3-2:]) == 0x86dd {
		return verify6(frame[l3:])
	}
	if len(frame) < l3+20 {
		return fmt.Errorf("frame too short for IPv4")
	}
	ip := frame[l3:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) || total < ihl {
		return fmt.Errorf("IPv4 total length %d does not fit the %d bytes after L2", total, len(ip))
	}
	if c := Checksum(ip[:ihl], 0); c != 0 {
		return fmt.Errorf("IPv4 header checksum wrong (residue %#04x)", c)
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil // a fragment: its L4 checksum covers the whole datagram
	}
	l4 := ip[ihl:total]
	var pseudo uint32
	pseudo += uint32(binary.BigEndian.Uint16(ip[12:])) + uint32(binary.BigEndian.Uint16(ip[14:]))
	pseudo += uint32(binary.BigEndian.Uint16(ip[16:])) + uint32(binary.BigEndian.Uint16(ip[18:]))
	pseudo += uint32(ip[9]) + uint32(len(l4))
	switch ip[9] {
	case 6:
		if c := Checksum(l4, pseudo); c != 0 {
			return fmt.Errorf("TCP checksum wrong (residue %#04x)", c)
		}
	case 17:
		if len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:]) == 0 {
			return nil // no checksum
		}
		if c := Checksum(l4, pseudo); c != 0 {
			return fmt.Errorf("UDP checksum wrong (residue %#04x)", c)
		}
	case 1:
		if c := Checksum(l4, 0); c != 0 {
			return fmt.Errorf("ICMP checksum wrong (residue %#04x)", c)
		}
		// An error (unreachable, time exceeded, parameter problem) quotes a packet: its IPv4
		// header's checksum must hold too. (Its L4 checksum covers bytes the quote lacks.)
		if len(l4) >= 8+20 && (l4[0] == 3 || l4[0] == 11 || l4[0] == 12) {
			q := l4[8:]
			if qhl := int(q[0]&0x0f) * 4; qhl >= 20 && len(q) >= qhl {
				if c := Checksum(q[:qhl], 0); c != 0 {
					return fmt.Errorf("quoted IPv4 header checksum wrong (residue %#04x)", c)
				}
			}
		}
	case 132:
		if len(l4) < 12 {
			return fmt.Errorf("SCTP header truncated")
		}
		if got, want := binary.LittleEndian.Uint32(l4[8:]), SCTPChecksum(l4); got != want {
			return fmt.Errorf("SCTP CRC32c %#08x, want %#08x", got, want)
		}
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SCTPChecksum is the CRC32c of an SCTP packet (RFC 9260 appendix A), computed with its
// checksum field as zero, as it is stored: little endian.
func SCTPChecksum(sctp []byte) uint32 {
	b := append([]byte(nil), sctp...)
	b[8], b[9], b[10], b[11] = 0, 0, 0, 0
	return crc32.Checksum(b, castagnoli)
}

// SCTPInitTag is the Initiate Tag of SCTPFrame's INIT chunks (their first value bytes): the
// verification tag the answer carries.
const SCTPInitTag = 0x00070e15

// SCTPFrame is an Ethernet frame carrying an SCTP packet from src to dst with verification tag
// vtag and one chunk of type chunkType and payload bytes of chunk value, with valid checksums.
func SCTPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, vtag uint32, chunkType byte, payload int) []byte {
	chunkLen := 4 + payload
	sctp := make([]byte, 12+(chunkLen+3)&^3)
	binary.BigEndian.PutUint16(sctp[0:], src.Port())
	binary.BigEndian.PutUint16(sctp[2:], dst.Port())
	binary.BigEndian.PutUint32(sctp[4:], vtag)
	sctp[12] = chunkType
	binary.BigEndian.PutUint16(sctp[14:], uint16(chunkLen))
	for i := 0; i < payload; i++ {
		sctp[16+i] = byte(i * 7)
	}
	binary.LittleEndian.PutUint32(sctp[8:], SCTPChecksum(sctp))
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 132
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(sctp)))
	binary.BigEndian.PutUint16(ip[4:], 7)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip, 0))
	frame := append(append(append(append([]byte(nil), dstMAC...), srcMAC...), 0x08, 0x00), ip...)
	return append(frame, sctp...)
}

// VerifyIPv4Header checks only the IPv4 header checksum of an Ethernet frame.
func VerifyIPv4Header(frame []byte) error {
	l3 := 14
	if len(frame) >= 14 && binary.BigEndian.Uint16(frame[12:]) == 0x8100 {
		l3 = 18
	}
	if len(frame) < l3+20 {
		return fmt.Errorf("frame too short for IPv4")
	}
	ihl := int(frame[l3]&0x0f) * 4
	if ihl < 20 || len(frame) < l3+ihl {
		return fmt.Errorf("bad IHL")
	}
	if c := Checksum(frame[l3:l3+ihl], 0); c != 0 {
		return fmt.Errorf("IPv4 header checksum wrong (residue %#04x)", c)
	}
	return nil
}

// Decode parses a frame for readable test failures.
func Decode(frame []byte) gopacket.Packet {
	return gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
}

// Diff describes how got differs from want, field by field where it can.
func Diff(want, got []byte) string {
	if string(want) == string(got) {
		return ""
	}
	s := fmt.Sprintf("want %d bytes, got %d bytes\n", len(want), len(got))
	for i := 0; i < len(want) && i < len(got); i++ {
		if want[i] != got[i] {
			s += fmt.Sprintf("first difference at byte %d: want %#02x got %#02x\n", i, want[i], got[i])
			break
		}
	}
	s += "want: " + Decode(want).String() + "\ngot:  " + Decode(got).String()
	return s
}
