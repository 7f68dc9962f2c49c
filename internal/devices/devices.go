// Package devices decides which network devices the datapath runs on and keeps it attached to
// them as they come and go: the devices named with --devices, or by default the ones that carry
// the node's addresses (the Node's InternalIP and ExternalIP) and those that lead off the node
// (a default route of either family through them, in any routing table), as Cilium's device detection and
// kube-proxy's --nodeport-addresses primary find them. Everything here works on the calling
// thread's network namespace.
package devices

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Detect returns the devices that carry nodeIPs and the Ethernet devices of the default routes
// (IPv4 and IPv6) of every routing table. Both: NodePorts arrive on the first, and a local backend's
// replies (which the egress program must restore) leave by whichever the kernel routes them to,
// a default route of the main table, or of a table a policy rule picks (as AWS's VPC CNI
// routes the pods of a secondary ENI out through it). Loopback never counts.
func Detect(nodeIPs []netip.Addr) ([]string, error) {
	links, err := retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		if l.Attrs().Flags&unix.IFF_LOOPBACK == 0 {
			byIndex[l.Attrs().Index] = l
		}
	}
	var out []string
	if len(nodeIPs) > 0 {
		addrs, err := retry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if l := byIndex[a.LinkIndex]; ok && l != nil && slices.Contains(nodeIPs, ip.Unmap()) {
				out = appendUnique(out, l.Attrs().Name)
			}
		}
	}
	routes, err := retry(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST || r.Dst != nil && !(r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			continue
		}
		idx := []int{r.LinkIndex}
		for _, nh := range r.MultiPath {
			idx = append(idx, nh.LinkIndex)
		}
		for _, i := range idx {
			// The programs read Ethernet frames: an L3 device (a WireGuard or IPIP tunnel
			// holding a default route) is not theirs.
			if l := byIndex[i]; l != nil && l.Attrs().EncapType == "ether" {
				out = appendUnique(out, l.Attrs().Name)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

func isZeroMask(m []byte) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

func appendUnique(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

// Existing returns the names that exist as links now, and those that do not.
func Existing(names []string) (present, missing []string) {
	for _, n := range names {
		if _, err := netlink.LinkByName(n); err != nil {
			missing = append(missing, n)
		} else {
			present = append(present, n)
		}
	}
	return present, missing
}

// retry asks netlink again when a dump was interrupted by links or addresses changing
// elsewhere on the node (pods coming and going): the answer may be partial.
func retry[T any](fn func() ([]T, error)) ([]T, error) {
	out, err := fn()
	for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		out, err = fn()
	}
	return out, err
}
