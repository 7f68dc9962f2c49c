package datapath_test

import (
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/testutil"
)

func TestChooseXDP(t *testing.T) {
	for _, c := range []struct {
		description string
		requested   datapath.XDPMode
		facts       datapath.DeviceFacts
		mode        datapath.XDPMode
		reason      datapath.ModeReason
		caveat      string // a substring of the caveat, "" for none
	}{
		{"a veth (kind-style node): tc", datapath.XDPAuto, datapath.DeviceFacts{Kind: "veth", Driver: "veth"}, datapath.XDPOff, datapath.ReasonVeth, ""},
		{"a Mellanox NIC: native", datapath.XDPAuto, datapath.DeviceFacts{Kind: "device", Driver: "mlx5_core"}, datapath.XDPNative, datapath.ReasonNativeDriver, ""},
		{"a cloud VM's virtio NIC: native", datapath.XDPAuto, datapath.DeviceFacts{Kind: "device", Driver: "virtio_net"}, datapath.XDPNative, datapath.ReasonNativeDriver, ""},
		{"an AWS ENA NIC: native", datapath.XDPAuto, datapath.DeviceFacts{Kind: "device", Driver: "ena"}, datapath.XDPNative, datapath.ReasonNativeDriver, ""},
		{"Hyper-V's netvsc (ndo_xdp_xmit only from 5.17): tc", datapath.XDPAuto, datapath.DeviceFacts{Kind: "device", Driver: "hv_netvsc"}, datapath.XDPOff, datapath.ReasonUnknownDriver, ""},
		{"an unknown driver: tc", datapath.XDPAuto, datapath.DeviceFacts{Kind: "device", Driver: "r8169"}, datapath.XDPOff, datapath.ReasonUnknownDriver, ""},
		{"a bond: tc", datapath.XDPAuto, datapath.DeviceFacts{Kind: "bond", Driver: "bonding"}, datapath.XDPOff, datapath.ReasonVirtualDevice, ""},
		{"a VLAN on a NIC: tc", datapath.XDPAuto, datapath.DeviceFacts{Kind: "vlan", Driver: "802.1Q VLAN Support"}, datapath.XDPOff, datapath.ReasonVirtualDevice, ""},
		{"a tun device: tc", datapath.XDPAuto, datapath.DeviceFacts{Kind: "tuntap", Driver: "tun"}, datapath.XDPOff, datapath.ReasonVirtualDevice, ""},
		{"native forced on a veth: kept, with what the user must guarantee", datapath.XDPNative, datapath.DeviceFacts{Kind: "veth", Driver: "veth"}, datapath.XDPNative, datapath.ReasonFlag, "peer runs an XDP program"},
		{"generic forced: kept, senders must complete checksums", datapath.XDPGeneric, datapath.DeviceFacts{Kind: "veth", Driver: "veth"}, datapath.XDPGeneric, datapath.ReasonFlag, "partial checksums"},
		{"native forced on an unknown driver: kept, with a warning", datapath.XDPNative, datapath.DeviceFacts{Kind: "device", Driver: "r8169"}, datapath.XDPNative, datapath.ReasonFlag, "r8169"},
		{"native forced where auto picks it: nothing to say", datapath.XDPNative, datapath.DeviceFacts{Kind: "device", Driver: "ice"}, datapath.XDPNative, datapath.ReasonFlag, ""},
		{"off forced: nothing to say", datapath.XDPOff, datapath.DeviceFacts{Kind: "device", Driver: "ice"}, datapath.XDPOff, datapath.ReasonFlag, ""},
	} {
		t.Run(c.description, func(t *testing.T) {
			mode, reason := datapath.ChooseXDP(c.requested, c.facts)
			if mode != c.mode || reason != c.reason {
				t.Errorf("ChooseXDP(%s, %+v) = %s, %s; want %s, %s", c.requested, c.facts, mode, reason, c.mode, c.reason)
			}
			caveat := datapath.ForcedCaveat(c.requested, c.facts)
			if (c.caveat == "") != (caveat == "") || !strings.Contains(caveat, c.caveat) {
				t.Errorf("ForcedCaveat = %q, want one containing %q", caveat, c.caveat)
			}
			if datapath.ParseModeReason(reason.String()) != reason || datapath.ReasonText(reason, c.facts) == "" {
				t.Errorf("reason %d does not round-trip or has no text", reason)
			}
		})
	}
}

// Auto on devices as the kernel makes them: a veth gets tc only, a bridge (a software device)
// too, each with its reason; native forced on the veth attaches XDP and says what it needs.
func TestAttachAutoOnUntouchedDevices(t *testing.T) {
	testutil.RequirePrivileges(t)
	ns := testutil.NewTestNetns(t, "mode")
	ns.MustExec(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	ns.MustExec(t, "ip", "link", "add", "br0", "type", "bridge")
	for _, d := range []string{"eth0", "peer0", "br0"} {
		ns.MustExec(t, "ip", "link", "set", d, "up")
	}
	dp := loadShared(t, datapath.Config{})
	err := ns.Do(func() error {
		for _, c := range []struct {
			dev       string
			requested datapath.XDPMode
			mode      datapath.XDPMode
			reason    datapath.ModeReason
			caveat    bool
		}{
			{"eth0", datapath.XDPAuto, datapath.XDPOff, datapath.ReasonVeth, false},
			{"br0", datapath.XDPAuto, datapath.XDPOff, datapath.ReasonVirtualDevice, false},
			{"eth0", datapath.XDPNative, datapath.XDPNative, datapath.ReasonFlag, true},
		} {
			a, xdpErr, err := dp.Attach(c.dev, c.requested, datapath.TCAuto)
			if err != nil || xdpErr != nil {
				t.Fatalf("attach %s %s: %v, %v", c.dev, c.requested, err, xdpErr)
			}
			if a.XDP != c.mode || a.Reason != c.reason || (a.Caveat != "") != c.caveat {
				t.Errorf("%s %s: XDP %s because %s (caveat %q); want %s because %s", c.dev, c.requested, a.XDP, a.Reason, a.Caveat, c.mode, c.reason)
			}
			out, err := ns.Exec("ip", "link", "show", c.dev)
			if err != nil {
				t.Fatal(err)
			}
			if hasXDP := strings.Contains(out, "xdp"); hasXDP != (c.mode != datapath.XDPOff) {
				t.Errorf("%s %s: XDP attached = %v:\n%s", c.dev, c.requested, hasXDP, out)
			}
			if c.dev == "eth0" && c.requested == datapath.XDPAuto && c.mode == datapath.XDPOff && a.Facts.Driver != "veth" {
				t.Errorf("driver of a veth read as %q", a.Facts.Driver)
			}
			if err := a.Detach(); err != nil {
				t.Error(err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
