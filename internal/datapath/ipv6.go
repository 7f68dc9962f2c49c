package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// IPv6 is the packet path compiled for IPv6 (bpf/sluice6.c, from the same lib/ as IPv4's):
// maps of its own for everything that holds an address (their names end in 6) and the IPv4
// object's for the rest (sharedWithIPv6). The IPv4 programs, the ones attached, hand it IPv6
// packets once it is loaded; the agent loads it when it serves IPv6 (--ipv6).
type IPv6 struct {
	Objs Sluice6Objects
}

// sharedWithIPv6 are the maps both families use: they hold IDs, counters, names and device
// facts, no addresses. A dual-stack service port has a service ID per family, so its slots,
// Maglev table and counters are those of one family.
var sharedWithIPv6 = []string{
	SluiceMapSluiceSlots, SluiceMapSluiceSvcStats, SluiceMapSluiceReasons, SluiceMapSluiceSvcInfo,
	SluiceMapSluiceMaglev, SluiceMapSluiceAffinityMatch, SluiceMapSluiceAgent, SluiceMapSluiceDevices,
	SluiceMapSluiceStackDev, SluiceMapSluiceFrontendPorts, SluiceMapSluiceBackendPorts,
}

// The IPv6 programs' call arrays (bpf/lib/calls6.h); the IPv4 programs' hand-off arrays:
// which IPv6 program an IPv4 one passes an IPv6 packet to (bpf/lib/nodeport.h).
const (
	callNewFlow    = 0
	callTooBig     = 1
	callICMP       = 2
	callHostNAT    = 3
	callNewFlowPod = 4
	prog6Ingress   = 0
	prog6Egress    = 1
	prog6FromPod   = 2
	prog6ToPod     = 3
)

// SpecIPv6 returns the IPv6 object's spec configured by cfg, as Spec does IPv4's.
func SpecIPv6(cfg Config) (*ebpf.CollectionSpec, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	spec, err := LoadSluice6()
	if err != nil {
		return nil, fmt.Errorf("load IPv6 spec: %w", err)
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	if !cfg.PodPrograms {
		stubPrograms(spec, "sluice_tc_from_pod6", "sluice_tc_to_pod6", "sluice_tc6_new_flow_pod")
	}
	return spec, nil
}

// LoadIPv6 loads the IPv6 programs beside d, on d's shared maps, and fills their call arrays.
func (d *Datapath) LoadIPv6() (*IPv6, error) {
	v6, err := d.loadIPv6(d.Config.PinPath, nil)
	if err == nil {
		d.v6 = v6
	}
	return v6, err
}

// LoadIPv6Copy loads a copy of the IPv6 programs beside d (itself a copy of the IPv4 ones on
// the live maps, as sluicectl trace loads one) on the live IPv6 maps in own (OpenPinned6's),
// with call arrays of its own: the live ones keep the agent's programs.
func (d *Datapath) LoadIPv6Copy(own *Sluice6Maps) (*IPv6, error) {
	return d.loadIPv6("", map[string]*ebpf.Map{
		Sluice6MapSluiceFrontends6: own.SluiceFrontends6, Sluice6MapSluiceBackends6: own.SluiceBackends6,
		Sluice6MapSluiceCt6: own.SluiceCt6, Sluice6MapSluiceAffinity6: own.SluiceAffinity6,
		Sluice6MapSluiceSourceRanges6: own.SluiceSourceRanges6,
	})
}

// loadIPv6 loads the IPv6 object with its pinned maps in pinPath (none: maps of its own but
// for those in own) and points d's hand-off arrays at its programs.
func (d *Datapath) loadIPv6(pinPath string, own map[string]*ebpf.Map) (*IPv6, error) {
	spec, err := SpecIPv6(d.Config)
	if err != nil {
		return nil, err
	}
	live := d.Objs.SluiceMaps.all()
	shared := map[string]*ebpf.Map{}
	for _, name := range sharedWithIPv6 {
		if spec.Maps[name] == nil || live[name] == nil {
			return nil, fmt.Errorf("load IPv6 datapath: shared map %s missing", name)
		}
		shared[name] = live[name]
	}
	for name := range spec.Maps {
		if shared[name] == nil && !strings.HasSuffix(name, "6") && !strings.HasPrefix(name, ".") {
			return nil, fmt.Errorf("load IPv6 datapath: map %s is neither IPv6's own nor shared", name)
		}
	}
	for name, m := range own {
		if spec.Maps[name] == nil || m == nil {
			return nil, fmt.Errorf("load IPv6 datapath: map %s missing", name)
		}
		shared[name] = m
	}
	for name, ms := range spec.Maps {
		if m := shared[name]; m != nil {
			ms.MaxEntries = m.MaxEntries() // as the live map was made
		} else if pinPath == "" {
			ms.Pinning = ebpf.PinNone
		}
	}
	v6 := &IPv6{}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinPath}, MapReplacements: shared}
	if err := spec.LoadAndAssign(&v6.Objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load IPv6 datapath: %+v", ve)
		}
		return nil, fmt.Errorf("load IPv6 datapath: %w", err)
	}
	calls := []struct {
		m   *ebpf.Map
		key uint32
		p   *ebpf.Program
	}{
		{v6.Objs.SluiceCallsXdp6, callNewFlow, v6.Objs.SluiceXdp6NewFlow},
		{v6.Objs.SluiceCallsTc6, callNewFlow, v6.Objs.SluiceTc6NewFlow},
		{v6.Objs.SluiceCallsTc6, callTooBig, v6.Objs.SluiceTc6TooBig},
		{v6.Objs.SluiceCallsTc6, callICMP, v6.Objs.SluiceTc6Icmp},
		{v6.Objs.SluiceCallsTc6, callHostNAT, v6.Objs.SluiceTc6Hostnat},
		{v6.Objs.SluiceCallsTc6, callNewFlowPod, v6.Objs.SluiceTc6NewFlowPod},
	}
	for _, c := range calls {
		if err := c.m.Put(c.key, c.p); err != nil {
			v6.Close()
			return nil, fmt.Errorf("fill IPv6 call array: %w", err)
		}
	}
	// Last, the IPv4 programs' hand-off (their arrays are pinned with the maps): from here on
	// the attached programs send IPv6 packets to these.
	progs := []struct {
		m   *ebpf.Map
		key uint32
		p   *ebpf.Program
	}{
		{d.Objs.SluiceProgs6Xdp, prog6Ingress, v6.Objs.SluiceXdp6},
		{d.Objs.SluiceProgs6Tc, prog6Ingress, v6.Objs.SluiceTcIngress6},
		{d.Objs.SluiceProgs6Tc, prog6Egress, v6.Objs.SluiceTcEgress6},
		{d.Objs.SluiceProgs6Tc, prog6FromPod, v6.Objs.SluiceTcFromPod6},
		{d.Objs.SluiceProgs6Tc, prog6ToPod, v6.Objs.SluiceTcToPod6},
	}
	for _, p := range progs {
		if err := p.m.Put(p.key, p.p); err != nil {
			v6.Close()
			return nil, fmt.Errorf("hand IPv6 to its programs: %w", err)
		}
	}
	return v6, nil
}

// Close releases the IPv6 object's file descriptors. Pinned maps stay.
func (v *IPv6) Close() error { return v.Objs.Close() }

// all is every map of the IPv4 object by name.
func (m *SluiceMaps) all() map[string]*ebpf.Map {
	out := m.byName()
	out[SluiceMapSluiceStackDev] = m.SluiceStackDev
	out[SluiceMapSluiceDeviceAddrs] = m.SluiceDeviceAddrs
	out[SluiceMapSluiceFrags] = m.SluiceFrags
	out[SluiceMapSluiceScratch] = m.SluiceScratch
	return out
}

// StopIPv6 has the attached programs pass IPv6 packets to the kernel again, and removes the
// IPv6 object's pins a previous agent left: with IPv6 off nothing of it is served, and none of
// its entries outlives it to name a backend ID the IPv4 side hands out meanwhile.
func (d *Datapath) StopIPv6() error {
	for _, m := range []*ebpf.Map{d.Objs.SluiceProgs6Xdp, d.Objs.SluiceProgs6Tc} {
		for _, k := range []uint32{prog6Ingress, prog6Egress, prog6FromPod, prog6ToPod} {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("stop handing IPv6 to its programs: %w", err)
			}
		}
	}
	if d.Config.PinPath == "" {
		return nil
	}
	spec, err := LoadSluice6()
	if err != nil {
		return fmt.Errorf("load IPv6 spec: %w", err)
	}
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName && strings.HasSuffix(name, "6") {
			if err := os.Remove(filepath.Join(d.Config.PinPath, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove IPv6 pin: %w", err)
			}
		}
	}
	return nil
}

// HasGlobalIPv6 reports whether a device of this network namespace has a global IPv6 address
// that duplicate address detection has passed: --ipv6 auto serves IPv6 then.
func HasGlobalIPv6() (bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
	for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_V6)
	}
	if err != nil {
		return false, fmt.Errorf("list IPv6 addresses: %w", err)
	}
	for _, a := range addrs {
		if _, ok := usable(a); ok {
			return true, nil
		}
	}
	return false, nil
}

// OpenPinned6 opens the IPv6 object's own pinned maps in dir (the agent's --bpffs), for tools:
// the returned Sluice6Maps has those (names ending in 6) and not the ones shared with IPv4,
// which OpenPinned gives. fs.ErrNotExist: the agent does not serve IPv6.
func OpenPinned6(dir string, readOnly bool) (*Sluice6Maps, error) {
	spec, err := LoadSluice6()
	if err != nil {
		return nil, fmt.Errorf("load IPv6 spec: %w", err)
	}
	opened := map[string]*ebpf.Map{}
	closeAll := func() {
		for _, o := range opened {
			o.Close()
		}
	}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName || !strings.HasSuffix(name, "6") || ms.Type == ebpf.ProgramArray {
			continue
		}
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: readOnly})
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("open pinned map %s: %w", filepath.Join(dir, name), err)
		}
		opened[name] = mp
	}
	m := &Sluice6Maps{
		SluiceFrontends6: opened[Sluice6MapSluiceFrontends6], SluiceBackends6: opened[Sluice6MapSluiceBackends6],
		SluiceCt6: opened[Sluice6MapSluiceCt6], SluiceAffinity6: opened[Sluice6MapSluiceAffinity6],
		SluiceSourceRanges6: opened[Sluice6MapSluiceSourceRanges6], SluiceFrags6: opened[Sluice6MapSluiceFrags6],
		SluiceDeviceAddrs6: opened[Sluice6MapSluiceDeviceAddrs6],
	}
	if m.SluiceFrontends6 == nil || m.SluiceBackends6 == nil || m.SluiceCt6 == nil || m.SluiceAffinity6 == nil || m.SluiceSourceRanges6 == nil {
		closeAll()
		return nil, fmt.Errorf("open pinned IPv6 maps in %s: the IPv6 spec does not pin them all", dir)
	}
	return m, nil
}
