package pktgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Proto is an IP protocol number the generator sends.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto reads "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch s {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("parse protocol %q: want tcp or udp", s)
}

// MinSize is the shortest frame the generator sends: it rewrites the first MinSize bytes of
// every frame (TMPL_LEN in bpf/pktgen.c), so shorter templates get Ethernet padding.
const MinSize = 64

// MinSizeIPv6TCP is the shortest IPv6 TCP frame: its headers (74 bytes) do not fit MinSize,
// so the generator rewrites 80 (TMPL_LEN_LONG). IPv6 UDP fits MinSize.
const MinSizeIPv6TCP = 80

const (
	ethLen   = 14
	ipLen    = 20
	ip6Len   = 40
	l4Off    = ethLen + ipLen
	l4Off6   = ethLen + ip6Len
	tcpLen   = 20
	udpLen   = 8
	ipTTLDef = 64
)

// minSizeOf is the shortest frame the generator sends for a family and protocol.
func minSizeOf(ipv6 bool, p Proto) int {
	if ipv6 && p == TCP {
		return MinSizeIPv6TCP
	}
	return MinSize
}

// Frame describes a template: Ethernet, IPv4 without options or IPv6 without extension
// headers, then a TCP SYN or a UDP datagram, with correct lengths and checksums. The
// generator varies its source address (an IPv6 address's last 32 bits) and port per flow.
type Frame struct {
	SrcMAC, DstMAC net.HardwareAddr
	Src, Dst       netip.AddrPort
	Proto          Proto
	// Size is the frame's length without FCS; below MinSize (MinSizeIPv6TCP for IPv6 TCP), 0
	// included, means that. A UDP datagram fills it with zero payload; a TCP SYN carries none
	// and the rest is Ethernet padding, as a NIC pads short frames.
	Size int
	TTL  uint8 // 0 means 64
}

// Bytes builds the frame.
func (f Frame) Bytes() ([]byte, error) {
	if len(f.SrcMAC) != 6 || len(f.DstMAC) != 6 {
		return nil, errors.New("build frame: source and destination MAC addresses are required")
	}
	src, dst := f.Src.Addr(), f.Dst.Addr()
	ipv6 := src.Is6() && !src.Is4In6()
	if (!src.Is4() && !ipv6) || src.Is4() != dst.Is4() || dst.Is4In6() {
		return nil, fmt.Errorf("build frame: %v -> %v: want two IPv4 or two IPv6 addresses", f.Src, f.Dst)
	}
	size := max(f.Size, minSizeOf(ipv6, f.Proto))
	l3, off := ipLen, l4Off
	if ipv6 {
		l3, off = ip6Len, l4Off6
	}
	var l4 int
	switch f.Proto {
	case TCP:
		l4 = tcpLen
	case UDP:
		l4 = size - off
	default:
		return nil, fmt.Errorf("build frame: protocol %v: want tcp or udp", f.Proto)
	}
	if l4 > 65535-l3 {
		return nil, fmt.Errorf("build frame: size %d does not fit an IP packet", size)
	}
	ttl := f.TTL
	if ttl == 0 {
		ttl = ipTTLDef
	}
	b := make([]byte, size)
	copy(b[0:6], f.DstMAC)
	copy(b[6:12], f.SrcMAC)
	ip := b[ethLen : ethLen+l3]
	var pseudo uint32
	if ipv6 {
		binary.BigEndian.PutUint16(b[12:], 0x86dd)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(l4))
		ip[6] = uint8(f.Proto)
		ip[7] = ttl
		s, d := src.As16(), dst.As16()
		copy(ip[8:24], s[:])
		copy(ip[24:40], d[:])
		pseudo = sum16(s[:]) + sum16(d[:])
	} else {
		binary.BigEndian.PutUint16(b[12:], 0x0800)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(ipLen+l4))
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8] = ttl
		ip[9] = uint8(f.Proto)
		s, d := src.As4(), dst.As4()
		copy(ip[12:16], s[:])
		copy(ip[16:20], d[:])
		binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
		pseudo = sum16(s[:]) + sum16(d[:])
	}
	// RFC 8200's pseudo-header sums to the same as RFC 793's for lengths below 65536.
	pseudo += uint32(f.Proto) + uint32(l4)

	seg := b[off : off+l4]
	binary.BigEndian.PutUint16(seg[0:], f.Src.Port())
	binary.BigEndian.PutUint16(seg[2:], f.Dst.Port())
	if f.Proto == TCP {
		binary.BigEndian.PutUint32(seg[4:], 1) // sequence number
		seg[12] = 5 << 4                       // data offset: no options
		seg[13] = 0x02                         // SYN
		binary.BigEndian.PutUint16(seg[14:], 64240)
		binary.BigEndian.PutUint16(seg[16:], checksum(seg, pseudo))
	} else {
		binary.BigEndian.PutUint16(seg[4:], uint16(l4))
		c := checksum(seg, pseudo)
		if c == 0 {
			c = 0xffff // 0 would mean "no checksum"
		}
		binary.BigEndian.PutUint16(seg[6:], c)
	}
	return b, nil
}

// template is what the generator needs to know about a frame it was given.
type template struct {
	data  []byte // at least minSizeOf bytes
	ipv6  bool
	proto Proto
	src   netip.AddrPort
}

// parseTemplate checks that frame is a shape the BPF program rewrites correctly: untagged
// Ethernet, IPv4 without options and not a fragment or IPv6 without extension headers, TCP or
// UDP with a checksum.
func parseTemplate(frame []byte) (template, error) {
	if len(frame) < ethLen {
		return template{}, fmt.Errorf("parse template: %d bytes is too short for Ethernet", len(frame))
	}
	var t template
	var off int
	switch et := binary.BigEndian.Uint16(frame[12:]); et {
	case 0x0800:
		if len(frame) < l4Off+udpLen {
			return template{}, fmt.Errorf("parse template: %d bytes is too short for Ethernet, IPv4 and UDP", len(frame))
		}
		ip := frame[ethLen:]
		if ip[0] != 0x45 {
			return template{}, fmt.Errorf("parse template: version/IHL %#02x: want IPv4 without options (0x45)", ip[0])
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return template{}, errors.New("parse template: IPv4 fragment")
		}
		if checksum(ip[:ipLen], 0) != 0 {
			return template{}, errors.New("parse template: IPv4 header checksum is wrong (the generator updates it incrementally)")
		}
		t.proto, off = Proto(ip[9]), l4Off
		t.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), 0)
	case 0x86dd:
		if len(frame) < l4Off6+udpLen {
			return template{}, fmt.Errorf("parse template: %d bytes is too short for Ethernet, IPv6 and UDP", len(frame))
		}
		ip := frame[ethLen:]
		if ip[0]>>4 != 6 {
			return template{}, fmt.Errorf("parse template: version %d in an IPv6 EtherType", ip[0]>>4)
		}
		t.ipv6, t.proto, off = true, Proto(ip[6]), l4Off6
		t.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[8:24])), 0)
	default:
		return template{}, fmt.Errorf("parse template: EtherType %#04x: want untagged IPv4 or IPv6", et)
	}
	switch {
	case t.proto == UDP && t.ipv6 && binary.BigEndian.Uint16(frame[off+6:]) == 0:
		return template{}, errors.New("parse template: IPv6 UDP without a checksum")
	case t.proto == UDP:
	case t.proto == TCP && len(frame) >= off+tcpLen:
	default:
		return template{}, fmt.Errorf("parse template: protocol %v in %d bytes: want a whole TCP or UDP header (IPv6: no extension headers)", t.proto, len(frame))
	}
	t.src = netip.AddrPortFrom(t.src.Addr(), binary.BigEndian.Uint16(frame[off:]))
	t.data = frame
	if n := minSizeOf(t.ipv6, t.proto); len(t.data) < n {
		t.data = make([]byte, n)
		copy(t.data, frame)
	}
	return t, nil
}

// sum16 is the unfolded sum of b's big-endian 16-bit words (b has even length).
func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return s
}

// checksum is the Internet checksum (RFC 1071) of b, starting from the unfolded sum initial.
func checksum(b []byte, initial uint32) uint16 {
	s := initial + sum16(b)
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
