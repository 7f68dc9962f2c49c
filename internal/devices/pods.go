package devices

import (
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/internal/datapath"
)

// DetectPods returns the pods' devices: the veths whose other end is in another network
// namespace, as every veth-based CNI plugin (ptp, bridge, Calico, Flannel, kindnet) leaves
// the host side of a pod's, less the NICs (a kind node's eth0 is such a veth too). A container
// that is not a pod (a Docker one on the same host) counts as one, as kube-proxy's PREROUTING
// rules also translate its packets.
func DetectPods(nics []string) ([]string, error) {
	links, err := retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.NetNsID < 0 || slices.Contains(nics, a.Name) || a.Name == datapath.StackDevice {
			continue
		}
		out = append(out, a.Name)
	}
	slices.Sort(out)
	return out, nil
}
