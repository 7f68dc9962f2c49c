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

const (
	ethLen   = 14
	ipLen    = 20
	l4Off    = ethLen + ipLen
	tcpLen   = 20
	udpLen   = 8
	ipTTLDef = 64
)

// Frame describes a template: Ethernet, IPv4 without options, then a TCP SYN or a UDP
// datagram, with correct lengths and checksums. The generator varies its source address and
// port per flow.
type Frame struct {
	SrcMAC, DstMAC net.HardwareAddr
	Src, Dst       netip.AddrPort
	Proto          Proto
	// Size is the frame's length without FCS; below MinSize (0 included) means MinSize. A UDP
	// datagram fills it with zero payload; a TCP SYN carries none and the rest is Ethernet
	// padding, as a NIC pads short frames.
	Size int
	TTL  uint8 // 0 means 64
}

// Bytes builds the frame.
func (f Frame) Bytes() ([]byte, error) {
	if len(f.SrcMAC) != 6 || len(f.DstMAC) != 6 {
		return nil, errors.New("build frame: source and destination MAC addresses are required")
	}
	if !f.Src.Addr().Is4() || !f.Dst.Addr().Is4() {
		return nil, fmt.Errorf("build frame: %v -> %v: only IPv4 is supported", f.Src, f.Dst)
	}
	size := max(f.Size, MinSize)
	var l4 int
	switch f.Proto {
	case TCP:
		l4 = tcpLen
	case UDP:
		l4 = size - l4Off
	default:
		return nil, fmt.Errorf("build frame: protocol %v: want tcp or udp", f.Proto)
	}
	if ipLen+l4 > 65535 {
		return nil, fmt.Errorf("build frame: size %d does not fit an IPv4 packet", size)
	}
	ttl := f.TTL
	if ttl == 0 {
		ttl = ipTTLDef
	}
	b := make([]byte, size)
	copy(b[0:6], f.DstMAC)
	copy(b[6:12], f.SrcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)

	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen+l4))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = ttl
	ip[9] = uint8(f.Proto)
	src, dst := f.Src.Addr().As4(), f.Dst.Addr().As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))

	seg := b[l4Off : l4Off+l4]
	binary.BigEndian.PutUint16(seg[0:], f.Src.Port())
	binary.BigEndian.PutUint16(seg[2:], f.Dst.Port())
	pseudo := sum16(src[:]) + sum16(dst[:]) + uint32(f.Proto) + uint32(l4)
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
	data  []byte // at least MinSize bytes
	proto Proto
	src   netip.AddrPort
}

// parseTemplate checks that frame is a shape the BPF program rewrites correctly: untagged
// Ethernet, IPv4 without options and not a fragment, TCP or UDP.
func parseTemplate(frame []byte) (template, error) {
	if len(frame) < l4Off+udpLen {
		return template{}, fmt.Errorf("parse template: %d bytes is too short for Ethernet, IPv4 and UDP", len(frame))
	}
	if et := binary.BigEndian.Uint16(frame[12:]); et != 0x0800 {
		return template{}, fmt.Errorf("parse template: EtherType %#04x: want untagged IPv4", et)
	}
	ip := frame[ethLen:]
	if ip[0] != 0x45 {
		return template{}, fmt.Errorf("parse template: version/IHL %#02x: want IPv4 without options (0x45)", ip[0])
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return template{}, errors.New("parse template: IPv4 fragment")
	}
	p := Proto(ip[9])
	switch {
	case p == UDP:
	case p == TCP && len(frame) >= l4Off+tcpLen:
	default:
		return template{}, fmt.Errorf("parse template: protocol %v in %d bytes: want a whole TCP or UDP header", p, len(frame))
	}
	if checksum(ip[:ipLen], 0) != 0 {
		return template{}, errors.New("parse template: IPv4 header checksum is wrong (the generator updates it incrementally)")
	}
	data := frame
	if len(data) < MinSize {
		data = make([]byte, MinSize)
		copy(data, frame)
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(frame[l4Off:]))
	return template{data: data, proto: p, src: src}, nil
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
