package datapath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// IPv6 is the packet path compiled for IPv6 (bpf/sluice6.c, from the same lib/ as IPv4's):
// maps of its own for everything that holds an address (their names end in 6) and the IPv4
// object's for the rest (sharedWithIPv6). The IPv4 programs, the ones attached, hand it IPv6
// packets once it is loaded. Work in progress (issue: IPv6 and dual-stack): the agent does not
// load it yet.
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
	callNewFlow  = 0
	callTooBig   = 1
	callICMP     = 2
	callHostNAT  = 3
	prog6Ingress = 0
	prog6Egress  = 1
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
	return spec, nil
}

// LoadIPv6 loads the IPv6 programs beside d, on d's shared maps, and fills their call arrays.
func (d *Datapath) LoadIPv6() (*IPv6, error) {
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
	v6 := &IPv6{}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.Config.PinPath}, MapReplacements: shared}
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
