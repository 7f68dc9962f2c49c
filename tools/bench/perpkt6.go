package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/pktgen"
)

// IPv6 beside IPv4, per packet: the same services (IPv6 ones: the node's IPv6 address, IPv6
// backends) in the same datapath, the same frames but for the family, run through the same
// XDP program (the IPv4 one attached, which hands IPv6 packets to the IPv6 programs by tail
// call), measured alike in the same rounds. What IPv6 costs more is its longer addresses,
// its extension-header walk, and the hand-off (one tail call; a second for a new flow).

var (
	ppNodeIP6   = netip.MustParseAddr("fd00:89::11")
	ppClientIP6 = netip.MustParseAddr("fd00:89::10")
	ppGateway6  = netip.MustParseAddr("fd00:89::1")
	ppBackend6  = netip.MustParseAddr("fd00:64::")
)

// addIPv6 gives the per-packet node its IPv6 side, as newPPNode its IPv4 one.
func (n *ppNode) addIPv6() error {
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "-6", "addr", "add", ppNodeIP6.String() + "/64", "dev", "eth0", "nodad"},
		{"ip", "-6", "route", "add", "default", "via", ppGateway6.String()},
		{"ip", "-6", "neigh", "replace", ppGateway6.String(), "lladdr", ppGwMAC.String(), "dev", "eth0", "nud", "permanent"},
		{"ip", "-6", "neigh", "replace", ppClientIP6.String(), "lladdr", ppCliMAC.String(), "dev", "eth0", "nud", "permanent"},
	} {
		if _, err := n.ns.Exec(c...); err != nil {
			return err
		}
	}
	return nil
}

// ppState6 is ppState's services in IPv6 (backends fd00:64:: onwards).
func ppState6(n, b int) desired.State {
	st := desired.State{Addresses: []netip.Addr{ppNodeIP6}, Services: make(map[desired.ServiceKey]*desired.Service, n)}
	for i := 0; i < n; i++ {
		bs := make([]lb.Backend, b)
		for j := range bs {
			k := i*b + j
			a := ppBackend6.As16()
			a[13], a[14], a[15] = byte(k>>16), byte(k>>8), byte(k)
			bs[j] = lb.Backend{Addr: netip.AddrFrom16(a), Port: 8080}
		}
		proto := lb.UDP
		if i%2 == 1 {
			proto = lb.TCP
		}
		key := desired.ServiceKey{NodePort: uint16(10000 + i/2), Proto: proto, Family: lb.IPv6}
		st.Services[key] = &desired.Service{Key: key, Name: fmt.Sprintf("bench/s%d:p", i), Port: 80, Backends: bs}
	}
	return st
}

// selfFlow6 is selfFlow in the IPv6 connection table.
func selfFlow6(m *ebpf.Map, src, dst netip.AddrPort, flags uint8) error {
	key := datapath.Sluice6CtKey{Saddr: maps.Addr6(src.Addr()), Daddr: maps.Addr6(dst.Addr()),
		Sport: maps.Port16(src.Port()), Dport: maps.Port16(dst.Port()), Proto: 6}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	val := datapath.Sluice6CtEntry{NatSaddr: key.Saddr, NatDaddr: key.Daddr, NatSport: key.Sport, NatDport: key.Dport,
		SvcId: 1, BackendId: 1, Flags: flags, LastSeen: uint64(ts.Nano())}
	return m.Update(&key, &val, ebpf.UpdateAny)
}

// perPacketIPv6 measures n services of b backends in both families, side by side.
func perPacketIPv6(node *ppNode, n, b int, s ppSamples) (*PerPkt6, error) {
	cfg := perPacketConfig()
	dp, err := datapath.Load(cfg, nil)
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	v6, err := dp.LoadIPv6()
	if err != nil {
		return nil, err
	}
	defer v6.Close()
	k := maps.NewKernel(&dp.Objs.SluiceMaps).WithIPv6(&v6.Objs.Sluice6Maps)
	r := reconciler.New(k, cfg.MaxServices, cfg.MaxBackends, zap.NewNop())
	st, st6 := ppState(n, b), ppState6(n, b)
	for key, svc := range st6.Services {
		st.Services[key] = svc
	}
	st.Addresses = append(st.Addresses, ppNodeIP6)
	if err := r.Apply(st); err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	backend4 := netip.AddrFrom4([4]byte{10, 64, 0, 0})
	for _, f := range []struct {
		v6        bool
		src, dst  netip.AddrPort
		flags     uint8
		what      string
		writeFlow func(*ebpf.Map, netip.AddrPort, netip.AddrPort, uint8) error
		m         *ebpf.Map
	}{
		{false, netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend4, 20000), 0x01, "IPv4 established", selfFlow, dp.Objs.SluiceCt},
		{false, netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend4, 20001), 0x01 | 0x08, "IPv4 reply", selfFlow, dp.Objs.SluiceCt},
		{true, netip.AddrPortFrom(ppClientIP6, 8080), netip.AddrPortFrom(ppBackend6, 20000), 0x01, "IPv6 established", selfFlow6, v6.Objs.SluiceCt6},
		{true, netip.AddrPortFrom(ppClientIP6, 8080), netip.AddrPortFrom(ppBackend6, 20001), 0x01 | 0x08, "IPv6 reply", selfFlow6, v6.Objs.SluiceCt6},
	} {
		if err := f.writeFlow(f.m, f.src, f.dst, f.flags); err != nil {
			return nil, fmt.Errorf("write %s flow: %w", f.what, err)
		}
	}
	frame := func(src, dst netip.AddrPort, proto layers.IPProtocol, ttl uint8) []byte {
		p := testutil.Pkt{SrcMAC: ppCliMAC, DstMAC: node.mac, Proto: proto, Src: src, Dst: dst, TTL: ttl, Window: 64240, Payload: []byte("sluice bench")}
		if proto == layers.IPProtocolTCP {
			p.ACK = true
		}
		if src.Addr().Is4() {
			p.IPID = 7
		}
		return p.Bytes()
	}
	tcp := layers.IPProtocolTCP
	cases := []struct {
		name       string
		f4, f6     []byte
		want       uint32
		calls, rep int
	}{
		{"miss", frame(netip.AddrPortFrom(ppClientIP, 40000), netip.AddrPortFrom(ppNodeIP, 22), tcp, 64),
			frame(netip.AddrPortFrom(ppClientIP6, 40000), netip.AddrPortFrom(ppNodeIP6, 22), tcp, 64), xdpPass, s.Calls / 10, s.Repeat * 100},
		{"established", frame(netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend4, 20000), tcp, 255),
			frame(netip.AddrPortFrom(ppClientIP6, 8080), netip.AddrPortFrom(ppBackend6, 20000), tcp, 255), xdpTX, s.Calls, s.Repeat},
		{"reply", frame(netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend4, 20001), tcp, 255),
			frame(netip.AddrPortFrom(ppClientIP6, 8080), netip.AddrPortFrom(ppBackend6, 20001), tcp, 255), xdpTX, s.Calls, s.Repeat},
	}
	res := &PerPkt6{Services: n, Backends: b}
	prog := dp.Objs.SluiceXdp
	err = node.ns.Do(func() error {
		rel, err := pktgen.HoldInDispatcher(prog)
		if err != nil {
			return err
		}
		defer rel()
		for _, c := range cases {
			var ns [2]float64
			for i, fr := range [][]byte{c.f4, c.f6} {
				if ns[i], err = medianOf(s.Rounds, func() (float64, error) { return measure(prog, fr, node.ifindex, c.calls, c.rep, c.want) }); err != nil {
					return fmt.Errorf("%s (IPv%d): %w", c.name, 4+2*i, err)
				}
			}
			res.Cases = append(res.Cases, PerPkt6Case{Case: c.name, IPv4Ns: ns[0], IPv6Ns: ns[1]})
		}
		// New flows: UDP from a new source each, over the UDP services in turn, single-shot,
		// IPv4's and IPv6's interleaved.
		udpServices := (n + 1) / 2
		var total [2]time.Duration
		for i := 0; i < s.SingleShots; i++ {
			svc := uint16(10000 + i%udpServices)
			src4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 89, 1 + byte(i/60000), 0}), uint16(1024+i%60000))
			a := ppClientIP6.As16()
			a[12], a[13] = byte(i>>8), byte(i)
			src6 := netip.AddrPortFrom(netip.AddrFrom16(a), uint16(1024+i%60000))
			for j, fr := range [][]byte{
				frame(src4, netip.AddrPortFrom(ppNodeIP, svc), layers.IPProtocolUDP, 64),
				frame(src6, netip.AddrPortFrom(ppNodeIP6, svc), layers.IPProtocolUDP, 64),
			} {
				ret, d, err := testRun(prog, fr, node.ifindex, 1)
				if err != nil {
					return err
				}
				if ret != xdpTX {
					return fmt.Errorf("new flow %d (IPv%d): verdict %d, want XDP_TX", i, 4+2*j, ret)
				}
				total[j] += d
			}
		}
		res.Cases = append(res.Cases, PerPkt6Case{Case: "new flow (single-shot)",
			IPv4Ns: float64(total[0].Nanoseconds()) / float64(s.SingleShots), IPv6Ns: float64(total[1].Nanoseconds()) / float64(s.SingleShots)})
		return nil
	})
	return res, err
}
