package datapath

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// XDPMode is how the XDP program is attached.
type XDPMode string

const (
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
	XDPOff     XDPMode = "off"
)

// ParseXDPMode checks a --xdp-mode value.
func ParseXDPMode(s string) (XDPMode, error) {
	switch m := XDPMode(s); m {
	case XDPNative, XDPGeneric, XDPOff:
		return m, nil
	}
	return "", fmt.Errorf("parse xdp mode: %q is not native, generic or off", s)
}

// TCMode is how the tc programs are attached.
type TCMode string

const (
	TCAuto   TCMode = "auto" // TCX where the kernel has it (6.6+), clsact otherwise
	TCX      TCMode = "tcx"
	TCClsact TCMode = "clsact"
)

// ParseTCMode checks a --tc-attach value.
func ParseTCMode(s string) (TCMode, error) {
	switch m := TCMode(s); m {
	case TCAuto, TCX, TCClsact:
		return m, nil
	}
	return "", fmt.Errorf("parse tc attach mode: %q is not auto, tcx or clsact", s)
}

// Attachment is the set of programs attached to one device.
type Attachment struct {
	Device  string
	Ifindex int
	// XDP is the mode the XDP program runs in, or XDPOff when ingress is handled at tc.
	XDP XDPMode
	// TC is "tcx" or "clsact".
	TC string

	links   []link.Link
	filters []*netlink.BpfFilter
	devices *ebpf.Map // where the device is registered as a redirect target, if it is
}

// Attach puts the programs on dev: tc ingress and egress always (egress restores local
// backends' replies; ingress is the fallback for whatever XDP hands up, and the whole ingress
// path when XDP is off), and XDP in front unless mode is off. If XDP cannot attach, ingress
// stays with tc and the error is returned alongside the attachment (xdpErr) for the caller
// to log.
func (d *Datapath) Attach(dev string, mode XDPMode, tc TCMode) (a *Attachment, xdpErr error, err error) {
	iface, err := net.InterfaceByName(dev)
	if err != nil {
		return nil, nil, fmt.Errorf("find device %s: %w", dev, err)
	}
	a = &Attachment{Device: dev, Ifindex: iface.Index, XDP: XDPOff}
	if err := a.attachTC(d.Objs.SluiceTcIngress, d.Objs.SluiceTcEgress, tc); err != nil {
		a.Detach()
		return nil, nil, fmt.Errorf("attach tc to %s: %w", dev, err)
	}
	if mode == XDPOff {
		return a, nil, nil
	}
	flags := link.XDPDriverMode
	if mode == XDPGeneric {
		flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: d.Objs.SluiceXdp, Interface: iface.Index, Flags: flags})
	if err != nil {
		return a, fmt.Errorf("attach xdp (%s) to %s: %w", mode, dev, err), nil
	}
	a.links = append(a.links, l)
	a.XDP = mode
	if mode == XDPNative {
		// Other devices' XDP programs may now redirect here.
		idx, flags := uint32(iface.Index), uint32(deviceXDPNative)
		if err := d.Objs.SluiceDevices.Update(&idx, &flags, ebpf.UpdateAny); err != nil {
			a.Detach()
			return nil, nil, fmt.Errorf("register device %s: %w", dev, err)
		}
		a.devices = d.Objs.SluiceDevices
	}
	return a, nil, nil
}

// deviceXDPNative mirrors DEVICE_F_XDP_NATIVE in bpf/lib/maps.h.
const deviceXDPNative = 0x01

func (a *Attachment) attachTC(ingress, egress *ebpf.Program, mode TCMode) error {
	if mode == TCClsact {
		return a.attachClsact(ingress, egress)
	}
	li, err := link.AttachTCX(link.TCXOptions{Interface: a.Ifindex, Program: ingress, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		a.links = append(a.links, li)
		le, err := link.AttachTCX(link.TCXOptions{Interface: a.Ifindex, Program: egress, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return fmt.Errorf("attach tcx egress: %w", err)
		}
		a.links = append(a.links, le)
		a.TC = "tcx"
		return nil
	}
	if mode == TCX || !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("attach tcx ingress: %w", err)
	}
	return a.attachClsact(ingress, egress)
}

// attachClsact is the pre-6.6 way: a clsact qdisc with direct-action cls_bpf filters.
func (a *Attachment) attachClsact(ingress, egress *ebpf.Program) error {
	a.TC = "clsact"
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.Ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	for _, f := range []struct {
		parent uint32
		prog   *ebpf.Program
		name   string
	}{{netlink.HANDLE_MIN_INGRESS, ingress, "sluice_ingress"}, {netlink.HANDLE_MIN_EGRESS, egress, "sluice_egress"}} {
		filter := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: a.Ifindex, Parent: f.parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1,
			},
			Fd: f.prog.FD(), Name: f.name, DirectAction: true,
		}
		if err := netlink.FilterReplace(filter); err != nil {
			return fmt.Errorf("add cls_bpf filter %s: %w", f.name, err)
		}
		a.filters = append(a.filters, filter)
	}
	return nil
}

// Detach removes everything Attach put on the device.
func (a *Attachment) Detach() error {
	var errs []error
	if a.devices != nil {
		idx := uint32(a.Ifindex)
		if err := a.devices.Delete(&idx); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		a.devices = nil
	}
	for i := len(a.links) - 1; i >= 0; i-- {
		if err := a.links[i].Close(); err != nil {
			errs = append(errs, err)
		}
	}
	a.links = nil
	for _, f := range a.filters {
		if err := netlink.FilterDel(f); err != nil {
			errs = append(errs, err)
		}
	}
	a.filters = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach from %s: %w", a.Device, err)
	}
	return nil
}

// ProgramIDs are the kernel IDs of the loaded programs, for `sluicectl prog show`.
func (d *Datapath) ProgramIDs() (xdp, tcIngress, tcEgress uint32) {
	id := func(p *ebpf.Program) uint32 {
		info, err := p.Info()
		if err != nil {
			return 0
		}
		i, _ := info.ID()
		return uint32(i)
	}
	return id(d.Objs.SluiceXdp), id(d.Objs.SluiceTcIngress), id(d.Objs.SluiceTcEgress)
}
