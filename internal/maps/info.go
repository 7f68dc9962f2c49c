package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
)

// ServiceInfo is what inspection tools learn about a service ID (the datapath never reads it).
type ServiceInfo struct {
	Name     string // namespace/name:port
	NodePort uint16
	Proto    lb.Proto
	Updated  time.Time
	// ExternalLocal: the scope's traffic policy is Local, externalTrafficPolicy (or for the
	// internal scope internalTrafficPolicy; the frontends cannot tell it: their backends
	// are simply the local ones).
	ExternalLocal bool
	// Scope is the service port's desired.Scope (0 external, 1 internal, 2 node): which of its
	// entries the ID is, since several share a name.
	Scope uint8
	// Family is the service port's family: a dual-stack one has an ID per family.
	Family lb.Family
}

// svc_info.flags: bit 0 externalTrafficPolicy Local, bits 1-2 the scope, bit 3 IPv6 (clear in
// what agents before IPv6 wrote: their services are IPv4).
const (
	infoExternalLocal = 0x01
	infoScopeShift    = 1
	infoScopeMask     = 0x06
	infoIPv6          = 0x08
)

func cString[T ~int8 | ~uint8](b []T) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

func putCString[T ~int8 | ~uint8](dst []T, s string) {
	for i := range dst {
		dst[i] = 0
	}
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = T(s[i])
	}
}

// svc_info's name holds lb.ServiceNameMax bytes and a NUL: these fail to compile (a negative
// array length) unless the two agree.
var (
	_ [len(datapath.SluiceSvcInfo{}.Name) - 1 - lb.ServiceNameMax]struct{}
	_ [lb.ServiceNameMax - (len(datapath.SluiceSvcInfo{}.Name) - 1)]struct{}
)

// checkServiceName refuses a name the maps cannot hold whole: cut, two names could become one.
func checkServiceName(id uint32, name string) error {
	if len(name) > lb.ServiceNameMax {
		return fmt.Errorf("update service info %d: name %q is %d bytes, longer than the %d Kubernetes allows", id, name, len(name), lb.ServiceNameMax)
	}
	return nil
}

func (k *Kernel) UpdateServiceInfo(id uint32, info ServiceInfo) error {
	if err := checkServiceName(id, info.Name); err != nil {
		return err
	}
	var v datapath.SluiceSvcInfo
	putCString(v.Name[:], info.Name)
	v.NodePort, v.Proto, v.UpdatedNs = info.NodePort, uint8(info.Proto), uint64(info.Updated.UnixNano())
	if info.ExternalLocal {
		v.Flags |= infoExternalLocal
	}
	if info.Family == lb.IPv6 {
		v.Flags |= infoIPv6
	}
	if info.Scope > infoScopeMask>>infoScopeShift {
		return fmt.Errorf("update service info %d: scope %d does not fit", id, info.Scope)
	}
	v.Flags |= info.Scope << infoScopeShift
	if b := k.batch; b != nil {
		b.infoKeys, b.infoVals = append(b.infoKeys, id), append(b.infoVals, v)
		return nil
	}
	return wrapUpdate(fmt.Sprintf("service info %d", id), k.objs.SluiceSvcInfo.Update(&id, &v, ebpf.UpdateAny))
}

func (k *Kernel) DeleteServiceInfo(id uint32) error {
	return ignoreMissing(fmt.Sprintf("service info %d", id), k.objs.SluiceSvcInfo.Delete(&id))
}

// ServiceInfos returns the agent's description of every service ID.
func (k *Kernel) ServiceInfos() (map[uint32]ServiceInfo, error) {
	out := map[uint32]ServiceInfo{}
	var id uint32
	var v datapath.SluiceSvcInfo
	it := k.objs.SluiceSvcInfo.Iterate()
	for it.Next(&id, &v) {
		info := ServiceInfo{Name: cString(v.Name[:]), NodePort: v.NodePort, Proto: lb.Proto(v.Proto), Updated: time.Unix(0, int64(v.UpdatedNs)),
			ExternalLocal: v.Flags&infoExternalLocal != 0, Scope: (v.Flags & infoScopeMask) >> infoScopeShift}
		if v.Flags&infoIPv6 != 0 {
			info.Family = lb.IPv6
		}
		out[id] = info
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump service info: %w", err)
	}
	return out, nil
}

// DeviceInfo is one device the agent attached to.
type DeviceInfo struct {
	Name          string
	Ifindex       int
	XDPMode       string // native, generic, or off
	XDPReason     string // why (datapath.ModeReason's name): flag, veth, native-driver, ...
	TCMode        string // tcx or clsact
	XDPProg       uint32 // program IDs; 0 where nothing is attached
	TCIngressProg uint32
	TCEgressProg  uint32
}

// AgentInfo describes the running agent and how it loaded the datapath.
type AgentInfo struct {
	Version string
	Object  string // datapath.ObjectHash of the object it loaded
	Started time.Time
	PID     int
	Devices []DeviceInfo
	Config  datapath.Config // the settings the programs were loaded with (not the pin path)
}

var xdpModes = []string{"off", "native", "generic"}
var tcModes = []string{"", "tcx", "clsact"}

func modeIndex(modes []string, m string) uint8 {
	for i, s := range modes {
		if s == m {
			return uint8(i)
		}
	}
	return 0
}

func modeName(modes []string, i uint8) string {
	if int(i) < len(modes) {
		return modes[i]
	}
	return fmt.Sprintf("mode-%d", i)
}

// WriteAgentInfo records the agent. Devices past the first eight are not recorded.
func (k *Kernel) WriteAgentInfo(a AgentInfo) error {
	var v datapath.SluiceAgentInfo
	putCString(v.Version[:], a.Version)
	putCString(v.Object[:], a.Object)
	v.StartedNs, v.Pid = uint64(a.Started.UnixNano()), uint32(a.PID)
	for i, d := range a.Devices {
		if i == len(v.Devices) {
			break
		}
		dv := &v.Devices[i]
		putCString(dv.Name[:], d.Name)
		dv.Ifindex, dv.XdpProgId, dv.TcIngressProgId, dv.TcEgressProgId = uint32(d.Ifindex), d.XDPProg, d.TCIngressProg, d.TCEgressProg
		dv.XdpMode, dv.TcMode = modeIndex(xdpModes, d.XDPMode), modeIndex(tcModes, d.TCMode)
		dv.XdpReason = uint8(datapath.ParseModeReason(d.XDPReason))
		v.Ndevices++
	}
	c := a.Config
	v.SnatPortMin, v.SnatPortMax = c.SNATPortMin, c.SNATPortMax
	v.CtTcpTimeoutS, v.CtCloseTimeoutS = uint32(c.CTTCPTimeout/time.Second), uint32(c.CTCloseTimeout/time.Second)
	v.CtSynTimeoutS, v.CtUdpTimeoutS = uint32(c.CTSYNTimeout/time.Second), uint32(c.CTUDPTimeout/time.Second)
	v.SnatReuseS, v.MaxServices, v.MaglevSize = uint32(c.SNATReuse/time.Second), c.MaxServices, c.MaglevSize
	zero := uint32(0)
	if err := k.objs.SluiceAgent.Update(&zero, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write agent info: %w", err)
	}
	return nil
}

// AgentInfo reads what the agent recorded; Version is empty if no agent ever ran.
func (k *Kernel) AgentInfo() (AgentInfo, error) {
	var v datapath.SluiceAgentInfo
	zero := uint32(0)
	if err := k.objs.SluiceAgent.Lookup(&zero, &v); err != nil {
		return AgentInfo{}, fmt.Errorf("read agent info: %w", err)
	}
	a := AgentInfo{Version: cString(v.Version[:]), Object: cString(v.Object[:]), PID: int(v.Pid)}
	if v.StartedNs != 0 {
		a.Started = time.Unix(0, int64(v.StartedNs))
	}
	for i := 0; i < int(v.Ndevices) && i < len(v.Devices); i++ {
		d := v.Devices[i]
		a.Devices = append(a.Devices, DeviceInfo{Name: cString(d.Name[:]), Ifindex: int(d.Ifindex),
			XDPMode: modeName(xdpModes, d.XdpMode), TCMode: modeName(tcModes, d.TcMode), XDPReason: datapath.ModeReason(d.XdpReason).String(),
			XDPProg: d.XdpProgId, TCIngressProg: d.TcIngressProgId, TCEgressProg: d.TcEgressProgId})
	}
	a.Config = datapath.Config{
		SNATPortMin: v.SnatPortMin, SNATPortMax: v.SnatPortMax, MaxServices: v.MaxServices, MaglevSize: v.MaglevSize,
		CTTCPTimeout: time.Duration(v.CtTcpTimeoutS) * time.Second, CTCloseTimeout: time.Duration(v.CtCloseTimeoutS) * time.Second,
		CTSYNTimeout: time.Duration(v.CtSynTimeoutS) * time.Second, CTUDPTimeout: time.Duration(v.CtUdpTimeoutS) * time.Second,
		SNATReuse: time.Duration(v.SnatReuseS) * time.Second,
	}
	return a, nil
}

// Connection-table flags, mirroring CT_F_* in bpf/lib/maps.h.
const (
	CTIngress = 0x01
	CTEgress  = 0x02
	CTLocal   = 0x04
	CTReply   = 0x08
	CTClosing = 0x10
	CTSYN     = 0x20
	CTFIN     = 0x40
	// CTKernel marks a flow the kernel NATs, tracked so that no SNAT flow takes its port.
	CTKernel = 0x80
)

// CTEntry is one connection-table entry: packets carrying Src->Dst are rewritten to
// NatSrc->NatDst.
type CTEntry struct {
	Src, Dst       netip.AddrPort
	Proto          lb.Proto
	NatSrc, NatDst netip.AddrPort
	ServiceID      uint32
	BackendID      uint32
	Flags          uint8
	LastSeen       time.Duration // CLOCK_MONOTONIC
}

// Conntrack calls fn for every entry until it returns false.
func (k *Kernel) Conntrack(fn func(CTEntry) bool) error {
	var key datapath.SluiceCtKey
	var v datapath.SluiceCtEntry
	it := k.objs.SluiceCt.Iterate()
	for it.Next(&key, &v) {
		e := CTEntry{
			Src:       netip.AddrPortFrom(AddrFrom4(key.Saddr), PortFrom16(key.Sport)),
			Dst:       netip.AddrPortFrom(AddrFrom4(key.Daddr), PortFrom16(key.Dport)),
			Proto:     lb.Proto(key.Proto),
			NatSrc:    netip.AddrPortFrom(AddrFrom4(v.NatSaddr), PortFrom16(v.NatSport)),
			NatDst:    netip.AddrPortFrom(AddrFrom4(v.NatDaddr), PortFrom16(v.NatDport)),
			ServiceID: v.SvcId, BackendID: v.BackendId, Flags: v.Flags,
			LastSeen: time.Duration(v.LastSeen),
		}
		if !fn(e) {
			return nil
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return fmt.Errorf("dump conntrack: %w", err)
	}
	return k.conntrack6(fn)
}

// MapFill is a map's use.
type MapFill struct {
	Name       string
	Entries    int
	MaxEntries uint32
}

// Fill counts the entries of the agent-written and conntrack maps. Arrays are always full and
// are not listed.
func (k *Kernel) Fill() ([]MapFill, error) {
	out, err := fill(nil, []namedMap{
		{datapath.SluiceMapSluiceFrontends, k.objs.SluiceFrontends},
		{datapath.SluiceMapSluiceSlots, k.objs.SluiceSlots},
		{datapath.SluiceMapSluiceBackends, k.objs.SluiceBackends},
		{datapath.SluiceMapSluiceSvcInfo, k.objs.SluiceSvcInfo},
		{datapath.SluiceMapSluiceCt, k.objs.SluiceCt},
		{datapath.SluiceMapSluiceAffinity, k.objs.SluiceAffinity},
		{datapath.SluiceMapSluiceAffinityMatch, k.objs.SluiceAffinityMatch},
		{datapath.SluiceMapSluiceSourceRanges, k.objs.SluiceSourceRanges},
		{datapath.SluiceMapSluiceMaglev, k.objs.SluiceMaglev},
	})
	if err != nil {
		return nil, err
	}
	return k.fill6(out)
}

type namedMap struct {
	name string
	m    *ebpf.Map
}

// fill adds each map's use to out.
func fill(out []MapFill, ms []namedMap) ([]MapFill, error) {
	for _, m := range ms {
		n, err := count(m.m)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", m.name, err)
		}
		out = append(out, MapFill{Name: m.name, Entries: n, MaxEntries: m.m.MaxEntries()})
	}
	return out, nil
}

func count(m *ebpf.Map) (int, error) {
	keys := make([]byte, m.KeySize())
	var n int
	it := m.Iterate()
	var v []byte
	for it.Next(&keys, &v) {
		n++
	}
	return n, it.Err()
}
