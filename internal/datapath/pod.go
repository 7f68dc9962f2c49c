package datapath

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// IsPodProgram says whether a program name (as the kernel keeps it: 15 characters) is one of
// the pod programs (sluice_tc_from_pod, sluice_tc_to_pod).
func IsPodProgram(name string) bool {
	return strings.HasPrefix(name, "sluice_tc_from_") || strings.HasPrefix(name, "sluice_tc_to_po")
}

func isPodProgramID(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && IsPodProgram(info.Name)
}

// DetachPodPrograms removes the pod programs a previous agent left on pods' devices (pinned
// TCX links, clsact filters), for an agent that runs without them (--pod-devices=false, or no
// --kube-proxy-replacement): they would go on translating pods' packets with nobody to follow
// the pods. Returns how many it removed.
func (d *Datapath) DetachPodPrograms() (int, error) {
	n := 0
	if d.Config.PinPath != "" {
		paths, _ := filepath.Glob(filepath.Join(d.Config.PinPath, "links", "*"))
		for _, p := range paths {
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				continue
			}
			if info, err := l.Info(); err == nil && isPodProgramID(info.Program) && l.Unpin() == nil {
				n++ // (and detached with the close below: no pin, no descriptor left)
			}
			l.Close()
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return n, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, _ := netlink.FilterList(l, parent)
			for _, f := range filters {
				bf, ok := f.(*netlink.BpfFilter)
				if ok && strings.HasPrefix(bf.Name, "sluice_") && isPodProgramID(ebpf.ProgramID(bf.Id)) && netlink.FilterDel(bf) == nil {
					n++
				}
			}
		}
	}
	return n, nil
}

// AttachPod puts the pod programs on dev, the host side of a pod's veth: at tc ingress
// (what the pod sends) the services it reaches are translated as the socket hooks would have
// done at connect(), and at tc egress (what it receives) their replies are restored. They
// serve the pod's packets no socket hook translated: with --socket-lb-hostns-only, and those
// sent before the hooks were attached. Pinned as Attach's, so a restart drops no pod's flow.
// XDP is never attached: a veth's XDP would take the pod's packets before the kernel has
// completed their checksums.
func (d *Datapath) AttachPod(dev string, tc TCMode) (*Attachment, error) {
	if !d.Config.PodPrograms {
		return nil, fmt.Errorf("attach to pod device %s: the pod programs are not loaded (Config.PodPrograms)", dev)
	}
	iface, err := net.InterfaceByName(dev)
	if err != nil {
		return nil, fmt.Errorf("find device %s: %w", dev, err)
	}
	if d.Config.PinPath != "" {
		if err := os.MkdirAll(filepath.Join(d.Config.PinPath, "links"), 0o700); err != nil {
			return nil, fmt.Errorf("create link pin directory: %w", err)
		}
	}
	a := &Attachment{Device: dev, Ifindex: iface.Index, XDP: XDPOff, Pod: true}
	for _, m := range []XDPMode{XDPNative, XDPGeneric} {
		unpinLink(d.linkPath(dev, "xdp-"+string(m))) // a NIC once, under this name
	}
	if err := d.attachTC(a, tc, d.Objs.SluiceTcFromPod, d.Objs.SluiceTcToPod); err != nil {
		a.Detach()
		return nil, fmt.Errorf("attach tc to pod device %s: %w", dev, err)
	}
	return a, nil
}

// PruneDeadLinks unpins the links whose device is gone (a pod deleted while no agent ran):
// the kernel detached them with the device, and only their pins are left.
func (d *Datapath) PruneDeadLinks() (int, error) {
	if d.Config.PinPath == "" {
		return 0, nil
	}
	dir := filepath.Join(d.Config.PinPath, "links")
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("list pinned links: %w", err)
	}
	n := 0
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue
		}
		var ifindex uint32 = 1 // unknown kinds are kept
		if info, err := l.Info(); err == nil {
			if x := info.TCX(); x != nil {
				ifindex = x.Ifindex
			} else if x := info.XDP(); x != nil {
				ifindex = x.Ifindex
			}
		}
		if ifindex == 0 {
			if err := l.Unpin(); err == nil {
				n++
			}
		}
		l.Close()
	}
	return n, nil
}
