package testutil

import (
	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/datapath"
)

// RunXDP runs an XDP program once on frame as if it arrived on ifindex (in the calling
// thread's network namespace) and returns the verdict and the frame as the program left it.
func RunXDP(prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte, error) {
	return datapath.RunOnce(prog, true, ifindex, frame)
}

// RunTC runs a tc program once on frame as if it passed device ifindex.
func RunTC(prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte, error) {
	return datapath.RunOnce(prog, false, ifindex, frame)
}
