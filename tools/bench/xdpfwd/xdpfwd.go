// Package xdpfwd is the benchmarks' ceiling: a bare XDP forwarder (bpf/fwd.c) that compares
// the destination address with a few fixed rules, decrements the TTL, rewrites the MAC
// addresses and transmits (XDP_TX or bpf_redirect): no map lookup on the way, no connection
// table, no NAT, no FIB lookup. What any XDP load balancer must do at the least.
package xdpfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
)

// MaxRules is how many destinations one forwarder knows (MAX_RULES in bpf/fwd.c).
const MaxRules = 4

// Rule sends frames for Dst out of Ifindex (0: the device they arrived on, XDP_TX) from
// SrcMAC to DstMAC.
type Rule struct {
	Dst            netip.Addr
	Ifindex        int
	DstMAC, SrcMAC net.HardwareAddr
}

// Forwarder is the loaded program, attached to at most one device.
type Forwarder struct {
	objs fwdObjects
	link link.Link
}

// Load loads a forwarder for rules.
func Load(rules []Rule) (*Forwarder, error) {
	if len(rules) == 0 || len(rules) > MaxRules {
		return nil, fmt.Errorf("load forwarder: %d rules, want 1 to %d", len(rules), MaxRules)
	}
	spec, err := loadFwd()
	if err != nil {
		return nil, fmt.Errorf("load forwarder spec: %w", err)
	}
	var cfg [MaxRules]fwdRule
	for i, r := range rules {
		if !r.Dst.Is4() || len(r.DstMAC) != 6 || len(r.SrcMAC) != 6 {
			return nil, fmt.Errorf("load forwarder: rule %d (%v): want an IPv4 address and two MACs", i, r.Dst)
		}
		a := r.Dst.As4()
		cfg[i].Daddr = binary.NativeEndian.Uint32(a[:]) // network order in memory
		cfg[i].Ifindex = uint32(r.Ifindex)
		copy(cfg[i].Dmac[:], r.DstMAC)
		copy(cfg[i].Smac[:], r.SrcMAC)
	}
	if err := spec.Variables[fwdVarCfgRules].Set(cfg); err != nil {
		return nil, fmt.Errorf("set rules: %w", err)
	}
	if err := spec.Variables[fwdVarCfgNrules].Set(uint32(len(rules))); err != nil {
		return nil, fmt.Errorf("set rule count: %w", err)
	}
	f := &Forwarder{}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load forwarder: %+v", ve)
		}
		return nil, fmt.Errorf("load forwarder: %w", err)
	}
	return f, nil
}

// Program is the XDP program, for BPF_PROG_TEST_RUN.
func (f *Forwarder) Program() *ebpf.Program { return f.objs.FwdXdp }

// Attach attaches the forwarder natively to dev in the namespace at nsPath.
func (f *Forwarder) Attach(nsPath, dev string) error {
	if f.link != nil {
		return errors.New("attach forwarder: already attached")
	}
	return inNetns(nsPath, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("find %s: %w", dev, err)
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: f.objs.FwdXdp, Interface: ifc.Index, Flags: link.XDPDriverMode})
		if err != nil {
			return fmt.Errorf("attach forwarder to %s: %w", dev, err)
		}
		f.link = l
		return nil
	})
}

// Forwarded is how many frames the program sent on.
func (f *Forwarder) Forwarded() (uint64, error) {
	var per []uint64
	if err := f.objs.FwdCount.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read forwarder count: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Close detaches and unloads the forwarder.
func (f *Forwarder) Close() error {
	var errs []error
	if f.link != nil {
		errs = append(errs, f.link.Close())
		f.link = nil
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}

// inNetns runs fn on a locked thread inside the namespace at path; the thread is thrown away
// afterwards rather than returned to the runtime with the wrong namespace.
func inNetns(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
