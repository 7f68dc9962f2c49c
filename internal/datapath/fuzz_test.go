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

// FuzzXDP runs random and mutated frames through the XDP program. Every frame must be passed
// untouched, dropped with a counted reason, refused with a well-formed RST or ICMP, or
// translated exactly as a connection-table entry says, with valid checksums. `make test` runs
// the seed corpus; `go test -fuzz FuzzXDP ./internal/datapath/` runs it for real.
func FuzzXDP(f *testing.F) {
	e := newEnv(f)
	e.sctpServices(f)
	for _, seed := range fuzzSeeds(e) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return // the kernel refuses test runs on less than an Ethernet header
		}
		before := e.reasons(t)
		in = bytes.Clone(in)
		ret, out := e.run(t, e.dp.Objs.SluiceXdp, true, in)
		if err := checkVerdict(e, in, ret, out, before, e.reasons(t)); err != nil {
			t.Fatalf("%v\ninput:  %s\noutput: %s", err, testutil.Decode(in), testutil.Decode(out))
		}
	})
}

func fuzzSeeds(e *env) [][]byte {
	var seeds [][]byte
	for _, port := range []uint16{30080, 30081, 30082, 30090, 22} {
		for _, proto := range []layers.IPProtocol{layers.IPProtocolTCP, layers.IPProtocolUDP} {
			p := e.fromClient(proto, 40000, port)
			p.SYN = proto == layers.IPProtocolTCP
			seeds = append(seeds, p.Bytes())
			p.VLAN = 7
			seeds = append(seeds, p.Bytes())
			p.VLAN, p.IPOptions = 0, ipOptions()
			seeds = append(seeds, p.Bytes())
			p.IPOptions, p.MoreFragments = nil, true
			seeds = append(seeds, p.Bytes())
		}
	}
	for _, port := range []uint16{30868, 30869, 30870} {
		for _, chunk := range []byte{sctpInit, sctpData} {
			seeds = append(seeds, testutil.SCTPFrame(clientMAC, e.nodeMAC, ap(clientIP, 40000), ap(nodeIP, port), sctpTag(chunk), chunk, 24))
		}
	}
	reply := e.fromClient(layers.IPProtocolTCP, 0, 0)
	reply.SrcMAC, reply.Src, reply.Dst, reply.ACK = backendMAC, ap(backendIP, 8080), ap(nodeIP, 61234), true
	return append(seeds, reply.Bytes(), []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0x45})
}

// tupleOf reads an IPv4 TCP/UDP frame's tuple the way the datapath does (IHL, not the options'
// contents, which the kernel checks later), or false for anything else. A first fragment has
// its ports; a later fragment has none (later: ports 0), and SCTP fragments are not read.
func tupleOf(frame []byte) (src, dst netip.AddrPort, proto uint8, ok bool) {
	src, dst, proto, later, ok := fragTupleOf(frame)
	return src, dst, proto, ok && !later
}

func fragTupleOf(frame []byte) (src, dst netip.AddrPort, proto uint8, later, ok bool) {
	l3 := 14
	if len(frame) < l3 {
		return
	}
	if et := binary.BigEndian.Uint16(frame[12:]); et == 0x8100 || et == 0x88a8 {
		if len(frame) < 18 {
			return
		}
		l3 = 18
	}
	if binary.BigEndian.Uint16(frame[l3-2:]) != 0x0800 || len(frame) < l3+20 {
		return
	}
	ip := frame[l3:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 {
		return
	}
	frag := binary.BigEndian.Uint16(ip[6:])
	proto = ip[9]
	if proto != 6 && proto != 17 && proto != 132 || proto == 132 && frag&0x3fff != 0 {
		return
	}
	s := netip.AddrFrom4([4]byte(ip[12:16]))
	d := netip.AddrFrom4([4]byte(ip[16:20]))
	if frag&0x1fff != 0 {
		return netip.AddrPortFrom(s, 0), netip.AddrPortFrom(d, 0), proto, true, true
	}
	if len(ip) < ihl+4 {
		return
	}
	l4 := ip[ihl:]
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4)), netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:])), proto, false, true
}

func checkVerdict(e *env, in []byte, ret uint32, out []byte, before, after map[maps.Reason]uint64) error {
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
		// The one rewrite passed to the stack: a new or known flow to the local backend.
		if _, dst, _, ok := tupleOf(out); !ok || dst != ap(podIP, 80) && dst != ap(podIP, 3868) {
			return fmt.Errorf("passed a rewritten frame that is no local-backend DNAT")
		}
		return checkTranslation(e, in, out)
	case xdpDrop:
		if counted {
			return nil
		}
		if src, dst, proto, ok := tupleOf(in); ok && proto == 6 && dst.Port() == 30090 && src.IsValid() {
			return nil // a RST to a service without endpoints: never answered
		}
		return errors.New("dropped without counting a reason")
	case xdpTX, xdpRedirect:
		if err := outChecksums(in, out); err != nil {
			return err
		}
		if after[datapath.SluiceReasonREASON_REJECT_TCP_RST] > before[datapath.SluiceReasonREASON_REJECT_TCP_RST] ||
			after[datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE] > before[datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE] {
			return nil // a refusal, built from scratch and checked above
		}
		return checkTranslation(e, in, out)
	}
	return fmt.Errorf("verdict %d", ret)
}

// checkTranslation checks that out is in rewritten as the connection table says (a later
// fragment: as its first fragment's flow, whose ports sluice_frags holds).
func checkTranslation(e *env, in, out []byte) error {
	src, dst, proto, later, ok := fragTupleOf(in)
	if !ok {
		return errors.New("rewrote a frame that is no IPv4 TCP/UDP packet")
	}
	if later {
		l3 := 14
		if et := binary.BigEndian.Uint16(in[12:]); et == 0x8100 || et == 0x88a8 {
			l3 = 18
		}
		fk := datapath.SluiceFragKey{Saddr: maps.Addr4(src.Addr()), Daddr: maps.Addr4(dst.Addr()),
			Id: binary.NativeEndian.Uint16(in[l3+4:]), Proto: proto}
		var ports datapath.SluiceFragPorts
		if err := e.dp.Objs.SluiceFrags.Lookup(&fk, &ports); err != nil {
			return fmt.Errorf("rewrote a later fragment of no known datagram: %w", err)
		}
		src = netip.AddrPortFrom(src.Addr(), maps.PortFrom16(ports.Sport))
		dst = netip.AddrPortFrom(dst.Addr(), maps.PortFrom16(ports.Dport))
	}
	var v datapath.SluiceCtEntry
	k := ctKey(src, dst, proto)
	if err := e.dp.Objs.SluiceCt.Lookup(&k, &v); err != nil {
		return fmt.Errorf("rewrote a packet of no known flow (%s -> %s): %w", src, dst, errors.Join(err, ebpf.ErrKeyNotExist))
	}
	osrc, odst, _, _, ok := fragTupleOf(out)
	want := [2]netip.AddrPort{netip.AddrPortFrom(maps.AddrFrom4(v.NatSaddr), maps.PortFrom16(v.NatSport)),
		netip.AddrPortFrom(maps.AddrFrom4(v.NatDaddr), maps.PortFrom16(v.NatDport))}
	if later { // no ports in the frame to compare
		want[0], want[1] = netip.AddrPortFrom(want[0].Addr(), 0), netip.AddrPortFrom(want[1].Addr(), 0)
	}
	if !ok || osrc != want[0] || odst != want[1] {
		return fmt.Errorf("rewrote %s -> %s to %s -> %s, the flow says %s -> %s", src, dst, osrc, odst, want[0], want[1])
	}
	return outChecksums(in, out)
}

// outChecksums: a rewritten frame's checksums are valid if the input's were. (The datapath
// refuses input with a bad IPv4 header checksum; a bad L4 checksum stays bad through an
// incremental update, as through any router, and the receiver drops it.)
func outChecksums(in, out []byte) error {
	if testutil.VerifyChecksums(in) != nil {
		if err := testutil.VerifyIPv4Header(out); err != nil {
			return fmt.Errorf("sent with a bad IPv4 header checksum: %w", err)
		}
		return nil
	}
	if err := testutil.VerifyChecksums(out); err != nil {
		return fmt.Errorf("valid input sent with bad checksums: %w", err)
	}
	return nil
}
