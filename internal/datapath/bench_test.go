package datapath_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
)

// Per-packet cost of the XDP program, measured in the kernel by BPF_PROG_TEST_RUN, next to a
// trivial XDP program (the floor). `make bench` runs these; they are not tests.
//
// BPF_PROG_TEST_RUN repeats on the same buffer, so a packet the program rewrites is not the
// input of the next run. The established-flow case therefore uses a flow whose translation is
// itself (a conntrack reply entry mapping client:8080->backend:20000 onto the same tuple): every run does the full work (prefilter, lookup, FIB, rewrite, checksums, redirect)
// and only the TTL changes, so each call runs 250 times from TTL 255 with a fresh packet. Without a context the test run's
// device is loopback, so the FIB sends the packet to eth0 by XDP_REDIRECT instead of XDP_TX.

const xdpRedirect = 4

func trivialXDP(b *testing.B) *ebpf.Program {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// benchProg runs prog calls x perCall times on pkt and reports the kernel's time per run. A
// BPF_PROG_TEST_RUN call costs ~20 ms of setup whatever its repeat count, so the number of runs
// is fixed here rather than scaled by b.N; run with -benchtime 1x.
func benchProg(b *testing.B, e *env, prog *ebpf.Program, pkt []byte, want uint32, calls, perCall int) {
	var total time.Duration
	runs := 0
	err := e.ns.Do(func() error {
		for i := 0; i < calls; i++ {
			ret, d, err := prog.Benchmark(pkt, perCall, nil)
			if err != nil {
				return err
			}
			if ret != want {
				return fmt.Errorf("verdict %d, want %d", ret, want)
			}
			total += d * time.Duration(perCall)
			runs += perCall
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(runs), "ns/pkt")
	b.ReportMetric(0, "ns/op")
}

func BenchmarkXDP(b *testing.B) {
	e := newEnv(b)
	nat := maps.Port16(20000)
	// A tuple from the client to the backend's address on a SNAT port: past the prefilter, and
	// routable (a node address would be delivered locally, not forwarded).
	key := datapath.SluiceCtKey{Saddr: maps.Addr4(clientIP), Daddr: maps.Addr4(backendIP), Sport: maps.Port16(8080), Dport: nat, Proto: 6}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	val := datapath.SluiceCtEntry{NatSaddr: key.Saddr, NatDaddr: key.Daddr, NatSport: key.Sport, NatDport: key.Dport,
		SvcId: 1, BackendId: 1, Flags: 0x01 | 0x08 /* ingress, reply */, LastSeen: uint64(ts.Nano())}
	if err := e.dp.Objs.SluiceCt.Update(&key, &val, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	// The test run's device is loopback: eth0 must be a known XDP redirect target.
	idx, native := uint32(e.ifindex), uint32(1)
	if err := e.dp.Objs.SluiceDevices.Update(&idx, &native, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	established := e.fromClient(layers.IPProtocolTCP, 20000, 8080)
	established.Src, established.Dst = ap(clientIP, 8080), ap(backendIP, 20000)
	established.ACK, established.TTL = true, 255
	miss := e.fromClient(layers.IPProtocolTCP, 40000, 22)
	miss.ACK = true

	b.Run("trivial", func(b *testing.B) { benchProg(b, e, trivialXDP(b), miss.Bytes(), xdpPass, 20, 100000) })
	b.Run("miss", func(b *testing.B) { benchProg(b, e, e.dp.Objs.SluiceXdp, miss.Bytes(), xdpPass, 20, 100000) })
	b.Run("established", func(b *testing.B) {
		benchProg(b, e, e.dp.Objs.SluiceXdp, established.Bytes(), xdpRedirect, 200, 250)
	})
}
