package xdpfwd_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/bench/xdpfwd"
)

// The forwarder sends a frame for a known destination back out with the rule's MACs, TTL one
// less and a valid header checksum, and leaves everything else to the kernel.
func TestForwarder(t *testing.T) {
	testutil.RequirePrivileges(t)
	dst := netip.MustParseAddr("10.244.2.10")
	node, next := net.HardwareAddr{2, 0, 0, 0, 0, 0x11}, net.HardwareAddr{2, 0, 0, 0, 0, 0x12}
	f, err := xdpfwd.Load([]xdpfwd.Rule{{Dst: dst, DstMAC: next, SrcMAC: node}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pkt := testutil.Pkt{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 0x10}, DstMAC: node, Proto: layers.IPProtocolUDP,
		Src: netip.MustParseAddrPort("10.89.0.10:1024"), Dst: netip.AddrPortFrom(dst, 5353), TTL: 64, Payload: []byte("x")}
	run := func(frame []byte) (uint32, []byte) {
		out := make([]byte, len(frame)+256)
		opts := &ebpf.RunOptions{Data: frame, DataOut: out}
		ret, err := f.Program().Run(opts)
		if err != nil {
			t.Fatal(err)
		}
		return ret, opts.DataOut
	}
	ret, out := run(pkt.Bytes())
	want := pkt
	want.SrcMAC, want.DstMAC, want.TTL = node, next, 63
	if ret != 3 /* XDP_TX */ {
		t.Fatalf("verdict %d, want XDP_TX", ret)
	}
	if d := testutil.Diff(want.Bytes(), out); d != "" {
		t.Fatal(d)
	}
	if err := testutil.VerifyChecksums(out); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Forwarded(); err != nil || n != 1 {
		t.Fatalf("forwarded %d (%v), want 1", n, err)
	}

	other := pkt
	other.Dst = netip.MustParseAddrPort("10.244.1.10:5353")
	expiring := pkt
	expiring.TTL = 1
	for _, p := range []testutil.Pkt{other, expiring} {
		if ret, out := run(p.Bytes()); ret != 2 /* XDP_PASS */ || testutil.Diff(p.Bytes(), out) != "" {
			t.Errorf("%v ttl %d: verdict %d, frame changed: %s", p.Dst, p.TTL, ret, testutil.Diff(p.Bytes(), out))
		}
	}
}
