// Package lab owns the lab topology: a throwaway "cluster" of network namespaces (a bridge, a
// client, two nodes with one pod each) that the demo, the end-to-end tests and the benchmarks
// run against. Every address lives only inside the namespaces a lab creates, so labs never touch
// the host's network and any number of them can run at once.
//
//	client 10.89.0.10 ─┐
//	node1  10.89.0.11 ─┼─ br0 10.89.0.1    node1 vpod1 10.244.1.1 ── pod1 eth0 10.244.1.10
//	node2  10.89.0.12 ─┘   (ns br; the     node2 vpod2 10.244.2.1 ── pod2 eth0 10.244.2.10
//	                       nodes' default gateway)
package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// roles are the lab's namespaces, in creation order; each is named sl-<id>-<role>.
var roles = []string{"br", "client", "node1", "node2", "pod1", "pod2"}

const netnsDir = "/var/run/netns"

// Gateway is the nodes' default gateway: br0's address in the bridge's namespace.
var Gateway = netip.MustParseAddr("10.89.0.1")

// Variant is how the lab's veths are set up, and which CNI the pods' wiring looks like (Plain
// and NICLike: a bridge-CNI-like /24 per node; VXLAN and Routed: see overlay.go).
type Variant string

const (
	// Plain veths are left as the kernel makes them (tx checksumming on, no XDP program on
	// any peer), as on a kind-style node whose "NIC" is a veth: the default, and what tests
	// of default settings use.
	Plain Variant = "plain"
	// NICLike veths behave as a NIC's wire would for XDP: tx checksumming off everywhere (no
	// partial checksums) and an XDP_PASS program on the bridge's ports (frames sent with
	// XDP_TX or redirect are delivered at once). Only for what needs native XDP on purpose:
	// --xdp-mode native or generic, and the benchmarks' stand-in for a NIC.
	NICLike Variant = "nic-like"
)

// Lab is one running topology. Every lab has the same addresses: its namespaces keep it apart.
type Lab struct {
	ID                                       string
	Variant                                  Variant
	Bridge, Client, Node1, Node2, Pod1, Pod2 *testutil.Netns

	ClientIP, Node1IP, Node2IP, Pod1IP, Pod2IP netip.Addr
	// The IPv6 addresses of a dual-stack lab (UpDualStack); invalid in an IPv4-only one.
	ClientIP6, Node1IP6, Node2IP6, Pod1IP6, Pod2IP6 netip.Addr
	// MACs of the eth0 of client, node1 and node2, for datapaths that rewrite Ethernet headers.
	ClientMAC, Node1MAC, Node2MAC net.HardwareAddr
}

// end is one side of a veth pair as it should end up.
type end struct {
	ns     *testutil.Netns
	name   string
	master string            // bridge to enslave it to, if any
	mac    *net.HardwareAddr // where to record its MAC, if wanted
}

func nsName(id, role string) string { return "sl-" + id + "-" + role }

// tmpPrefix names the veths of lab id while they sit in the root namespace during Up.
func tmpPrefix(id string) string { return "sl" + id }

// Up builds a new lab of plain veths. On error it removes whatever it created.
func Up() (*Lab, error) { return UpVariant(Plain) }

// UpVariant builds a new lab of the given variant.
func UpVariant(v Variant) (*Lab, error) { return up(testutil.UniqueName(""), v, false) }

// UpDualStack builds a new lab of the given variant with IPv6 beside IPv4 (ipv6.go).
func UpDualStack(v Variant) (*Lab, error) { return up(testutil.UniqueName(""), v, true) }

func up(id string, v Variant, dual bool) (*Lab, error) {
	if v != Plain && v != NICLike && v != VXLAN && v != Routed && v != TwoNICs {
		return nil, fmt.Errorf("create lab: unknown variant %q", v)
	}
	l := &Lab{
		ID:       id,
		Variant:  v,
		ClientIP: netip.MustParseAddr("10.89.0.10"),
		Node1IP:  netip.MustParseAddr("10.89.0.11"),
		Node2IP:  netip.MustParseAddr("10.89.0.12"),
		Pod1IP:   netip.MustParseAddr("10.244.1.10"),
		Pod2IP:   netip.MustParseAddr("10.244.2.10"),
	}
	if dual {
		l.setIPv6()
	}
	if err := l.build(); err != nil {
		return nil, fmt.Errorf("create lab: %w", errors.Join(err, l.Down()))
	}
	return l, nil
}

// UpForTest builds a lab of plain veths removed when the test ends; start backends after it so
// that their cleanups run first.
func UpForTest(t testing.TB) *Lab { return UpVariantForTest(t, Plain) }

// UpVariantForTest is UpForTest for a variant.
func UpVariantForTest(t testing.TB, v Variant) *Lab { return upForTest(t, v, false) }

// UpDualStackForTest is UpForTest for a dual-stack lab of variant v.
func UpDualStackForTest(t testing.TB, v Variant) *Lab { return upForTest(t, v, true) }

func upForTest(t testing.TB, v Variant, dual bool) *Lab {
	t.Helper()
	testutil.RequirePrivileges(t)
	l, err := up(testutil.UniqueName(""), v, dual)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// Down removes the lab. It is idempotent. Sockets still open inside (an unclosed Backend) keep
// their namespace and its links alive, unnamed, until they are closed.
func (l *Lab) Down() error { return errors.Join(Remove(l.ID), l.RemovePins()) }

func (l *Lab) build() error {
	nss := []**testutil.Netns{&l.Bridge, &l.Client, &l.Node1, &l.Node2, &l.Pod1, &l.Pod2}
	for i, role := range roles {
		n, err := testutil.NewNetns(nsName(l.ID, role))
		if err != nil {
			return err
		}
		*nss[i] = n
	}
	// Set the defaults before any link moves in, so that every interface inherits them: a node
	// forwards (as every Kubernetes node), without reverse-path filtering (the kernel's default;
	// systemd's loose mode would do too). accept_local stays 0, as on a real node: what sluice
	// hands the kernel with a node address as source goes through sluice0, which it sets up.
	for _, n := range []*testutil.Netns{l.Node1, l.Node2} {
		if err := sysctl(n, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
			"net.ipv4.conf.default.rp_filter=0"); err != nil {
			return err
		}
	}
	// The client stands in for hosts beyond a router, which ignore ICMP redirects. A packet to
	// a load-balancer or external IP that reaches node1 before its service is programmed is
	// forwarded out the way it came, to the nodes' default gateway, and node1 answers with a
	// redirect; obeyed, it would send the client straight to the gateway for minutes.
	if err := sysctl(l.Client, "net.ipv4.conf.all.accept_redirects=0", "net.ipv4.conf.default.accept_redirects=0"); err != nil {
		return err
	}
	if err := l.Bridge.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge br0: %w", err)
		}
		// The nodes' default gateway, as the docker bridge is a kind node's.
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(Gateway, 24))}); err != nil {
			return fmt.Errorf("add address to br0: %w", err)
		}
		return netlink.LinkSetUp(br)
	}); err != nil {
		return err
	}

	pairs := [][2]end{
		{{l.Client, "eth0", "", &l.ClientMAC}, {l.Bridge, "client", "br0", nil}},
		{{l.Node1, "eth0", "", &l.Node1MAC}, {l.Bridge, "node1", "br0", nil}},
		{{l.Node2, "eth0", "", &l.Node2MAC}, {l.Bridge, "node2", "br0", nil}},
		{{l.Node1, "vpod1", "", nil}, {l.Pod1, "eth0", "", nil}},
		{{l.Node2, "vpod2", "", nil}, {l.Pod2, "eth0", "", nil}},
	}
	for i, p := range pairs {
		if err := l.addVeth(i, p); err != nil {
			return err
		}
	}
	for _, n := range []*testutil.Netns{l.Node1, l.Node2} {
		if err := sysctl(n, "net.ipv4.conf.eth0.rp_filter=0"); err != nil {
			return err
		}
	}
	// A host (no forwarding) obeys redirects if all or the interface says so: both off.
	if err := sysctl(l.Client, "net.ipv4.conf.eth0.accept_redirects=0"); err != nil {
		return err
	}
	if l.Variant == NICLike {
		if err := l.Bridge.Do(func() error { return attachXDPPass("node1", "node2") }); err != nil {
			return err
		}
	}

	if err := addAddrs(0, []nsAddr{
		{l.Client, "eth0", netip.PrefixFrom(l.ClientIP, 24)},
		{l.Node1, "eth0", netip.PrefixFrom(l.Node1IP, 24)},
		{l.Node2, "eth0", netip.PrefixFrom(l.Node2IP, 24)},
		{l.Node1, "vpod1", netip.MustParsePrefix("10.244.1.1/24")},
		{l.Node2, "vpod2", netip.MustParsePrefix("10.244.2.1/24")},
		{l.Pod1, "eth0", netip.PrefixFrom(l.Pod1IP, 24)},
		{l.Pod2, "eth0", netip.PrefixFrom(l.Pod2IP, 24)},
	}); err != nil {
		return err
	}

	if err := addRoutes([]nsRoute{
		{l.Node1, "10.244.2.0/24", "10.89.0.12"},
		{l.Node2, "10.244.1.0/24", "10.89.0.11"},
		{l.Node1, "0.0.0.0/0", Gateway.String()},
		{l.Node2, "0.0.0.0/0", Gateway.String()},
		{l.Pod1, "0.0.0.0/0", "10.244.1.1"},
		{l.Pod2, "0.0.0.0/0", "10.244.2.1"},
	}); err != nil {
		return err
	}
	if l.Node1IP6.IsValid() {
		if err := l.addIPv6(); err != nil {
			return err
		}
	}
	switch l.Variant {
	case VXLAN:
		return l.addVXLAN()
	case Routed:
		return l.addRouted()
	case TwoNICs:
		return l.addSecondNIC()
	}
	return nil
}

// attachXDPPass puts an XDP_PASS program on the bridge's ports. Frames a node sends with
// XDP_TX or redirect land in the peer veth's XDP ring; with only GRO enabled there, they sit
// until other traffic happens to wake the peer's NAPI (seen: seconds of delay). An XDP program
// on the peer makes veth deliver them at once, as a NIC's TX ring would.
func attachXDPPass(devs ...string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "lab_xdp_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load xdp pass program: %w", err)
	}
	// The netlink attachment holds its own reference: the program stays after we close ours.
	defer prog.Close()
	for _, dev := range devs {
		link, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("find %s: %w", dev, err)
		}
		if err := netlink.LinkSetXdpFdWithFlags(link, prog.FD(), nl.XDP_FLAGS_DRV_MODE); err != nil {
			return fmt.Errorf("attach xdp pass to %s: %w", dev, err)
		}
	}
	return nil
}

// addVeth creates pair i in the root namespace under names unique to the lab, then moves,
// renames and configures each end.
func (l *Lab) addVeth(i int, p [2]end) error {
	tmp := [2]string{fmt.Sprintf("%s%da", tmpPrefix(l.ID), i), fmt.Sprintf("%s%db", tmpPrefix(l.ID), i)}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmp[0]}, PeerName: tmp[1]}); err != nil {
		return fmt.Errorf("add veth %s: %w", tmp[0], err)
	}
	for j, e := range p {
		if err := moveLink(tmp[j], e); err != nil {
			return err
		}
		if l.Variant == NICLike {
			// With tx checksumming on, veth hands XDP packets with partial checksums, which
			// XDP's incremental updates get wrong. XDP_TX or a redirect into a veth waits in
			// its ring unless the receiving end has GRO on (or an XDP program of its own).
			if _, err := e.ns.Exec("ethtool", "-K", e.name, "tx", "off", "gro", "on"); err != nil {
				return err
			}
		}
	}
	return nil
}

func moveLink(tmp string, e end) error {
	link, err := netlink.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("find link %s: %w", tmp, err)
	}
	target, err := netns.GetFromName(e.ns.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", e.ns.Name, err)
	}
	defer target.Close()
	if err := netlink.LinkSetNsFd(link, int(target)); err != nil {
		return fmt.Errorf("move link %s to %s: %w", tmp, e.ns.Name, err)
	}
	if err := e.ns.Do(func() error {
		link, err := netlink.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(link, e.name); err != nil {
			return err
		}
		if e.master != "" {
			br, err := netlink.LinkByName(e.master)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(link, br); err != nil {
				return err
			}
		}
		if e.mac != nil {
			*e.mac = link.Attrs().HardwareAddr
		}
		return netlink.LinkSetUp(link)
	}); err != nil {
		return fmt.Errorf("set up link %s in %s: %w", e.name, e.ns.Name, err)
	}
	return nil
}

// sysctl writes key=value settings (dotted keys) inside ns.
func sysctl(ns *testutil.Netns, settings ...string) error {
	return ns.Do(func() error {
		for _, s := range settings {
			k, v, _ := strings.Cut(s, "=")
			path := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
			if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
				return fmt.Errorf("set %s in %s: %w", k, ns.Name, err)
			}
		}
		return nil
	})
}

// nsAddr is an address to give a device of a namespace; nsRoute a route to add in one.
type nsAddr struct {
	ns   *testutil.Netns
	dev  string
	addr netip.Prefix
}

type nsRoute struct {
	ns      *testutil.Netns
	dst, gw string
}

// addAddrs adds each address (with the IFA_F_* flags).
func addAddrs(flags int, as []nsAddr) error {
	for _, a := range as {
		if err := a.ns.Do(func() error {
			link, err := netlink.LinkByName(a.dev)
			if err == nil {
				err = netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a.addr), Flags: flags})
			}
			if err != nil {
				return fmt.Errorf("add address %s to %s in %s: %w", a.addr, a.dev, a.ns.Name, err)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// addRoutes adds each route.
func addRoutes(rs []nsRoute) error {
	for _, r := range rs {
		if err := r.ns.Do(func() error {
			route := &netlink.Route{Dst: ipNet(netip.MustParsePrefix(r.dst)), Gw: net.ParseIP(r.gw)}
			if err := netlink.RouteAdd(route); err != nil {
				return fmt.Errorf("add route %s via %s in %s: %w", r.dst, r.gw, r.ns.Name, err)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Remove deletes the namespaces of lab id and any of its veths left in the root namespace by
// an interrupted Up. Removing a lab that is already gone is not an error.
func Remove(id string) error {
	var errs []error
	for _, role := range roles {
		path := filepath.Join(netnsDir, nsName(id, role))
		// Like `ip netns delete`: detach the bind mount, then drop the name.
		_ = unix.Unmount(path, unix.MNT_DETACH)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", nsName(id, role), err))
		}
	}
	links, err := linkList()
	if err != nil {
		errs = append(errs, err)
	}
	for _, link := range links {
		// Deleting one end of a veth takes its peer along.
		if name := link.Attrs().Name; strings.HasPrefix(name, tmpPrefix(id)) {
			if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", name, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove lab %s: %w", id, err)
	}
	return nil
}

// linkList lists the links of the calling thread's namespace. Other labs changing links at the
// same time interrupt the dump (the answer may then miss links), so it asks again.
func linkList() ([]netlink.Link, error) {
	for i := 0; ; i++ {
		links, err := netlink.LinkList()
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || i == 9 {
			if err != nil {
				return links, fmt.Errorf("list links: %w", err)
			}
			return links, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// List returns the IDs of the labs whose namespaces exist, for instance to remove the ones a
// crashed run left behind.
func List() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var ids []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "sl-")
		id, role, _ := strings.Cut(rest, "-")
		if ok && len(id) == 6 && slices.Contains(roles, role) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}
