package datapath

import (
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Native XDP is only right where two things hold: the driver can transmit what XDP hands it
// (XDP_TX, and ndo_xdp_xmit for redirects from other devices), and every packet it receives
// carries a complete L4 checksum, because XDP cannot see CHECKSUM_PARTIAL and updates the
// checksum field as if it held the final sum. A NIC receiving from a wire meets both. A veth
// meets neither: a sender with tx checksumming on (the default) hands over partial checksums,
// and frames sent into a veth whose peer runs no XDP program wait in its ring (seconds, or for
// ever). Auto therefore runs native XDP only on drivers known to be NICs with full XDP support,
// and the tc programs everywhere else, which see the sk_buff and handle both cases.

// ModeReason says why a device got its XDP mode. It is recorded in the agent-info map (one
// byte) and shown by `sluicectl prog show` and the sluice_device_info metric.
type ModeReason uint8

const (
	ReasonFlag          ModeReason = iota // the mode was set explicitly with --xdp-mode
	ReasonNativeDriver                    // auto: a NIC driver with full native XDP support
	ReasonVeth                            // auto: a veth (partial checksums, stalled XDP_TX)
	ReasonVirtualDevice                   // auto: a software device without native XDP (bridge, bond, vlan, tunnel, ...)
	ReasonUnknownDriver                   // auto: a driver sluice cannot vouch for
	ReasonAttachFailed                    // auto: native XDP did not attach (MTU, queues, offloads): tc
)

var reasonNames = []string{"flag", "native-driver", "veth", "virtual-device", "unknown-driver", "attach-failed"}

// String is the short name used in metrics labels and sluicectl.
func (r ModeReason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", r)
}

// ParseModeReason is String's inverse.
func ParseModeReason(s string) ModeReason {
	for i, n := range reasonNames {
		if n == s {
			return ModeReason(i)
		}
	}
	return ReasonFlag
}

// nativeDrivers are NIC drivers that receive from a wire (complete checksums) and implement
// native XDP with XDP_TX and ndo_xdp_xmit on Linux 5.10. Left out on purpose: veth and tun
// (senders on the same host may hand partial checksums), hv_netvsc (ndo_xdp_xmit only from
// 5.17), bond and team (their slaves decide).
var nativeDrivers = map[string]bool{
	"mlx5_core": true, "mlx4_en": true, "i40e": true, "ice": true, "ixgbe": true, "ixgbevf": true,
	"igb": true, "igc": true, "bnxt_en": true, "nfp": true, "qede": true, "ena": true,
	"virtio_net": true, "sfc": true, "gve": true, "mvneta": true, "mvpp2": true, "stmmac": true,
	"dpaa2-eth": true, "enetc": true, "fec": true, "tsnep": true, "lan966x-switch": true,
}

// DeviceFacts is what the mode choice looks at.
type DeviceFacts struct {
	Name   string
	Kind   string // netlink link kind: "device" for hardware, "veth", "bridge", "vxlan", ...
	Driver string // ethtool's driver name, "" if it has none
}

// ProbeDevice reads a device's link kind and driver.
func ProbeDevice(dev string) (DeviceFacts, error) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return DeviceFacts{}, fmt.Errorf("find device %s: %w", dev, err)
	}
	f := DeviceFacts{Name: dev, Kind: l.Type()}
	f.Driver, _ = driverName(dev) // software devices without ethtool support have none
	return f, nil
}

func driverName(dev string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, dev)
	if err != nil {
		return "", fmt.Errorf("read driver of %s: %w", dev, err)
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}

// ChooseXDP resolves the requested mode for a device: explicit modes are kept, auto picks
// native only on a vouched-for NIC driver and off (tc) everywhere else.
func ChooseXDP(requested XDPMode, f DeviceFacts) (XDPMode, ModeReason) {
	if requested != XDPAuto {
		return requested, ReasonFlag
	}
	switch {
	case f.Kind == "veth" || f.Driver == "veth":
		return XDPOff, ReasonVeth
	case nativeDrivers[f.Driver] && f.Kind == "device":
		return XDPNative, ReasonNativeDriver
	case f.Kind != "device" && f.Kind != "":
		return XDPOff, ReasonVirtualDevice
	}
	return XDPOff, ReasonUnknownDriver
}

// ForcedCaveat is what a user who forces a mode on a device that auto would not give it must
// guarantee, or "" when there is nothing to say.
func ForcedCaveat(requested XDPMode, f DeviceFacts) string {
	auto, _ := ChooseXDP(XDPAuto, f)
	if requested == auto || requested == XDPOff {
		return ""
	}
	veth := f.Kind == "veth" || f.Driver == "veth"
	switch {
	case requested == XDPNative && veth:
		return "native XDP on a veth is only right if the peer runs an XDP program (else XDP_TX and redirected frames stall in its ring) and every sender has tx checksumming off (else XDP rewrites partial checksums wrongly)"
	case requested == XDPGeneric:
		return "generic XDP cannot see partial checksums: senders on this host (veth peers, pods, the node itself) must have tx checksumming off"
	case requested == XDPNative:
		return fmt.Sprintf("driver %q is not known to deliver complete checksums and implement XDP_TX and ndo_xdp_xmit: check that NodePort replies and remote backends work", f.Driver)
	}
	return ""
}

// ReasonText explains a reason in a sentence, for logs.
func ReasonText(r ModeReason, f DeviceFacts) string {
	switch r {
	case ReasonFlag:
		return "set by --xdp-mode"
	case ReasonNativeDriver:
		return fmt.Sprintf("driver %s: a NIC with native XDP, XDP_TX and ndo_xdp_xmit, and complete checksums", f.Driver)
	case ReasonVeth:
		return "veth: XDP_TX and redirects into it stall unless its peer runs XDP, and senders hand it partial checksums XDP cannot see; tc handles both"
	case ReasonVirtualDevice:
		return fmt.Sprintf("%s device: no native XDP to vouch for; tc", strings.TrimSpace(f.Kind))
	case ReasonUnknownDriver:
		return fmt.Sprintf("driver %q is not one sluice knows to deliver complete checksums with native XDP; tc (force with --xdp-mode native)", f.Driver)
	case ReasonAttachFailed:
		return "native XDP did not attach (MTU, queues or offloads the driver refuses); tc"
	}
	return r.String()
}
