package pktgen_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/pktgen"
)

// pair is two namespaces joined by a veth: tx0 in tx, rx0 in rx. Two queues each way, so
// two senders each have a receive ring of their own on the far side.
type pair struct {
	tx, rx       *testutil.Netns
	txIf, rxIf   int
	txMAC, rxMAC net.HardwareAddr
	txLo         int
}

func newPair(t testing.TB) *pair {
	t.Helper()
	testutil.RequirePrivileges(t)
	p := &pair{tx: testutil.NewTestNetns(t, "pgtx-"), rx: testutil.NewTestNetns(t, "pgrx-")}
	// No IPv6: its router solicitations and MLD reports would reach the sink and be counted.
	for _, ns := range []*testutil.Netns{p.tx, p.rx} {
		ns.MustExec(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	p.tx.MustExec(t, "ip", "link", "add", "tx0", "numtxqueues", "2", "numrxqueues", "2", "type", "veth",
		"peer", "name", "rx0", "numtxqueues", "2", "numrxqueues", "2", "netns", p.rx.Name)
	p.tx.MustExec(t, "ip", "link", "set", "tx0", "up")
	p.rx.MustExec(t, "ip", "link", "set", "rx0", "up")
	lookup := func(ns *testutil.Netns, name string) (int, net.HardwareAddr) {
		var idx int
		var mac net.HardwareAddr
		err := ns.Do(func() error {
			ifc, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			idx, mac = ifc.Index, ifc.HardwareAddr
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return idx, mac
	}
	p.txIf, p.txMAC = lookup(p.tx, "tx0")
	p.rxIf, p.rxMAC = lookup(p.rx, "rx0")
	p.txLo, _ = lookup(p.tx, "lo")
	return p
}

var (
	srcAddr = netip.MustParseAddr("10.70.0.1")
	dst     = netip.MustParseAddrPort("10.70.0.100:8080")
)

func (p *pair) template(t testing.TB, proto pktgen.Proto, size int) []byte {
	t.Helper()
	b, err := pktgen.Frame{SrcMAC: p.txMAC, DstMAC: p.rxMAC, Src: netip.AddrPortFrom(srcAddr, 10000),
		Dst: dst, Proto: proto, Size: size}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Frame builds what testutil.Pkt (gopacket) builds, byte for byte, padding aside.
func TestFrameMatchesTestutil(t *testing.T) {
	src, dstMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	from := netip.MustParseAddrPort("192.0.2.1:40000")
	for _, tc := range []struct {
		proto pktgen.Proto
		size  int
		pkt   testutil.Pkt
	}{
		{pktgen.UDP, 0, testutil.Pkt{Proto: layers.IPProtocolUDP, Payload: make([]byte, pktgen.MinSize-42)}},
		{pktgen.UDP, 1500, testutil.Pkt{Proto: layers.IPProtocolUDP, Payload: make([]byte, 1500-42)}},
		{pktgen.TCP, 0, testutil.Pkt{Proto: layers.IPProtocolTCP, SYN: true, Seq: 1, Window: 64240}},
	} {
		t.Run(fmt.Sprintf("%v-%d", tc.proto, tc.size), func(t *testing.T) {
			got, err := pktgen.Frame{SrcMAC: src, DstMAC: dstMAC, Src: from, Dst: dst, Proto: tc.proto, Size: tc.size}.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			pkt := tc.pkt
			pkt.SrcMAC, pkt.DstMAC, pkt.Src, pkt.Dst, pkt.DF = src, dstMAC, from, dst, true
			want := pkt.Bytes()
			if len(want) < len(got) {
				want = append(want, make([]byte, len(got)-len(want))...) // Ethernet padding
			}
			if d := testutil.Diff(want, got); d != "" {
				t.Fatal(d)
			}
			if err := testutil.VerifyChecksums(got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The generator's frames reach a sink on the veth's far side: every one of them, each flow
// as often as the next, with valid checksums, and rebuilt from scratch although the sink
// scribbles over every frame it drops (as a NAT would rewrite it) and pages are recycled.
func TestGeneratorIntoSink(t *testing.T) {
	p := newPair(t)
	const (
		count    = 100_000
		portMin  = 10000
		ports    = 1000
		addrs    = 2
		perCPU   = 64
		every    = 97 // prime, so a CPU's samples land on different flows
		wantEach = count / ports
	)
	for _, tc := range []struct {
		proto    pktgen.Proto
		workers  int
		redirect bool
	}{
		{pktgen.UDP, 1, false},
		{pktgen.TCP, 1, false},
		{pktgen.UDP, 2, false},
		{pktgen.TCP, 2, false},
		{pktgen.UDP, 1, true},
	} {
		name := fmt.Sprintf("%v/workers=%d", tc.proto, tc.workers)
		if tc.redirect {
			name += "/redirect"
		}
		t.Run(name, func(t *testing.T) {
			sink, err := pktgen.AttachSink(pktgen.SinkConfig{
				Netns: p.rx.Path(), Dev: "rx0", Match: dst, MatchProto: tc.proto,
				Sample: perCPU, SampleEvery: every, TrackSrcPorts: true, Scribble: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()

			tmpl := p.template(t, tc.proto, 0)
			gen := pktgen.Generator{
				Netns: p.tx.Path(), Ifindex: p.txIf, Template: tmpl,
				SrcPorts: pktgen.PortRange{Min: portMin, Max: portMin + ports - 1},
				SrcAddrs: pktgen.AddrRange{First: srcAddr, Last: srcAddr.Next()},
				Workers:  tc.workers,
			}
			if tc.redirect {
				gen.Ifindex, gen.Redirect = p.txLo, p.txIf
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := gen.Run(ctx, count, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("sent %d frames in %v: %.2f Mpps (per worker %v; a short burst, setup included)",
				res.Sent, res.Duration.Round(time.Microsecond), res.PPS/1e6, res.PerWorker)
			if res.Sent != count || res.Flows != ports*addrs || res.TxDropped != 0 {
				t.Fatalf("sent %d frames over %d flows (%d dropped by tx0), want %d over %d, none dropped",
					res.Sent, res.Flows, res.TxDropped, count, ports*addrs)
			}

			got, err := sink.Wait(ctx, count, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			// No tolerance: each sending CPU has its own veth queue, drained by the sink in
			// that CPU's softirq after every batch of 64 frames, so its 256-frame ring never
			// overflows. (With one queue and two senders, 1-3% are dropped: TxDropped.)
			if got.Packets != count || got.Matched != count || got.Bytes != count*pktgen.MinSize {
				t.Fatalf("sink saw %+v, want %d frames of %d bytes, all to %v", got, count, pktgen.MinSize, dst)
			}

			seen, err := sink.SrcPorts()
			if err != nil {
				t.Fatal(err)
			}
			if len(seen) != ports {
				t.Errorf("sink saw %d source ports, want %d", len(seen), ports)
			}
			for port, n := range seen {
				if port < portMin || port >= portMin+ports || n != wantEach {
					t.Errorf("source port %d: %d frames, want %d (ports %d-%d)", port, n, wantEach, portMin, portMin+ports-1)
				}
			}

			samples, lost, err := sink.Samples()
			if err != nil {
				t.Fatal(err)
			}
			if lost != 0 || len(samples) < perCPU {
				t.Fatalf("%d samples (%d lost), want at least %d", len(samples), lost, perCPU)
			}
			flows := map[netip.AddrPort]bool{}
			for i, s := range samples {
				if err := testutil.VerifyChecksums(s); err != nil {
					t.Fatalf("sample %d: %v\n%v", i, err, testutil.Decode(s))
				}
				from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(s[26:30])), binary.BigEndian.Uint16(s[34:]))
				if from.Addr() != srcAddr && from.Addr() != srcAddr.Next() {
					t.Fatalf("sample %d from %v: not a source address of the range", i, from)
				}
				// All but the flow's source must be the template's.
				want, err := pktgen.Frame{SrcMAC: p.txMAC, DstMAC: p.rxMAC, Src: from, Dst: dst, Proto: tc.proto}.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				if d := testutil.Diff(want, s); d != "" {
					t.Fatalf("sample %d: %s", i, d)
				}
				flows[from] = true
			}
			// Samples from one CPU are on distinct flows; two CPUs may meet on one.
			if len(flows) < perCPU {
				t.Errorf("%d samples cover %d flows, want at least %d", len(samples), len(flows), perCPU)
			}
		})
	}
}

// A duration run stops near its deadline and the sink sees every frame it sent; a run whose
// context is already done sends nothing and says why.
func TestGeneratorDuration(t *testing.T) {
	p := newPair(t)
	sink, err := pktgen.AttachSink(pktgen.SinkConfig{Netns: p.rx.Path(), Dev: "rx0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	gen := pktgen.Generator{Netns: p.tx.Path(), Ifindex: p.txIf, Template: p.template(t, pktgen.UDP, 0),
		SrcPorts: pktgen.PortRange{Min: 1024, Max: 65535}}
	ctx := context.Background()
	res, err := gen.Run(ctx, 0, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("300ms: sent %d frames, %.2f Mpps", res.Sent, res.PPS/1e6)
	if res.Duration < 300*time.Millisecond || res.Duration > time.Second || res.Sent == 0 {
		t.Fatalf("a 300ms run took %v and sent %d", res.Duration, res.Sent)
	}
	got, err := sink.Wait(ctx, res.Sent, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got.Packets != res.Sent {
		t.Fatalf("sink saw %d frames, generator sent %d", got.Packets, res.Sent)
	}
	// A cancelled run reports what it sent.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if res, err := gen.Run(cctx, 1000, 0); err != context.Canceled || res.Sent != 0 {
		t.Fatalf("cancelled run: %+v, %v", res, err)
	}
}

func TestGeneratorRejectsBadSettings(t *testing.T) {
	tmpl, err := pktgen.Frame{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6),
		Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: dst, Proto: pktgen.UDP}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	high := netip.MustParseAddr("10.70.0.9")
	withOpts := append([]byte(nil), tmpl...)
	withOpts[14] = 0x46
	for name, g := range map[string]pktgen.Generator{
		"no device":      {Template: tmpl},
		"ip options":     {Ifindex: 1, Template: withOpts},
		"short":          {Ifindex: 1, Template: tmpl[:30]},
		"empty ports":    {Ifindex: 1, Template: tmpl, SrcPorts: pktgen.PortRange{Min: 2, Max: 1}},
		"reversed addrs": {Ifindex: 1, Template: tmpl, SrcAddrs: pktgen.AddrRange{First: high, Last: srcAddr}},
		"too many flows": {Ifindex: 1, Template: tmpl, SrcPorts: pktgen.PortRange{Min: 1, Max: 10}, Flows: 11},
	} {
		if _, err := g.Run(context.Background(), 1, 0); err == nil {
			t.Errorf("%s: Run succeeded", name)
		}
	}
}

// The generator's ceiling into a veth with the sink on the peer, by number of senders. Run
// with: go test -run '^$' -bench Generator -benchtime 1x ./tools/pktgen/
func BenchmarkGenerator(b *testing.B) {
	p := newPair(b)
	sink, err := pktgen.AttachSink(pktgen.SinkConfig{Netns: p.rx.Path(), Dev: "rx0"})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	for _, proto := range []pktgen.Proto{pktgen.UDP, pktgen.TCP} {
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("%v/workers=%d", proto, workers), func(b *testing.B) {
				gen := pktgen.Generator{Netns: p.tx.Path(), Ifindex: p.txIf, Template: p.template(b, proto, 0),
					SrcPorts: pktgen.PortRange{Min: 1024, Max: 65535}, Workers: workers}
				before, err := sink.Count()
				if err != nil {
					b.Fatal(err)
				}
				var res pktgen.Result
				for b.Loop() {
					if res, err = gen.Run(context.Background(), 0, 3*time.Second); err != nil {
						b.Fatal(err)
					}
				}
				after, err := sink.Wait(context.Background(), before.Packets+res.Sent, time.Second)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(res.PPS/1e6, "Mpps")
				b.ReportMetric(float64(after.Packets-before.Packets)/float64(res.Sent), "delivered")
			})
		}
	}
}
