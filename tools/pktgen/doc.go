// Package pktgen owns the benchmark traffic: a packet generator and a sink, both XDP programs,
// for machines without the kernel's pktgen module (and where xdp-trafficgen does not start).
//
// The generator (bpf/pktgen.c, Generator) is attached nowhere: Go runs it with
// BPF_PROG_TEST_RUN in live-frame mode (BPF_F_TEST_XDP_LIVE_FRAMES, Linux 5.18 or newer),
// where each repetition is a real frame sent out of the device it "arrived" on (XDP_TX) or
// redirected to another. Templates are IPv4 or IPv6 (Frame), TCP SYNs or UDP; 64-byte frames
// in both families but IPv6 TCP, whose headers need 80. It cycles through flows by source
// port, then source address (an IPv6 address's last 32 bits), and
// rebuilds every frame's headers from the template, because live-frame pages come back
// recycled with whatever the receiver (a NAT, the kernel's forwarding) wrote into them. One
// worker per CPU, each with an exact share of a fixed count, or until a deadline.
//
// The sink (bpf/sink.c, Sink) is attached to the receiving device: it counts frames (and
// those for an expected backend), can keep samples and per-source-port counts for checks,
// and drops them. Everything but live frames uses helpers Linux 5.10 has.
//
// Into a veth, what the peer needs: an XDP program (the sink, or sluice), or frames are
// dropped; and, with more than one sender, a queue per sender (numrxqueues/numtxqueues),
// because senders sharing a queue share its 256-frame ring and lose a few percent
// (Result.TxDropped). On the 2-core lab VM, 64-byte frames into a 2-queue veth with the sink
// on the peer: ~19 Mpps from one worker, 29-38 Mpps from two, none lost; frame size hardly
// matters (veth passes pages, not copies).
package pktgen
