package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// XDPMode is how the XDP program is attached.
type XDPMode string

const (
	// XDPAuto chooses per device (ChooseXDP): native on NIC drivers known to be right with
	// it, tc everywhere else.
	XDPAuto    XDPMode = "auto"
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
	XDPOff     XDPMode = "off"
)

// ParseXDPMode checks a --xdp-mode value.
func ParseXDPMode(s string) (XDPMode, error) {
	switch m := XDPMode(s); m {
	case XDPAuto, XDPNative, XDPGeneric, XDPOff:
		return m, nil
	}
	return "", fmt.Errorf("parse xdp mode: %q is not auto, native, generic or off", s)
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
	// Reason says why (auto's choice, or the flag), Facts what it was chosen from.
	Reason ModeReason
	Facts  DeviceFacts
	// Caveat is what the user must guarantee for a mode forced where auto would not put it.
	Caveat string
	// TC is "tcx" or "clsact".
	TC string
	// Pod: a pod's device (AttachPod), not a NIC.
	Pod bool

	links   []link.Link
	filters []*netlink.BpfFilter
	devices *ebpf.Map // where the device is registered as a redirect target, if it is
}

// Attach puts the programs on dev: tc ingress and egress always (egress restores local
// backends' replies; ingress is the fallback for whatever XDP hands up, and the whole ingress
// path when XDP is off), and XDP in front unless the mode (auto: ChooseXDP's choice for the
// device) is off. If XDP cannot attach, ingress stays with tc and the error is returned
// alongside the attachment (xdpErr) for the caller to log.
//
// With a pin path, the links are pinned under it (links/) and an agent that restarts finds
// them and swaps its programs in atomically (bpf_link update): packets see the old program or
// the new one, never none, so a restart, even by kill -9, drops no flow.
func (d *Datapath) Attach(dev string, mode XDPMode, tc TCMode) (a *Attachment, xdpErr error, err error) {
	iface, err := net.InterfaceByName(dev)
	if err != nil {
		return nil, nil, fmt.Errorf("find device %s: %w", dev, err)
	}
	if d.Config.PinPath != "" {
		if err := os.MkdirAll(filepath.Join(d.Config.PinPath, "links"), 0o700); err != nil {
			return nil, nil, fmt.Errorf("create link pin directory: %w", err)
		}
	}
	facts, err := ProbeDevice(dev)
	if err != nil {
		return nil, nil, err
	}
	requested := mode
	mode, reason := ChooseXDP(requested, facts)
	a = &Attachment{Device: dev, Ifindex: iface.Index, XDP: XDPOff, Reason: reason, Facts: facts,
		Caveat: ForcedCaveat(requested, facts)}
	if err := d.attachTC(a, tc, d.Objs.SluiceTcIngress, d.Objs.SluiceTcEgress); err != nil {
		a.Detach()
		return nil, nil, fmt.Errorf("attach tc to %s: %w", dev, err)
	}
	// Only one XDP mode at a time: drop a pinned link of the other mode (or of any, when off).
	for _, m := range []XDPMode{XDPNative, XDPGeneric} {
		if m != mode {
			unpinLink(d.linkPath(dev, "xdp-"+string(m)))
		}
	}
	if mode == XDPOff {
		return a, nil, nil
	}
	flags := link.XDPDriverMode
	if mode == XDPGeneric {
		flags = link.XDPGenericMode
	}
	l, err := attachLink(d.linkPath(dev, "xdp-"+string(mode)), d.Objs.SluiceXdp, func() (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: d.Objs.SluiceXdp, Interface: iface.Index, Flags: flags})
	})
	if err != nil {
		if requested == XDPAuto {
			a.Reason = ReasonAttachFailed
		}
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

// deviceXDPNative and deviceL3 mirror DEVICE_F_XDP_NATIVE and DEVICE_F_L3 in bpf/lib/maps.h.
const (
	deviceXDPNative = 0x01
	deviceL3        = 0x02
)

// linkPath is where a device's hook link is pinned, or "" for an unpinned datapath.
func (d *Datapath) linkPath(dev, hook string) string {
	if d.Config.PinPath == "" {
		return ""
	}
	// bpffs refuses names with dots (eth0.100 is a VLAN device's name).
	return filepath.Join(d.Config.PinPath, "links", strings.ReplaceAll(dev, ".", "-")+"_"+hook)
}

// attachLink takes over the link pinned at path by swapping in prog, or attaches anew and pins.
func attachLink(path string, prog *ebpf.Program, attach func() (link.Link, error)) (link.Link, error) {
	if path != "" {
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if err := l.Update(prog); err == nil {
				return l, nil
			}
			// Its device is gone, or it cannot take this program: replace it.
			_ = l.Unpin()
			l.Close()
		}
	}
	l, err := attach()
	if err != nil {
		return nil, err
	}
	if path != "" {
		if err := l.Pin(path); err != nil {
			l.Close()
			return nil, fmt.Errorf("pin link %s: %w", path, err)
		}
	}
	return l, nil
}

// unpinLink detaches the link pinned at path, if there is one.
func unpinLink(path string) {
	if path == "" {
		return
	}
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		_ = l.Unpin()
		l.Close()
	}
}

func (d *Datapath) attachTC(a *Attachment, mode TCMode, ingress, egress *ebpf.Program) error {
	if mode == TCClsact {
		unpinLink(d.linkPath(a.Device, "tcx-ingress"))
		unpinLink(d.linkPath(a.Device, "tcx-egress"))
		return a.attachClsact(ingress, egress)
	}
	li, err := attachLink(d.linkPath(a.Device, "tcx-ingress"), ingress, func() (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{Interface: a.Ifindex, Program: ingress, Attach: ebpf.AttachTCXIngress})
	})
	if err == nil {
		a.links = append(a.links, li)
		le, err := attachLink(d.linkPath(a.Device, "tcx-egress"), egress, func() (link.Link, error) {
			return link.AttachTCX(link.TCXOptions{Interface: a.Ifindex, Program: egress, Attach: ebpf.AttachTCXEgress})
		})
		if err != nil {
			return fmt.Errorf("attach tcx egress: %w", err)
		}
		a.links = append(a.links, le)
		a.TC = "tcx"
		// Filters a clsact run left would run the programs a second time.
		removeClsactFilters(a.Ifindex)
		return nil
	}
	if mode == TCX || !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("attach tcx ingress: %w", err)
	}
	return a.attachClsact(ingress, egress)
}

// clsactFilters are sluice's cls_bpf filters on a device (replaced in place, atomically, by
// the next agent: netlink replace swaps the program).
func clsactFilters(ifindex int, ingress, egress *ebpf.Program) []*netlink.BpfFilter {
	var out []*netlink.BpfFilter
	for _, f := range []struct {
		parent uint32
		prog   *ebpf.Program
		name   string
	}{{netlink.HANDLE_MIN_INGRESS, ingress, "sluice_ingress"}, {netlink.HANDLE_MIN_EGRESS, egress, "sluice_egress"}} {
		fd := -1
		if f.prog != nil {
			fd = f.prog.FD()
		}
		out = append(out, &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex, Parent: f.parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1,
			},
			Fd: fd, Name: f.name, DirectAction: true,
		})
	}
	return out
}

func removeClsactFilters(ifindex int) {
	for _, f := range clsactFilters(ifindex, nil, nil) {
		_ = netlink.FilterDel(f)
	}
}

// removeNamedClsactFilters removes the clsact filters sluice put on a device, found by name
// (another program may use the same handle and priority).
func removeNamedClsactFilters(ifindex int) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, _ := netlink.FilterList(l, parent)
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "sluice_") {
				_ = netlink.FilterDel(bf)
			}
		}
	}
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
	for _, filter := range clsactFilters(a.Ifindex, ingress, egress) {
		if err := netlink.FilterReplace(filter); err != nil {
			return fmt.Errorf("add cls_bpf filter %s: %w", filter.Name, err)
		}
		a.filters = append(a.filters, filter)
	}
	return nil
}

// Release lets go of the attachment and leaves the programs running: pinned links and clsact
// filters keep them attached, serving, for the next agent to take over. An unpinned
// datapath's links go with their file descriptors.
func (a *Attachment) Release() {
	for _, l := range a.links {
		l.Close()
	}
	a.links, a.filters, a.devices = nil, nil, nil
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
		_ = a.links[i].Unpin()
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

// Cleanup removes sluice from a node, as kube-proxy --cleanup: it detaches every pinned link
// under pinPath, removes sluice's clsact filters from devices (from every device when none is
// named; from every veth, pods' devices, always), deletes the pinned maps and StackDevice.
func Cleanup(pinPath string, devices []string) error {
	var errs []error
	links, _ := filepath.Glob(filepath.Join(pinPath, "links", "*"))
	for _, p := range links {
		unpinLink(p)
	}
	for _, dev := range devices {
		if iface, err := net.InterfaceByName(dev); err == nil {
			removeClsactFilters(iface.Index)
		}
	}
	all, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range all {
		// The pods' devices are sluice's wherever --devices points.
		if len(devices) == 0 || l.Type() == "veth" {
			removeNamedClsactFilters(l.Attrs().Index)
		}
	}
	if err := os.RemoveAll(pinPath); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	if err := removeStackDevice(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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
