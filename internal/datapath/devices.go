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

	"github.com/sluicelb/sluice/internal/lb"
)

// DeviceAddresses returns the addresses of the devices that NodePorts are served on: every
// IPv4 one, and the IPv6 ones of global scope. A link-local address is the link's, not the
// node's: only neighbours could use it, and each link has the same fe80::/64.
func DeviceAddresses(devices []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, dev := range devices {
		addrs, err := deviceAddrs(dev)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			if ip, ok := usable(a); ok {
				out = append(out, ip)
			}
		}
	}
	return out, nil
}

func deviceAddrs(dev string) ([]netlink.Addr, error) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("find device %s: %w", dev, err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	// Links and addresses changing elsewhere on the node (pods coming and going) interrupt
	// the dump and the answer may be partial: ask again.
	for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		addrs, err = netlink.AddrList(l, netlink.FAMILY_ALL)
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", dev, err)
	}
	return addrs, nil
}

// usable is a's address if NodePorts are served on it: IPv4, or global IPv6 that duplicate
// address detection has passed (a tentative one cannot be used yet).
func usable(a netlink.Addr) (netip.Addr, bool) {
	if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
		return ip, true
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok || !ip.Is6() || a.Scope != unix.RT_SCOPE_UNIVERSE || a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
		return netip.Addr{}, false
	}
	return ip, true
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

// PrimaryAddress is dev's first address of family f that is neither secondary nor (IPv6)
// temporary or deprecated: the one the kernel picks as its source, and the SNAT address of
// flows that leave by it.
func PrimaryAddress(dev string, f lb.Family) (netip.Addr, bool) {
	addrs, err := deviceAddrs(dev)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		ip, ok := usable(a)
		if !ok || lb.FamilyOf(ip) != f || a.Flags&(unix.IFA_F_SECONDARY|unix.IFA_F_TEMPORARY|unix.IFA_F_DEPRECATED) != 0 ||
			a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		return ip, true
	}
	return netip.Addr{}, false
}

// SetDeviceAddress tells the datapath family f's SNAT address for flows leaving by ifindex (an
// invalid addr removes it: they keep the frontend's). IPv6's is written only once the IPv6
// datapath is loaded (LoadIPv6); before, there is nothing to tell.
func (d *Datapath) SetDeviceAddress(ifindex int, f lb.Family, addr netip.Addr) error {
	if addr.IsValid() && lb.FamilyOf(addr) != f {
		return fmt.Errorf("write the %s address of device %d: %s is not %s", f, ifindex, addr, f)
	}
	idx := uint32(ifindex)
	m := d.Objs.SluiceDeviceAddrs
	var v []byte
	if f == lb.IPv6 {
		if d.v6 == nil {
			return nil
		}
		m = d.v6.Objs.SluiceDeviceAddrs6
		b := addr.As16()
		v = b[:]
	} else if addr.IsValid() {
		b := addr.As4()
		v = b[:]
	}
	if !addr.IsValid() {
		if err := m.Delete(&idx); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete the %s address of device %d: %w", f, ifindex, err)
		}
		return nil
	}
	if err := m.Update(&idx, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write the %s address of device %d: %w", f, ifindex, err)
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
