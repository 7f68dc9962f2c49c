package devices_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/devices"
	"github.com/sluicelb/sluice/internal/testutil"
)

// node is a namespace with two veth "NICs": eth0 (10.1.0.2, the default route's) and eth1
// (10.2.0.2).
func node(t *testing.T) *testutil.Netns {
	t.Helper()
	testutil.RequirePrivileges(t)
	ns := testutil.NewTestNetns(t, "dev")
	for _, c := range [][]string{
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"},
		{"ip", "link", "add", "eth1", "type", "veth", "peer", "name", "peer1"},
		{"ip", "addr", "add", "10.1.0.2/24", "dev", "eth0"},
		{"ip", "addr", "add", "10.2.0.2/24", "dev", "eth1"},
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "link", "set", "eth1", "up"},
		{"ip", "route", "add", "default", "via", "10.1.0.1"},
	} {
		ns.MustExec(t, c...)
	}
	return ns
}

func TestDetect(t *testing.T) {
	ns := node(t)
	for _, c := range []struct {
		description string
		nodeIPs     []netip.Addr
		want        []string
	}{
		{"no Node addresses known: the default route's device", nil, []string{"eth0"}},
		{"the Node's InternalIP is on eth1: it, and the default route's device", []netip.Addr{netip.MustParseAddr("10.2.0.2")}, []string{"eth0", "eth1"}},
		{"InternalIP and ExternalIP on both", []netip.Addr{netip.MustParseAddr("10.2.0.2"), netip.MustParseAddr("10.1.0.2")}, []string{"eth0", "eth1"}},
		{"the Node's address is on no device (NAT in front): the default route's", []netip.Addr{netip.MustParseAddr("192.0.2.7")}, []string{"eth0"}},
	} {
		t.Run(c.description, func(t *testing.T) {
			var got []string
			if err := ns.Do(func() (err error) { got, err = devices.Detect(c.nodeIPs); return err }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("Detect(%v) = %v, want %v", c.nodeIPs, got, c.want)
			}
		})
	}
	// A pod's replies policy-routed out through eth1 (a default route in another table).
	ns.MustExec(t, "ip", "route", "add", "default", "via", "10.2.0.1", "table", "100")
	var got []string
	if err := ns.Do(func() (err error) { got, err = devices.Detect(nil); return err }); err != nil || !slices.Equal(got, []string{"eth0", "eth1"}) {
		t.Errorf("with a default route through eth1 in table 100: %v, %v; want [eth0 eth1]", got, err)
	}
	ns.MustExec(t, "ip", "route", "del", "default", "table", "100")
	ns.MustExec(t, "ip", "route", "del", "default")
	// An IPv6-only way off the node: eth1's IPv6 default route, and the Node's IPv6 address.
	ns.MustExec(t, "ip", "-6", "addr", "add", "fd00:2::2/64", "dev", "eth1", "nodad")
	ns.MustExec(t, "ip", "-6", "route", "add", "default", "via", "fd00:2::1", "dev", "eth1")
	if err := ns.Do(func() (err error) { got, err = devices.Detect(nil); return err }); err != nil || !slices.Equal(got, []string{"eth1"}) {
		t.Errorf("with an IPv6 default route through eth1: %v, %v; want [eth1]", got, err)
	}
	ns.MustExec(t, "ip", "-6", "route", "del", "default")
	if err := ns.Do(func() (err error) {
		got, err = devices.Detect([]netip.Addr{netip.MustParseAddr("fd00:2::2")})
		return err
	}); err != nil || !slices.Equal(got, []string{"eth1"}) {
		t.Errorf("the Node's IPv6 address on eth1: %v, %v; want [eth1]", got, err)
	}
	var addrs []netip.Addr
	if err := ns.Do(func() (err error) { addrs, err = datapath.DeviceAddresses([]string{"eth1"}); return err }); err != nil ||
		!slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("10.2.0.2"), netip.MustParseAddr("fd00:2::2")}) {
		t.Errorf("eth1's NodePort addresses: %v, %v; want its IPv4 and global IPv6, not its link-local one", addrs, err)
	}
	ns.MustExec(t, "ip", "-6", "addr", "del", "fd00:2::2/64", "dev", "eth1")
	if err := ns.Do(func() (err error) { got, err = devices.Detect(nil); return err }); err != nil || len(got) != 0 {
		t.Errorf("without a default route or Node addresses: %v, %v; want none", got, err)
	}
}

// A device named in --devices that appears later is attached then; one that disappears is
// let go; one re-created under the same name is attached again. The watcher notices each.
func TestManagerFollowsHotPlug(t *testing.T) {
	ns := node(t)
	err := ns.Do(func() error {
		dp, err := datapath.Load(datapath.Config{}, nil)
		if err != nil {
			return err
		}
		defer dp.Close()
		m := &devices.Manager{DP: dp, Explicit: []string{"eth0", "nic9"}, XDP: datapath.XDPAuto, TC: datapath.TCAuto, Log: zaptest.NewLogger(t)}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		poked := make(chan struct{}, 16)
		// Subscribed in the node's namespace (a new goroutine's thread is in the test's).
		go func() {
			_ = ns.Do(func() error { return devices.Watch(ctx, func() { m.Invalidate(); poked <- struct{}{} }) })
		}()
		time.Sleep(100 * time.Millisecond) // subscribed

		step := func(what string, want []string) {
			t.Helper()
			if _, err := m.Reconcile(); err != nil {
				t.Errorf("%s: %v", what, err)
			}
			if got := m.Names(); !slices.Equal(got, want) {
				t.Errorf("%s: attached to %v, want %v", what, got, want)
			}
		}
		waitPoke := func(what string) {
			t.Helper()
			select {
			case <-poked:
			case <-time.After(2 * time.Second):
				t.Errorf("%s: the watcher did not notice", what)
			}
			for len(poked) > 0 {
				<-poked
			}
		}
		step("nic9 missing", []string{"eth0"})
		ns.MustExec(t, "ip", "link", "add", "nic9", "type", "veth", "peer", "name", "peer9")
		waitPoke("nic9 added")
		step("nic9 plugged in", []string{"eth0", "nic9"})
		first := m.Attachments()[1].Ifindex
		ns.MustExec(t, "ip", "link", "del", "nic9")
		waitPoke("nic9 removed")
		step("nic9 unplugged", []string{"eth0"})
		ns.MustExec(t, "ip", "link", "add", "nic9", "type", "veth", "peer", "name", "peer9")
		waitPoke("nic9 re-created")
		step("nic9 re-created", []string{"eth0", "nic9"})
		if a := m.Attachments()[1]; a.Ifindex == first {
			t.Errorf("re-created nic9 still attached under its old ifindex %d", first)
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: m.Attachments()[1].Ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil || len(res.Programs) != 1 {
			t.Errorf("tcx ingress programs on the re-created nic9: %+v, %v; want sluice's", res, err)
		}
		for _, a := range m.Attachments() {
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

// With Pods, every pod's device gets the pod programs as pods come and go, the NICs keep
// theirs, and Names (the NodePorts' devices) never lists a pod's. Links of pods that went
// while no agent ran lose their pins at the next agent's first look.
func TestManagerFollowsPods(t *testing.T) {
	ns := node(t)
	addPod := func(dev string) {
		pod := testutil.NewTestNetns(t, "pod")
		ns.MustExec(t, "ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
		ns.MustExec(t, "ip", "link", "set", dev, "up")
	}
	addPod("vpod1")
	// A veth with both ends on the node is no pod's; nor is one into another namespace that
	// holds a node address (a second network of a kind node), default route or not.
	ns.MustExec(t, "ip", "link", "add", "vlocal", "type", "veth", "peer", "name", "vlocal-peer")
	addPod("vnet2")
	ns.MustExec(t, "ip", "addr", "add", "10.3.0.2/24", "dev", "vnet2")
	nodeIPs := []netip.Addr{netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.3.0.2")}
	pins := filepath.Join("/sys/fs/bpf", testutil.UniqueName("sluice-devices-test-"))
	t.Cleanup(func() { os.RemoveAll(pins) })
	err := ns.Do(func() error {
		if got, err := devices.DetectPods([]string{"eth0"}, nodeIPs); err != nil || !slices.Equal(got, []string{"vpod1"}) {
			t.Errorf("DetectPods: %v, %v; want [vpod1]", got, err)
		}
		dp, err := datapath.Load(datapath.Config{PinPath: pins, PodPrograms: true}, nil)
		if err != nil {
			return err
		}
		defer dp.Close()
		m := &devices.Manager{DP: dp, Explicit: []string{"eth0"}, XDP: datapath.XDPOff, TC: datapath.TCAuto, Pods: true, Log: zaptest.NewLogger(t),
			NodeIPs: func() []netip.Addr { return nodeIPs }}
		step := func(what string, wantPods []string) {
			t.Helper()
			m.Invalidate()
			if _, err := m.Reconcile(); err != nil {
				t.Errorf("%s: %v", what, err)
			}
			if got := m.Names(); !slices.Equal(got, []string{"eth0"}) {
				t.Errorf("%s: NICs %v, want [eth0]", what, got)
			}
			if got := m.PodDevices(); !slices.Equal(got, wantPods) {
				t.Errorf("%s: pod devices %v, want %v", what, got, wantPods)
			}
		}
		step("before EnablePods (the NICs not known for sure yet)", nil)
		m.EnablePods()
		step("one pod", []string{"vpod1"})
		if id := tcxIngressProgram(t, "vpod1"); id != programID(t, dp.Objs.SluiceTcFromPod) {
			t.Errorf("vpod1's tcx ingress runs program %d, want sluice_tc_from_pod", id)
		}
		if id := tcxIngressProgram(t, "eth0"); id != programID(t, dp.Objs.SluiceTcIngress) {
			t.Errorf("eth0's tcx ingress runs program %d, want sluice_tc_ingress", id)
		}
		addPod("vpod2")
		step("a second pod", []string{"vpod1", "vpod2"})
		ns.MustExec(t, "ip", "link", "del", "vpod1")
		step("the first pod gone", []string{"vpod2"})

		// The agent stops (its links stay pinned), vpod2 goes meanwhile, and the next agent
		// finds its pins dead; vpod3's stay, serving, until that agent enables pods.
		addPod("vpod3")
		step("a third pod", []string{"vpod2", "vpod3"})
		m.Release()
		ns.MustExec(t, "ip", "link", "del", "vpod2")
		m2 := &devices.Manager{DP: dp, Explicit: []string{"eth0"}, XDP: datapath.XDPOff, TC: datapath.TCAuto, Pods: true, Log: zaptest.NewLogger(t)}
		if _, err := m2.Reconcile(); err != nil {
			t.Error(err)
		}
		if pinned := linkPins(pins, "vpod"); !slices.Equal(pinned, []string{"vpod3_tcx-egress", "vpod3_tcx-ingress"}) {
			t.Errorf("pod pins after a restart: %v; want vpod3's alone", pinned)
		}
		if id := tcxIngressProgram(t, "vpod3"); id != programID(t, dp.Objs.SluiceTcFromPod) {
			t.Errorf("vpod3's tcx ingress runs program %d before pods are enabled, want sluice_tc_from_pod", id)
		}
		m2.Release()
		// An agent without pods takes the previous agent's pod programs off.
		m3 := &devices.Manager{DP: dp, Explicit: []string{"eth0"}, XDP: datapath.XDPOff, TC: datapath.TCAuto, Log: zaptest.NewLogger(t)}
		if _, err := m3.Reconcile(); err != nil {
			t.Error(err)
		}
		if pinned := linkPins(pins, "vpod"); len(pinned) != 0 {
			t.Errorf("pod pins left by an agent without pods: %v", pinned)
		}
		if l, _ := netlink.LinkByName("vpod3"); l != nil {
			if res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress}); err == nil && len(res.Programs) != 0 {
				t.Errorf("vpod3 still runs %+v", res.Programs)
			}
		}
		m2 = m3
		for _, a := range m2.Attachments() {
			_ = a.Detach()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// linkPins are the names of the pinned links under pins whose name starts with prefix.
func linkPins(pins, prefix string) []string {
	var out []string
	entries, _ := os.ReadDir(filepath.Join(pins, "links"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func tcxIngressProgram(t *testing.T, dev string) ebpf.ProgramID {
	t.Helper()
	l, err := netlink.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil || len(res.Programs) != 1 {
		t.Fatalf("tcx ingress programs on %s: %+v, %v", dev, res, err)
	}
	return res.Programs[0].ID
}

func programID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}
