package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// xdpMD mirrors struct xdp_md for BPF_PROG_TEST_RUN's ctx_in.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// skbCtx is the leading part of struct __sk_buff up to ifindex: all a test run needs of it.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// RunOnce runs a program once on frame with BPF_PROG_TEST_RUN, as if it arrived on ifindex of
// the calling thread's network namespace (so bpf_fib_lookup sees that namespace's routes), and
// returns the verdict and the frame as the program left it. xdp selects the context type.
func RunOnce(prog *ebpf.Program, xdp bool, ifindex int, frame []byte) (uint32, []byte, error) {
	out := make([]byte, len(frame)+512)
	opts := &ebpf.RunOptions{Data: frame, DataOut: out}
	if xdp {
		opts.Context = xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
	} else {
		opts.Context = skbCtx{Ifindex: uint32(ifindex)}
	}
	ret, err := prog.Run(opts)
	if xdp && errors.Is(err, unix.EINVAL) {
		// Before 5.14 XDP test runs take no context: the program must have been loaded with
		// Config.XDPIfindex for the ingress device.
		opts = &ebpf.RunOptions{Data: frame, DataOut: out}
		if ret, err = prog.Run(opts); err != nil {
			return 0, nil, fmt.Errorf("test-run program without a context (%d-byte frame): %w", len(frame), err)
		}
	}
	if err != nil {
		return 0, nil, fmt.Errorf("test-run program: %w", err)
	}
	return ret, opts.DataOut, nil
}
