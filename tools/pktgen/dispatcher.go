package pktgen

import (
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
)

// HoldInDispatcher keeps prog in the kernel's XDP dispatcher until the returned function is
// called. A BPF_PROG_TEST_RUN call with a repeat count adds the program to the dispatcher and
// removes it again, each a synchronize_rcu: ~20-30 ms per call on this VM whatever the count,
// unless the program is there already. Being attached to a device keeps it there, so it is
// attached in generic mode to the loopback of a namespace made for the purpose and never
// entered by anything else: no frame ever reaches it.
func HoldInDispatcher(prog *ebpf.Program) (release func(), err error) {
	type held struct {
		ns netns.NsHandle
		l  link.Link
	}
	done := make(chan held, 1)
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends up in the new namespace, so the runtime
		// discards it with the goroutine.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("create netns: %w", err)
			return
		}
		// Loopback is ifindex 1 in every new namespace.
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: 1, Flags: link.XDPGenericMode})
		if err != nil {
			ns.Close()
			errc <- fmt.Errorf("attach generator to a private loopback: %w", err)
			return
		}
		done <- held{ns, l}
	}()
	select {
	case err := <-errc:
		return nil, err
	case h := <-done:
		return func() {
			h.l.Close()
			h.ns.Close() // the last reference: the namespace and its loopback go
		}, nil
	}
}
