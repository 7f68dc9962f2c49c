package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DeviceAddresses returns the IPv4 addresses of the devices: the node addresses NodePorts are
// served on.
func DeviceAddresses(devices []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, dev := range devices {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return nil, fmt.Errorf("find device %s: %w", dev, err)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		// Links and addresses changing elsewhere on the node (pods coming and going) interrupt
		// the dump and the answer may be partial: ask again.
		for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
			addrs, err = netlink.AddrList(l, netlink.FAMILY_V4)
		}
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", dev, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				out = append(out, ip)
			}
		}
	}
	return out, nil
}

// ForwardingEnabled reports net.ipv4.ip_forward: without it the kernel refuses to forward and
// bpf_fib_lookup reports forwarding disabled, so remote backends are unreachable.
func ForwardingEnabled() (bool, error) {
	b, err := os.ReadFile(sysctlPath("net/ipv4/ip_forward"))
	if err != nil {
		return false, fmt.Errorf("read ip_forward: %w", err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// LocalPortRange reads net.ipv4.ip_local_port_range: the source ports the node's own
// connections use, which the SNAT range should stay clear of.
func LocalPortRange() (lo, hi uint16, err error) {
	b, err := os.ReadFile(sysctlPath("net/ipv4/ip_local_port_range"))
	if err != nil {
		return 0, 0, fmt.Errorf("read ip_local_port_range: %w", err)
	}
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return 0, 0, fmt.Errorf("parse ip_local_port_range %q: %w", b, err)
	}
	return lo, hi, nil
}

// PrimaryAddress is the first IPv4 address of dev that is not secondary: the one the kernel
// picks as its source, and the SNAT address of flows that leave by it.
func PrimaryAddress(dev string) (netip.Addr, bool) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return netip.Addr{}, false
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_SECONDARY != 0 || a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// SetDeviceAddress tells the datapath the SNAT address for flows leaving by ifindex (an invalid
// addr removes it: they keep the frontend's).
func (d *Datapath) SetDeviceAddress(ifindex int, addr netip.Addr) error {
	idx := uint32(ifindex)
	if !addr.IsValid() {
		if err := d.Objs.SluiceDeviceAddrs.Delete(&idx); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete the address of device %d: %w", ifindex, err)
		}
		return nil
	}
	v := addr.As4()
	if err := d.Objs.SluiceDeviceAddrs.Update(&idx, v[:], ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write the address of device %d: %w", ifindex, err)
	}
	return nil
}

// MarkL3Devices tells the datapath which of the namespace's devices have no link-layer header
// (IPIP and GRE tunnels such as Calico's tunl0, WireGuard, tun): a flow routed into one is
// handed to the kernel's neighbour output, which attaches the route an NBMA tunnel needs. Marks
// of devices that are gone, or no longer L3, are removed. Call it whenever links change.
func (d *Datapath) MarkL3Devices() error {
	links, err := netlink.LinkList()
	for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		links, err = netlink.LinkList()
	}
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	l3 := map[uint32]bool{}
	for _, l := range links {
		if isL3(l.Attrs().EncapType) {
			l3[uint32(l.Attrs().Index)] = true
		}
	}
	var (
		idx, flags uint32
		stale      []uint32
		marked     = map[uint32]bool{}
	)
	it := d.Objs.SluiceDevices.Iterate()
	for it.Next(&idx, &flags) {
		if flags&deviceL3 != 0 {
			marked[idx] = true
			if !l3[idx] {
				stale = append(stale, idx)
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read device marks: %w", err)
	}
	var errs []error
	for _, idx := range stale {
		if err := d.Objs.SluiceDevices.Delete(&idx); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("unmark device %d: %w", idx, err))
		}
	}
	for idx := range l3 {
		if marked[idx] {
			continue
		}
		f := uint32(deviceL3)
		if err := d.Objs.SluiceDevices.Update(&idx, &f, ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("mark device %d as L3: %w", idx, err))
		}
	}
	return errors.Join(errs...)
}

// isL3 says whether a link type (netlink's name for its ARPHRD) sends packets without a
// link-layer header: the kernel's dev_is_mac_header_xmit list (IPIP, IPv6 tunnels, SIT, GRE,
// IPv6 GRE (823), raw IP (519), PIM register, "none" for tun and WireGuard, "void").
func isL3(encap string) bool {
	switch encap {
	case "ipip", "tunnel6", "sit", "gre", "unknown823", "unknown519", "pimreg", "none", "void":
		return true
	}
	return false
}
