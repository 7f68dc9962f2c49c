package testutil

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// xdpMD mirrors struct xdp_md for BPF_PROG_TEST_RUN's ctx_in.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// skbCtx is the leading part of struct __sk_buff up to ifindex: all test runs need of it.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// RunXDP runs an XDP program once on frame as if it arrived on ifindex (in the calling
// thread's network namespace) and returns the verdict and the frame as the program left it.
func RunXDP(prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte, error) {
	out := make([]byte, len(frame)+512)
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: out,
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)},
	}
	ret, err := prog.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run xdp program: %w", err)
	}
	return ret, opts.DataOut, nil
}

// RunTC runs a tc program once on frame as if it passed device ifindex.
func RunTC(prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte, error) {
	out := make([]byte, len(frame)+512)
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: out,
		Context: skbCtx{Ifindex: uint32(ifindex)},
	}
	ret, err := prog.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run tc program: %w", err)
	}
	return ret, opts.DataOut, nil
}
