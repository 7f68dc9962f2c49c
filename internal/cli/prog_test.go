package cli

import (
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/testutil"
)

func TestProgShow(t *testing.T) {
	f := newFixture(t)
	// A pod's device with the pod programs (the fixture's veth, with its peer moved away).
	pod := testutil.NewTestNetns(t, "sl-cli-pod-")
	f.node.MustExec(t, "ip", "link", "add", "vpod1", "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
	err := f.node.Do(func() error {
		a, err := f.dp.AttachPod("vpod1", datapath.TCAuto)
		if err == nil {
			t.Cleanup(func() { _ = f.node.Do(a.Detach) })
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var ps ProgShowJSON
	f.runJSON(t, &ps, "prog", "show")
	if ps.Agent.Version != "v-test" || !ps.Agent.Running || ps.Agent.Object != datapath.ObjectHash() || ps.Agent.SNATPorts != "1024-29999" {
		t.Errorf("agent %+v", ps.Agent)
	}
	if len(ps.Devices) != 1 || ps.Devices[0].Name != "eth0" || ps.Devices[0].XDPMode != "native" || len(ps.Devices[0].Programs) != 3 {
		t.Fatalf("devices %+v", ps.Devices)
	}
	for _, p := range ps.Devices[0].Programs {
		if p.ID == 0 || p.Tag == "" || !strings.HasPrefix(p.Name, "sluice_") {
			t.Errorf("program %+v", p)
		}
	}
	if len(ps.PodDevices) != 1 || ps.PodDevices[0] != "vpod1" {
		t.Errorf("pod devices %v, want [vpod1]", ps.PodDevices)
	}
	pins := strings.Join(ps.Pins, " ")
	if !strings.Contains(pins, f.dir+"/sluice_ct") || !strings.Contains(pins, f.dir+"/sluice_frontends") {
		t.Errorf("pins %v", ps.Pins)
	}
	if table := f.run(t, "prog", "show"); !strings.Contains(table, "xdp id") || !strings.Contains(table, "running, pid") ||
		!strings.Contains(table, "pod devices  1: vpod1") {
		t.Errorf("table:\n%s", table)
	}
}
