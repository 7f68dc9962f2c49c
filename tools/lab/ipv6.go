package lab

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/testutil"
)

// A dual-stack lab (UpDualStack) has IPv6 beside every IPv4 address, laid out alike:
//
//	client fd00:89::10 ─┐
//	node1  fd00:89::11 ─┼─ br0 fd00:89::1    node1 vpod1 fd00:244:1::1 ── pod1 fd00:244:1::10
//	node2  fd00:89::12 ─┘                    node2 vpod2 fd00:244:2::1 ── pod2 fd00:244:2::10
//
// Addresses skip duplicate address detection (nodad): a tentative address cannot be used for a
// second or so, and no two hosts of a lab share one.

// Gateway6 is the nodes' IPv6 default gateway: br0's IPv6 address.
var Gateway6 = netip.MustParseAddr("fd00:89::1")

func (l *Lab) setIPv6() {
	l.ClientIP6 = netip.MustParseAddr("fd00:89::10")
	l.Node1IP6 = netip.MustParseAddr("fd00:89::11")
	l.Node2IP6 = netip.MustParseAddr("fd00:89::12")
	l.Pod1IP6 = netip.MustParseAddr("fd00:244:1::10")
	l.Pod2IP6 = netip.MustParseAddr("fd00:244:2::10")
}

// addIPv6 gives the built lab its IPv6 addresses and routes.
func (l *Lab) addIPv6() error {
	for _, n := range []*testutil.Netns{l.Node1, l.Node2} {
		if err := sysctl(n, "net.ipv6.conf.all.forwarding=1"); err != nil {
			return err
		}
	}
	// The client, as for IPv4, stands in for a host beyond a router (see build).
	if err := sysctl(l.Client, "net.ipv6.conf.all.accept_redirects=0", "net.ipv6.conf.eth0.accept_redirects=0"); err != nil {
		return err
	}
	// nodad: a tentative address cannot be used for a second or so, and none repeats.
	if err := addAddrs(unix.IFA_F_NODAD, []nsAddr{
		{l.Bridge, "br0", netip.PrefixFrom(Gateway6, 64)},
		{l.Client, "eth0", netip.PrefixFrom(l.ClientIP6, 64)},
		{l.Node1, "eth0", netip.PrefixFrom(l.Node1IP6, 64)},
		{l.Node2, "eth0", netip.PrefixFrom(l.Node2IP6, 64)},
		{l.Node1, "vpod1", netip.MustParsePrefix("fd00:244:1::1/64")},
		{l.Node2, "vpod2", netip.MustParsePrefix("fd00:244:2::1/64")},
		{l.Pod1, "eth0", netip.PrefixFrom(l.Pod1IP6, 64)},
		{l.Pod2, "eth0", netip.PrefixFrom(l.Pod2IP6, 64)},
	}); err != nil {
		return err
	}
	return addRoutes([]nsRoute{
		{l.Node1, "fd00:244:2::/64", "fd00:89::12"},
		{l.Node2, "fd00:244:1::/64", "fd00:89::11"},
		{l.Node1, "::/0", Gateway6.String()},
		{l.Node2, "::/0", Gateway6.String()},
		{l.Pod1, "::/0", "fd00:244:1::1"},
		{l.Pod2, "::/0", "fd00:244:2::1"},
	})
}
