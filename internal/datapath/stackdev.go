package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
)

// StackDevice is the device through which tc hands the kernel a translated packet that
// is too big for its next hop and may be fragmented (no DF): the kernel fragments what it
// forwards, and fills in a checksum a veth sender left to it, neither of which a BPF program
// can do right. The packet's source is a node address (the SNAT address, or the frontend's on
// a reply), which the kernel takes for a martian on a device without accept_local; this device
// has it, and receives nothing else (no address, no route points to it), so accepting local
// sources there opens nothing on the node's real devices. It is one end of a veth pair (as
// Cilium's cilium_host): veth is in every kernel, where a dummy device may not be.
const StackDevice = "sluice0"

// stackPeer is StackDevice's other end; nothing uses it.
const stackPeer = "sluice0-peer"

// stackSysctls are the device's settings: accept local sources; no reverse-path filter (the
// source's route is not through this device); forward (the kernel routes the packet on).
var stackSysctls = map[string]string{"accept_local": "1", "rp_filter": "0", "forwarding": "1"}

// EnsureStackDevice creates StackDevice if it is missing, sets it up, and returns its ifindex
// and MAC for the datapath (SetStackDevice).
func EnsureStackDevice() (int, net.HardwareAddr, error) {
	l, err := netlink.LinkByName(StackDevice)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		// MTU 65535: frames arrive as they came in, before the kernel fragments them.
		err = netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: StackDevice, MTU: 65535}, PeerName: stackPeer})
		if err != nil && !errors.Is(err, os.ErrExist) {
			return 0, nil, fmt.Errorf("create %s: %w", StackDevice, err)
		}
		l, err = netlink.LinkByName(StackDevice)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("find %s: %w", StackDevice, err)
	}
	if l.Type() != "veth" {
		return 0, nil, fmt.Errorf("set up %s: a %s device of that name exists, not sluice's veth", StackDevice, l.Type())
	}
	for key, v := range stackSysctls {
		p := sysctlPath(filepath.Join("net/ipv4/conf", StackDevice, key))
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			return 0, nil, fmt.Errorf("set %s: %w", p, err)
		}
	}
	for _, name := range []string{stackPeer, StackDevice} {
		if err := netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return 0, nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return l.Attrs().Index, l.Attrs().HardwareAddr, nil
}

// StrictReversePathFilter reports net.ipv4.conf.all.rp_filter = 1. The kernel applies the
// larger of `all` and the device's value, and in strict mode it refuses a local source on
// StackDevice whatever accept_local says: oversized packets without DF are then dropped.
func StrictReversePathFilter() bool {
	b, err := os.ReadFile(sysctlPath("net/ipv4/conf/all/rp_filter"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// SetStackDevice tells the datapath where StackDevice is (ifindex 0: nowhere; too big packets
// without DF are then dropped and counted).
func (d *Datapath) SetStackDevice(ifindex int, mac net.HardwareAddr) error {
	v := SluiceStackDev{Ifindex: uint32(ifindex)}
	copy(v.Mac[:], mac)
	if err := d.Objs.SluiceStackDev.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write %s to sluice_stack_dev: %w", StackDevice, err)
	}
	return nil
}

// removeStackDevice deletes StackDevice and its peer (cleanup); a missing one is fine.
func removeStackDevice() error {
	l, err := netlink.LinkByName(StackDevice)
	if err != nil {
		return nil
	}
	if l.Type() != "veth" {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", StackDevice, err)
	}
	return nil
}
