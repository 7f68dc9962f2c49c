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
	srcAddr  = netip.MustParseAddr("10.70.0.1")
	dst      = netip.MustParseAddrPort("10.70.0.100:8080")
	srcAddr6 = netip.MustParseAddr("fd00:70::1")
	dst6     = netip.MustParseAddrPort("[fd00:70::100]:8080")
)

func (p *pair) template(t testing.TB, proto pktgen.Proto) []byte {
	t.Helper()
	return p.templateFrom(t, proto, srcAddr, dst)
}

func (p *pair) templateFrom(t testing.TB, proto pktgen.Proto, src netip.Addr, to netip.AddrPort) []byte {
	t.Helper()
	b, err := pktgen.Frame{SrcMAC: p.txMAC, DstMAC: p.rxMAC, Src: netip.AddrPortFrom(src, 10000),
		Dst: to, Proto: proto}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Frame builds what testutil.Pkt (gopacket) builds, byte for byte, padding aside.
func TestFrameMatchesTestutil(t *testing.T) {
	src, dstMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	from := netip.MustParseAddrPort("192.0.2.1:40000")
	from6 := netip.MustParseAddrPort("[2001:db8::1]:40000")
	for _, tc := range []struct {
		proto    pktgen.Proto
		size     int
		ipv6     bool
		wantSize int
		pkt      testutil.Pkt
	}{
		{pktgen.UDP, 0, false, 64, testutil.Pkt{Proto: layers.IPProtocolUDP, Payload: make([]byte, pktgen.MinSize-42)}},
		{pktgen.UDP, 1500, false, 1500, testutil.Pkt{Proto: layers.IPProtocolUDP, Payload: make([]byte, 1500-42)}},
		{pktgen.TCP, 0, false, 64, testutil.Pkt{Proto: layers.IPProtocolTCP, SYN: true, Seq: 1, Window: 64240}},
		// IPv6 UDP's headers are 62 bytes: 2 of payload in the 64.
		{pktgen.UDP, 0, true, 64, testutil.Pkt{Proto: layers.IPProtocolUDP, Payload: make([]byte, pktgen.MinSize-62)}},
		{pktgen.UDP, 1500, true, 1500, testutil.Pkt{Proto: layers.IPProtocolUDP, Payload: make([]byte, 1500-62)}},
		// IPv6 TCP's 74 bytes of headers are sent in 80 (MinSizeIPv6TCP), padded.
		{pktgen.TCP, 0, true, 80, testutil.Pkt{Proto: layers.IPProtocolTCP, SYN: true, Seq: 1, Window: 64240}},
	} {
		fam := "ipv4"
		if tc.ipv6 {
			fam = "ipv6"
		}
		t.Run(fmt.Sprintf("%s-%v-%d", fam, tc.proto, tc.size), func(t *testing.T) {
			f, to := from, dst
			if tc.ipv6 {
				f, to = from6, dst6
			}
			got, err := pktgen.Frame{SrcMAC: src, DstMAC: dstMAC, Src: f, Dst: to, Proto: tc.proto, Size: tc.size}.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.wantSize {
				t.Fatalf("frame of %d bytes, want %d", len(got), tc.wantSize)
			}
			pkt := tc.pkt
			pkt.SrcMAC, pkt.DstMAC, pkt.Src, pkt.Dst, pkt.DF = src, dstMAC, f, to, !tc.ipv6
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
		ipv6     bool
	}{
		{pktgen.UDP, 1, false, false},
		{pktgen.TCP, 1, false, false},
		{pktgen.UDP, 2, false, false},
		{pktgen.TCP, 2, false, false},
		{pktgen.UDP, 1, true, false},
		{pktgen.UDP, 1, false, true},
		{pktgen.TCP, 2, false, true},
		{pktgen.UDP, 1, true, true},
	} {
		name := fmt.Sprintf("%v/workers=%d", tc.proto, tc.workers)
		if tc.redirect {
			name += "/redirect"
		}
		src, to, size := srcAddr, dst, pktgen.MinSize
		if tc.ipv6 {
			name = "ipv6/" + name
			src, to = srcAddr6, dst6
			if tc.proto == pktgen.TCP {
				size = pktgen.MinSizeIPv6TCP
			}
		}
		t.Run(name, func(t *testing.T) {
			sink, err := pktgen.AttachSink(pktgen.SinkConfig{
				Netns: p.rx.Path(), Dev: "rx0", Match: to, MatchProto: tc.proto,
				Sample: perCPU, SampleEvery: every, TrackSrcPorts: true, Scribble: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()

			tmpl := p.templateFrom(t, tc.proto, src, to)
			gen := pktgen.Generator{
				Netns: p.tx.Path(), Ifindex: p.txIf, Template: tmpl,
				SrcPorts: pktgen.PortRange{Min: portMin, Max: portMin + ports - 1},
				SrcAddrs: pktgen.AddrRange{First: src, Last: src.Next()},
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
			if got.Packets != count || got.Matched != count || got.Bytes != count*uint64(size) {
				t.Fatalf("sink saw %+v, want %d frames of %d bytes, all to %v", got, count, size, to)
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
				if tc.ipv6 {
					from = netip.AddrPortFrom(netip.AddrFrom16([16]byte(s[22:38])), binary.BigEndian.Uint16(s[54:]))
				}
				if from.Addr() != src && from.Addr() != src.Next() {
					t.Fatalf("sample %d from %v: not a source address of the range", i, from)
				}
				// All but the flow's source must be the template's.
				want, err := pktgen.Frame{SrcMAC: p.txMAC, DstMAC: p.rxMAC, Src: from, Dst: to, Proto: tc.proto}.Bytes()
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
	gen := pktgen.Generator{Netns: p.tx.Path(), Ifindex: p.txIf, Template: p.template(t, pktgen.UDP),
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
	tmpl6, err := pktgen.Frame{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6),
		Src: netip.AddrPortFrom(srcAddr6, 1), Dst: dst6, Proto: pktgen.UDP}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	noCsum6 := append([]byte(nil), tmpl6...)
	noCsum6[14+40+6], noCsum6[14+40+7] = 0, 0
	extHdr6 := append([]byte(nil), tmpl6...)
	extHdr6[14+6] = 0 // hop-by-hop options
	high := netip.MustParseAddr("10.70.0.9")
	withOpts := append([]byte(nil), tmpl...)
	withOpts[14] = 0x46
	for name, g := range map[string]pktgen.Generator{
		"no device":                       {Template: tmpl},
		"ip options":                      {Ifindex: 1, Template: withOpts},
		"short":                           {Ifindex: 1, Template: tmpl[:30]},
		"empty ports":                     {Ifindex: 1, Template: tmpl, SrcPorts: pktgen.PortRange{Min: 2, Max: 1}},
		"reversed addrs":                  {Ifindex: 1, Template: tmpl, SrcAddrs: pktgen.AddrRange{First: high, Last: srcAddr}},
		"too many flows":                  {Ifindex: 1, Template: tmpl, SrcPorts: pktgen.PortRange{Min: 1, Max: 10}, Flows: 11},
		"ipv6 range for an ipv4 template": {Ifindex: 1, Template: tmpl, SrcAddrs: pktgen.AddrRange{First: srcAddr6, Last: srcAddr6}},
		"ipv6 range beyond 32 bits": {Ifindex: 1, Template: tmpl6,
			SrcAddrs: pktgen.AddrRange{First: srcAddr6, Last: netip.MustParseAddr("fd00:70::1:0:1")}},
		"ipv6 range of another prefix": {Ifindex: 1, Template: tmpl6,
			SrcAddrs: pktgen.AddrRange{First: netip.MustParseAddr("fd00:71::1"), Last: netip.MustParseAddr("fd00:71::2")}},
		"ipv6 udp without checksum": {Ifindex: 1, Template: noCsum6},
		"ipv6 extension header":     {Ifindex: 1, Template: extHdr6},
	} {
		if _, err := g.Run(context.Background(), 1, 0); err == nil {
			t.Errorf("%s: Run succeeded", name)
		} else {
			t.Logf("%s: %v", name, err)
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
				gen := pktgen.Generator{Netns: p.tx.Path(), Ifindex: p.txIf, Template: p.template(b, proto),
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
