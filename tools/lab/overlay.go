package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/internal/testutil"
)

// VXLAN is a lab of plain veths whose nodes reach each other's pods through a flannel-style
// VXLAN overlay (see addVXLAN): the first overlay CNI most clusters meet.
const VXLAN Variant = "vxlan"

// OverlayMTU is the MTU of the VXLAN device and of the pods' links in the VXLAN lab, as flannel
// sets them: the NIC's 1500 less VXLAN's 50 bytes.
const OverlayMTU = 1450

// addVXLAN makes the overlay as flannel's vxlan backend does: a VXLAN device flannel.1 on each
// node (VNI 1, port 8472, the node's address as the tunnel source, no learning) with address
// 10.244.N.0/32; each node's route to the other's pod CIDR through flannel.1, onlink via the
// other's flannel.1 address, whose MAC is a permanent neighbour entry and whose node address
// is the forwarding entry for that MAC; the pods' links at OverlayMTU; and masquerade for pod
// traffic that leaves the pod network. Node addresses stay reached through eth0.
func (l *Lab) addVXLAN() error {
	type node struct {
		ns     *testutil.Netns
		ip     netip.Addr
		vtep   string
		podNet string
		vpod   string
		pod    *testutil.Netns
		mac    net.HardwareAddr
	}
	nodes := []*node{
		{ns: l.Node1, ip: l.Node1IP, vtep: "10.244.1.0", podNet: "10.244.1.0/24", vpod: "vpod1", pod: l.Pod1},
		{ns: l.Node2, ip: l.Node2IP, vtep: "10.244.2.0", podNet: "10.244.2.0/24", vpod: "vpod2", pod: l.Pod2},
	}
	for _, n := range nodes {
		if err := n.ns.Do(func() error {
			eth0, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", MTU: OverlayMTU}, VxlanId: 1,
				VtepDevIndex: eth0.Attrs().Index, SrcAddr: n.ip.AsSlice(), Port: 8472, Learning: false}
			if err := netlink.LinkAdd(vx); err != nil {
				return fmt.Errorf("add flannel.1: %w", err)
			}
			link, err := netlink.LinkByName("flannel.1")
			if err != nil {
				return err
			}
			n.mac = link.Attrs().HardwareAddr
			if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(n.vtep + "/32"))}); err != nil {
				return fmt.Errorf("add address to flannel.1: %w", err)
			}
			return netlink.LinkSetUp(link)
		}); err != nil {
			return fmt.Errorf("set up flannel.1 in %s: %w", n.ns.Name, err)
		}
		for _, c := range [][]string{{"ip", "link", "set", n.vpod, "mtu", fmt.Sprint(OverlayMTU)},
			{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.244.0.0/16", "!", "-d", "10.244.0.0/16", "-j", "MASQUERADE"}} {
			if _, err := n.ns.Exec(c...); err != nil {
				return err
			}
		}
		if _, err := n.pod.Exec("ip", "link", "set", "eth0", "mtu", fmt.Sprint(OverlayMTU)); err != nil {
			return err
		}
	}
	for i, n := range nodes {
		peer := nodes[1-i]
		for _, c := range [][]string{
			{"ip", "route", "replace", peer.podNet, "via", peer.vtep, "dev", "flannel.1", "onlink"},
			{"ip", "neigh", "replace", peer.vtep, "lladdr", peer.mac.String(), "dev", "flannel.1", "nud", "permanent"},
			{"bridge", "fdb", "append", peer.mac.String(), "dev", "flannel.1", "dst", peer.ip.String()},
		} {
			if _, err := n.ns.Exec(c...); err != nil {
				return err
			}
		}
	}
	return nil
}

// Routed is a lab of plain veths wired as Calico's routed mode wires pods: each pod has a /32
// address and a default route via 169.254.1.1, a link-local address nobody has, which the
// node's end of the pod's veth answers by proxy ARP; the node reaches its pod by a /32 route
// to that veth (which has no address), and the other node's pods by a route via that node.
const Routed Variant = "routed"

// addRouted rewires the plain lab's pods as Calico does (see Routed).
func (l *Lab) addRouted() error {
	for _, n := range []struct {
		node, pod *testutil.Netns
		vpod      string
		podIP     netip.Addr
	}{
		{l.Node1, l.Pod1, "vpod1", l.Pod1IP},
		{l.Node2, l.Pod2, "vpod2", l.Pod2IP},
	} {
		for _, c := range [][]string{
			{"ip", "addr", "flush", "dev", n.vpod},
			{"ip", "route", "replace", n.podIP.String() + "/32", "dev", n.vpod},
		} {
			if _, err := n.node.Exec(c...); err != nil {
				return err
			}
		}
		if err := sysctl(n.node, "net.ipv4.conf."+n.vpod+".proxy_arp=1"); err != nil {
			return err
		}
		for _, c := range [][]string{
			{"ip", "addr", "flush", "dev", "eth0"},
			{"ip", "addr", "add", n.podIP.String() + "/32", "dev", "eth0"},
			{"ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"},
			{"ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"},
		} {
			if _, err := n.pod.Exec(c...); err != nil {
				return err
			}
		}
	}
	return nil
}

// TwoNICs is a plain lab whose node1 has a second NIC, eth1 (10.90.0.11/24 on a second bridge,
// br1, whose 10.90.0.1 routes to the first network), and sends pod1's traffic out through it by
// policy routing, as AWS's VPC CNI sends the pods of a secondary ENI out through that ENI: a
// NodePort reached on eth0 is answered by the local backend through eth1.
const TwoNICs Variant = "two-nics"

// SecondNICIP is node1's eth1 address in the TwoNICs lab.
var SecondNICIP = netip.MustParseAddr("10.90.0.11")

func (l *Lab) addSecondNIC() error {
	if err := l.Bridge.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br1"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge br1: %w", err)
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.90.0.1/24"))}); err != nil {
			return fmt.Errorf("add address to br1: %w", err)
		}
		return netlink.LinkSetUp(br)
	}); err != nil {
		return err
	}
	if err := sysctl(l.Bridge, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	if err := l.addVeth(10, [2]end{{l.Node1, "eth1", "", nil}, {l.Bridge, "node1-eth1", "br1", nil}}); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"ip", "addr", "add", SecondNICIP.String() + "/24", "dev", "eth1"},
		{"ip", "route", "add", "default", "via", "10.90.0.1", "dev", "eth1", "table", "100"},
		// Pod-to-pod traffic stays on the main table's routes; everything else pod1 sends
		// leaves through eth1.
		{"ip", "rule", "add", "to", "10.244.0.0/16", "lookup", "main", "priority", "100"},
		{"ip", "rule", "add", "from", l.Pod1IP.String(), "lookup", "100", "priority", "110"},
	} {
		if _, err := l.Node1.Exec(c...); err != nil {
			return err
		}
	}
	return sysctl(l.Node1, "net.ipv4.conf.eth1.rp_filter=0")
}
