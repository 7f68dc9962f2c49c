package devices

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/internal/datapath"
)

// DetectPods returns the pods' devices: the veths whose other end is in another network
// namespace, as every veth-based CNI plugin (ptp, bridge, Calico, Flannel, kindnet) leaves
// the host side of a pod's, less the NICs and any device that holds one of nodeIPs (a kind
// node's eth0 is such a veth too, and so is a second network's). A container that is not a
// pod (a Docker one on the same host) counts as one, as kube-proxy's PREROUTING rules also
// translate its packets.
func DetectPods(nics []string, nodeIPs []netip.Addr) ([]string, error) {
	links, err := retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	nodeDevs := map[int]bool{}
	if len(nodeIPs) > 0 {
		addrs, err := retry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && slices.Contains(nodeIPs, ip.Unmap()) {
				nodeDevs[a.LinkIndex] = true
			}
		}
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.NetNsID < 0 || slices.Contains(nics, a.Name) || a.Name == datapath.StackDevice || nodeDevs[a.Index] {
			continue
		}
		out = append(out, a.Name)
	}
	slices.Sort(out)
	return out, nil
}
