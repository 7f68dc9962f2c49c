package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket/layers"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/bench/xdpfwd"
	"github.com/sluicelb/sluice/tools/pktgen"
)

// Per-packet cost, measured by the kernel with BPF_PROG_TEST_RUN, of sluice's XDP program
// loaded with N services of B backends each (written by the agent's reconciler), next to a
// trivial XDP program (XDP_PASS) and the bare forwarder, all run the same way on the same
// frames in a namespace standing in for node1 (so bpf_fib_lookup answers as on a node).
//
// A test run with a repeat count runs the program again and again on the same buffer, so a
// frame the program rewrites is not the next run's input. The established-flow and reply
// cases therefore use connection-table entries whose translation is the frame itself (only
// the TTL changes: each call repeats 250 times from TTL 255), which do the whole work of
// those paths (prefilter, conntrack lookup, FIB lookup, rewrite, checksums, XDP_TX). A new
// flow cannot be repeated at all (the first run records it), so new flows are single-shot
// runs, each of a new flow to a random service, next to the trivial program run single-shot
// too: a single-shot run's time includes the kernel's timer overhead, which that reference
// shows.

const (
	xdpPass = 2
	xdpTX   = 3
)

var (
	ppNodeIP   = netip.MustParseAddr("10.89.0.11")
	ppClientIP = netip.MustParseAddr("10.89.0.10")
	ppGateway  = netip.MustParseAddr("10.89.0.1")
	ppGwMAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	ppCliMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
)

// ppNode is the namespace the programs run in: eth0 with node1's address, a default route
// via a gateway with a permanent neighbour entry, forwarding on.
type ppNode struct {
	ns      *testutil.Netns
	ifindex int
	mac     net.HardwareAddr
}

func newPPNode() (*ppNode, error) {
	ns, err := testutil.NewNetns(testutil.UniqueName("slbench-pp-"))
	if err != nil {
		return nil, err
	}
	n := &ppNode{ns: ns}
	cmds := [][]string{
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"},
		{"ip", "addr", "add", ppNodeIP.String() + "/24", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "link", "set", "peer0", "up"},
		{"ip", "route", "add", "default", "via", ppGateway.String()},
		{"ip", "neigh", "replace", ppGateway.String(), "lladdr", ppGwMAC.String(), "dev", "eth0", "nud", "permanent"},
		{"ip", "neigh", "replace", ppClientIP.String(), "lladdr", ppCliMAC.String(), "dev", "eth0", "nud", "permanent"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	}
	for _, c := range cmds {
		if _, err := ns.Exec(c...); err != nil {
			ns.Delete()
			return nil, err
		}
	}
	err = ns.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		n.ifindex, n.mac = ifc.Index, ifc.HardwareAddr
		return nil
	})
	if err != nil {
		ns.Delete()
		return nil, err
	}
	return n, nil
}

func (n *ppNode) close() { n.ns.Delete() }

// xdpMD mirrors struct xdp_md for the test run's context.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// progRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr: cilium/ebpf's Run does not
// return the kernel's duration when a context is given, so the syscall is made here.
type progRunAttr struct {
	ProgFD      uint32
	Retval      uint32
	DataSizeIn  uint32
	DataSizeOut uint32
	DataIn      uint64
	DataOut     uint64
	Repeat      uint32
	Duration    uint32
	CtxSizeIn   uint32
	CtxSizeOut  uint32
	CtxIn       uint64
	CtxOut      uint64
	Flags       uint32
	CPU         uint32
	BatchSize   uint32
	_           uint32
}

// testRun runs prog repeat times on frame as if it arrived on ifindex of the calling thread's
// namespace and returns the verdict and the kernel's mean time per run.
func testRun(prog *ebpf.Program, frame []byte, ifindex, repeat int) (uint32, time.Duration, error) {
	data := slices.Clone(frame)
	ctx := xdpMD{DataEnd: uint32(len(data)), IngressIfindex: uint32(ifindex)}
	attr := progRunAttr{
		ProgFD:     uint32(prog.FD()),
		DataSizeIn: uint32(len(data)),
		DataIn:     uint64(uintptr(unsafe.Pointer(&data[0]))),
		Repeat:     uint32(repeat),
		CtxSizeIn:  uint32(unsafe.Sizeof(ctx)),
		CtxIn:      uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(data)
		runtime.KeepAlive(&ctx)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
		}
		return attr.Retval, time.Duration(attr.Duration), nil
	}
}

// measure runs prog calls times with repeat runs each and returns the mean kernel time per
// run, checking every verdict.
func measure(prog *ebpf.Program, frame []byte, ifindex, calls, repeat int, want uint32) (float64, error) {
	var total time.Duration
	for i := 0; i < calls; i++ {
		ret, d, err := testRun(prog, frame, ifindex, repeat)
		if err != nil {
			return 0, err
		}
		if ret != want {
			return 0, fmt.Errorf("verdict %d, want %d", ret, want)
		}
		total += d * time.Duration(repeat)
	}
	return float64(total.Nanoseconds()) / float64(calls*repeat), nil
}

// medianOf runs fn n times and returns the median.
func medianOf(n int, fn func() (float64, error)) (float64, error) {
	var vs []float64
	for i := 0; i < n; i++ {
		v, err := fn()
		if err != nil {
			return 0, err
		}
		vs = append(vs, v)
	}
	return median(vs), nil
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func trivialProg() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_trivial", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
	})
}

// ppFrames builds the frames: a client's TCP segment to port 22 of the node (not a frontend:
// the miss), and the self-translating established flow's segment to a backend.
type ppFrames struct{ miss, est, reply []byte }

func (n *ppNode) frames(backend netip.Addr) ppFrames {
	pkt := func(src, dst netip.AddrPort, ttl uint8) []byte {
		return testutil.Pkt{SrcMAC: ppCliMAC, DstMAC: n.mac, Proto: layers.IPProtocolTCP, Src: src, Dst: dst,
			ACK: true, TTL: ttl, IPID: 7, Window: 64240, Payload: []byte("sluice bench")}.Bytes()
	}
	return ppFrames{
		miss:  pkt(netip.AddrPortFrom(ppClientIP, 40000), netip.AddrPortFrom(ppNodeIP, 22), 64),
		est:   pkt(netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend, 20000), 255),
		reply: pkt(netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend, 20001), 255),
	}
}

// selfFlow records a connection-table entry that translates the frame's tuple to itself.
func selfFlow(m *ebpf.Map, src, dst netip.AddrPort, flags uint8) error {
	key := datapath.SluiceCtKey{Saddr: maps.Addr4(src.Addr()), Daddr: maps.Addr4(dst.Addr()),
		Sport: maps.Port16(src.Port()), Dport: maps.Port16(dst.Port()), Proto: 6}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	val := datapath.SluiceCtEntry{NatSaddr: key.Saddr, NatDaddr: key.Daddr, NatSport: key.Sport, NatDport: key.Dport,
		SvcId: 1, BackendId: 1, Flags: flags, LastSeen: uint64(ts.Nano())}
	return m.Update(&key, &val, ebpf.UpdateAny)
}

func clearCT(m *ebpf.Map) error {
	var keys []datapath.SluiceCtKey
	var k datapath.SluiceCtKey
	var v datapath.SluiceCtEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list connection table: %w", err)
	}
	for _, k := range keys {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear connection table: %w", err)
		}
	}
	return nil
}

// perPacketConfig sizes the maps alike for every point, for the largest one.
func perPacketConfig() datapath.Config {
	return datapath.Config{MaxServices: 131072, MaxFrontends: 131072,
		MaxBackends: 1<<20 + 1<<16, MaxSlots: 1<<20 + 1<<16}
}

// ppState is n services of b remote backends each: service i is UDP (even i) or TCP (odd i)
// on NodePort 10000+i/2 of the node's address, its backends 10.64.0.0 onwards, port 8080.
func ppState(n, b int) desired.State {
	st := desired.State{Addresses: []netip.Addr{ppNodeIP}, Services: make(map[desired.ServiceKey]*desired.Service, n)}
	for i := 0; i < n; i++ {
		bs := make([]lb.Backend, b)
		for j := range bs {
			k := i*b + j
			bs[j] = lb.Backend{Addr: netip.AddrFrom4([4]byte{10, byte(64 + k>>16), byte(k >> 8), byte(k)}), Port: 8080}
		}
		proto := lb.UDP
		if i%2 == 1 {
			proto = lb.TCP
		}
		key := desired.ServiceKey{NodePort: uint16(10000 + i/2), Proto: proto}
		st.Services[key] = &desired.Service{Key: key, Name: fmt.Sprintf("bench/s%d:p", i), Port: 80, Backends: bs}
	}
	return st
}

type ppSamples struct {
	Rounds, Calls, Repeat, SingleShots int
}

func (s ppSamples) m() map[string]int {
	return map[string]int{"rounds": s.Rounds, "callsPerRound": s.Calls, "repeatPerCall": s.Repeat, "singleShotsPerRound": s.SingleShots}
}

// runPerPacket measures every (services, backends) point where services*backends fits the
// maps (1M backends).
func runPerPacket(ctx context.Context, cfg *config) (*PerPacket, error) {
	s := ppSamples{Rounds: 5, Calls: 2000, Repeat: 250, SingleShots: 2000}
	if cfg.quick {
		s = ppSamples{Rounds: 3, Calls: 400, Repeat: 250, SingleShots: 1000}
	}
	node, err := newPPNode()
	if err != nil {
		return nil, err
	}
	defer node.close()
	res := &PerPacket{Samples: s.m(), Method: "BPF_PROG_TEST_RUN, kernel-timed; repeat runs on one frame for trivial, bare, miss, established, reply; single-shot runs for new flows (and a single-shot trivial reference)"}

	trivial, err := trivialProg()
	if err != nil {
		return nil, fmt.Errorf("load trivial program: %w", err)
	}
	defer trivial.Close()
	backend0 := netip.AddrFrom4([4]byte{10, 64, 0, 0})
	fr := node.frames(backend0)
	fwd, err := xdpfwd.Load([]xdpfwd.Rule{{Dst: backend0, DstMAC: ppGwMAC, SrcMAC: node.mac}})
	if err != nil {
		return nil, err
	}
	defer fwd.Close()

	err = node.ns.Do(func() error {
		rel, err := pktgen.HoldInDispatcher(trivial)
		if err != nil {
			return err
		}
		defer rel()
		if res.TrivialNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(trivial, fr.miss, node.ifindex, s.Calls/10, s.Repeat*100, xdpPass)
		}); err != nil {
			return fmt.Errorf("trivial: %w", err)
		}
		if res.TrivialSingleNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(trivial, fr.miss, node.ifindex, s.SingleShots, 1, xdpPass)
		}); err != nil {
			return fmt.Errorf("trivial single-shot: %w", err)
		}
		rel2, err := pktgen.HoldInDispatcher(fwd.Program())
		if err != nil {
			return err
		}
		defer rel2()
		if res.BareNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(fwd.Program(), fr.est, node.ifindex, s.Calls, s.Repeat, xdpTX)
		}); err != nil {
			return fmt.Errorf("bare forwarder: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	logf("per-packet: trivial %.1f ns (single-shot %.1f ns), bare forwarder %.1f ns", res.TrivialNs, res.TrivialSingleNs, res.BareNs)

	for _, n := range cfg.perPktServices {
		for _, b := range cfg.perPktBackends {
			if n*b > 1<<20 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			p, err := perPacketPoint(node, n, b, s, fr, trivial)
			if err != nil {
				return nil, fmt.Errorf("per-packet cost with %d services x %d backends: %w", n, b, err)
			}
			logf("per-packet: %6d services x %3d backends: programmed in %.2fs; new flow %.0f ns (one service: %.0f ns), established %.1f ns, reply %.1f ns, miss %.1f ns (trivial %.1f ns)",
				n, b, p.ApplySecs, p.NewFlowNs, p.NewFlowOneNs, p.EstablishedNs, p.ReplyNs, p.MissNs, p.TrivialNs)
			res.Points = append(res.Points, p)
		}
	}
	// IPv6 beside IPv4 at one point: 1,000 services of 10 backends in each family.
	if err := node.addIPv6(); err != nil {
		return nil, fmt.Errorf("give the node IPv6: %w", err)
	}
	if res.IPv6, err = perPacketIPv6(node, 1000, 10, s); err != nil {
		return nil, fmt.Errorf("per-packet cost in IPv6: %w", err)
	}
	for _, c := range res.IPv6.Cases {
		logf("per-packet, 1000 services x 10 backends: %s: IPv4 %.1f ns, IPv6 %.1f ns (%.2fx)", c.Case, c.IPv4Ns, c.IPv6Ns, c.IPv6Ns/c.IPv4Ns)
	}
	return res, nil
}

func perPacketPoint(node *ppNode, n, b int, s ppSamples, fr ppFrames, trivial *ebpf.Program) (*PerPktPoint, error) {
	cfg := perPacketConfig()
	dp, err := datapath.Load(cfg, nil)
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	k := maps.NewKernel(&dp.Objs.SluiceMaps)
	r := reconciler.New(k, cfg.MaxServices, cfg.MaxBackends, zap.NewNop())
	st := ppState(n, b)
	start := time.Now()
	if err := r.Apply(st); err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	p := &PerPktPoint{Services: n, Backends: b, ApplySecs: time.Since(start).Seconds()}
	fes, err := k.Frontends()
	if err != nil {
		return nil, err
	}
	if len(fes) != n {
		return nil, fmt.Errorf("%d frontends programmed, want %d", len(fes), n)
	}
	backend0 := netip.AddrFrom4([4]byte{10, 64, 0, 0})
	if err := selfFlow(dp.Objs.SluiceCt, netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend0, 20000), 0x01); err != nil {
		return nil, fmt.Errorf("write established flow: %w", err)
	}
	// Both pass the prefilter as a remote backend's replies do: a SNAT-range destination port
	// from a backend's port (8080).
	if err := selfFlow(dp.Objs.SluiceCt, netip.AddrPortFrom(ppClientIP, 8080), netip.AddrPortFrom(backend0, 20001), 0x01|0x08); err != nil {
		return nil, fmt.Errorf("write reply flow: %w", err)
	}
	prog := dp.Objs.SluiceXdp
	err = node.ns.Do(func() error {
		rel, err := pktgen.HoldInDispatcher(prog)
		if err != nil {
			return err
		}
		defer rel()
		rel2, err := pktgen.HoldInDispatcher(trivial)
		if err != nil {
			return err
		}
		defer rel2()
		if p.TrivialNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(trivial, fr.miss, node.ifindex, s.Calls/10, s.Repeat*100, xdpPass)
		}); err != nil {
			return fmt.Errorf("trivial: %w", err)
		}
		if p.MissNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(prog, fr.miss, node.ifindex, s.Calls/10, s.Repeat*100, xdpPass)
		}); err != nil {
			return fmt.Errorf("miss: %w", err)
		}
		if p.EstablishedNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(prog, fr.est, node.ifindex, s.Calls, s.Repeat, xdpTX)
		}); err != nil {
			return fmt.Errorf("established: %w", err)
		}
		if p.ReplyNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(prog, fr.reply, node.ifindex, s.Calls, s.Repeat, xdpTX)
		}); err != nil {
			return fmt.Errorf("reply: %w", err)
		}
		if p.TrivialOneNs, err = medianOf(s.Rounds, func() (float64, error) {
			return measure(trivial, fr.miss, node.ifindex, s.SingleShots, 1, xdpPass)
		}); err != nil {
			return fmt.Errorf("trivial single-shot: %w", err)
		}
		// New flows: UDP from a new source port each, to a random UDP service (even index),
		// and to one service always (the same lookups, on entries that stay in the caches).
		udpServices := (n + 1) / 2
		rng := rand.New(rand.NewPCG(uint64(n), uint64(b)))
		flow := 0
		newFlows := func(random bool) (float64, error) {
			// Each round from an empty connection table: SNAT ports to a backend stay mostly
			// free (with one backend, every flow takes one of its 28976).
			if err := clearCT(dp.Objs.SluiceCt); err != nil {
				return 0, err
			}
			frames := make([][]byte, s.SingleShots)
			for i := range frames {
				svc := udpServices / 2
				if random {
					svc = rng.IntN(udpServices)
				}
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 89, 1 + byte(flow/60000), 0}), uint16(1024+flow%60000))
				flow++
				frames[i] = testutil.Pkt{SrcMAC: ppCliMAC, DstMAC: node.mac, Proto: layers.IPProtocolUDP, Src: src,
					Dst: netip.AddrPortFrom(ppNodeIP, uint16(10000+svc)), TTL: 64, IPID: 7, Payload: []byte("sluice bench")}.Bytes()
			}
			var total time.Duration
			for i, frame := range frames {
				ret, d, err := testRun(prog, frame, node.ifindex, 1)
				if err != nil {
					return 0, err
				}
				if ret != xdpTX {
					return 0, fmt.Errorf("new flow %d: verdict %d, want XDP_TX", i, ret)
				}
				total += d
			}
			return float64(total.Nanoseconds()) / float64(len(frames)), nil
		}
		if p.NewFlowNs, err = medianOf(s.Rounds, func() (float64, error) { return newFlows(true) }); err != nil {
			return fmt.Errorf("new flow: %w", err)
		}
		if p.NewFlowOneNs, err = medianOf(s.Rounds, func() (float64, error) { return newFlows(false) }); err != nil {
			return fmt.Errorf("new flow to one service: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	reasons, err := k.Reasons()
	if err != nil {
		return nil, err
	}
	for r, v := range reasons {
		if name := maps.ReasonNames[r]; v != 0 && strings.HasPrefix(name, "drop_") {
			return nil, fmt.Errorf("the datapath counted %d packets %s", v, name)
		}
	}
	return p, nil
}
