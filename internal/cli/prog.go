package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
)

// ProgShowJSON is `prog show -o json`.
type ProgShowJSON struct {
	Agent   AgentJSON    `json:"agent"`
	Devices []DeviceJSON `json:"devices"`
	// PodDevices are the pods' veths that run the pod programs (--kube-proxy-replacement).
	PodDevices []string `json:"podDevices"`
	Pins       []string `json:"pins"`
}

// AgentJSON describes the agent that loaded the datapath.
type AgentJSON struct {
	Version     string    `json:"version"`
	Running     bool      `json:"running"`
	PID         int       `json:"pid,omitempty"`
	Started     time.Time `json:"started"`
	Object      string    `json:"datapathObject"`  // hash of the BPF object the agent loaded
	CLIObject   string    `json:"sluicectlObject"` // hash of the one this sluicectl carries
	SNATPorts   string    `json:"snatPorts"`
	MaxServices uint32    `json:"maxServices"`
}

// DeviceJSON is a device the agent attached to.
type DeviceJSON struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	XDPMode string `json:"xdpMode"` // native, generic, or off
	// XDPReason is why: flag (set by --xdp-mode), native-driver, veth, virtual-device,
	// unknown-driver, attach-failed.
	XDPReason string     `json:"xdpReason"`
	TCMode    string     `json:"tcMode"` // tcx or clsact
	Programs  []ProgJSON `json:"programs"`
}

// ProgJSON is one attached program.
type ProgJSON struct {
	Hook string `json:"hook"` // xdp, tc-ingress, tc-egress
	ID   uint32 `json:"id"`
	Name string `json:"name"`
	Tag  string `json:"tag"`
}

func running(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func progJSON(hook string, id uint32) ProgJSON {
	p := ProgJSON{Hook: hook, ID: id}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		p.Name = "(gone)"
		return p
	}
	defer prog.Close()
	if info, err := prog.Info(); err == nil {
		p.Name, p.Tag = info.Name, info.Tag
	}
	return p
}

// podDevices are the devices of this network namespace whose tc ingress runs the pod program
// (by TCX or a clsact filter), found from the kernel: the agent records only its NICs, which
// are few, while pods come and go by the hundred.
func podDevices() []string {
	out := []string{}
	links, err := netlink.LinkList()
	if err != nil {
		return out
	}
	isPod := func(id uint32) bool {
		return datapath.IsPodProgram(progJSON("tc-ingress", id).Name)
	}
	for _, l := range links {
		idx := l.Attrs().Index
		found := false
		if res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXIngress}); err == nil {
			for _, p := range res.Programs {
				found = found || isPod(uint32(p.ID))
			}
		}
		if !found {
			filters, _ := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Id != 0 {
					found = found || isPod(uint32(bf.Id))
				}
			}
		}
		if found {
			out = append(out, l.Attrs().Name)
		}
	}
	sort.Strings(out)
	return out
}

func loadProgShow(e *Env, k *maps.Kernel) (ProgShowJSON, error) {
	info, err := k.AgentInfo()
	if err != nil {
		return ProgShowJSON{}, err
	}
	out := ProgShowJSON{
		Agent: AgentJSON{Version: info.Version, PID: info.PID, Running: running(info.PID), Started: info.Started,
			Object: info.Object, CLIObject: datapath.ObjectHash(), MaxServices: info.Config.MaxServices,
			SNATPorts: fmt.Sprintf("%d-%d", info.Config.SNATPortMin, info.Config.SNATPortMax)},
		Devices: []DeviceJSON{}, PodDevices: podDevices(),
	}
	if !out.Agent.Running {
		out.Agent.PID = 0
	}
	for _, d := range info.Devices {
		dj := DeviceJSON{Name: d.Name, Ifindex: d.Ifindex, XDPMode: d.XDPMode, XDPReason: d.XDPReason, TCMode: d.TCMode}
		if d.XDPProg != 0 {
			dj.Programs = append(dj.Programs, progJSON("xdp", d.XDPProg))
		}
		dj.Programs = append(dj.Programs, progJSON("tc-ingress", d.TCIngressProg), progJSON("tc-egress", d.TCEgressProg))
		out.Devices = append(out.Devices, dj)
	}
	entries, err := os.ReadDir(e.BPFFS)
	if err != nil {
		return out, fmt.Errorf("list pins: %w", err)
	}
	for _, en := range entries {
		out.Pins = append(out.Pins, filepath.Join(e.BPFFS, en.Name()))
	}
	sort.Strings(out.Pins)
	return out, nil
}

func progShow(e *Env, args []string) error {
	k, err := e.mapsNoFlags("prog show", args)
	if err != nil {
		return err
	}
	out, err := loadProgShow(e, k)
	if err != nil {
		return err
	}
	if out.Agent.Version == "" {
		return errors.New("no agent has recorded itself in these maps")
	}
	return e.emit(out, func(w *tabwriter.Writer) {
		a := out.Agent
		state := "stopped (programs detached)"
		if a.Running {
			state = fmt.Sprintf("running, pid %d", a.PID)
		}
		fmt.Fprintf(w, "agent\t%s, %s, started %s\n", a.Version, state, a.Started.Format(time.RFC3339))
		obj := a.Object
		if a.Object != a.CLIObject {
			obj += fmt.Sprintf(" (this sluicectl carries %s: built from other sources)", a.CLIObject)
		}
		fmt.Fprintf(w, "datapath object\t%s\n", obj)
		fmt.Fprintf(w, "SNAT ports\t%s\n", a.SNATPorts)
		fmt.Fprintf(w, "pins\t%s\n", e.BPFFS)
		fmt.Fprintln(w, "\nDEVICE\tIFINDEX\tXDP\tWHY\tTC\tPROGRAMS")
		for _, d := range out.Devices {
			var ps []string
			for _, p := range d.Programs {
				ps = append(ps, fmt.Sprintf("%s id %d %s tag %s", p.Hook, p.ID, p.Name, p.Tag))
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", d.Name, d.Ifindex, d.XDPMode, d.XDPReason, d.TCMode, strings.Join(ps, "; "))
		}
		if len(out.Devices) == 0 {
			fmt.Fprintln(w, "(none attached)")
		}
		if n := len(out.PodDevices); n > 0 {
			fmt.Fprintf(w, "\npod devices\t%d: %s\n", n, strings.Join(out.PodDevices, " "))
		}
	})
}
