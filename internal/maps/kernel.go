package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
)

// Backend flags, mirroring BACKEND_F_* in bpf/lib/maps.h.
const (
	backendLocal       = 0x01
	backendTerminating = 0x02
)

// ErrFull is returned when a map has no room for a new entry.
var ErrFull = errors.New("map is full")

// Kernel implements Maps on the loaded datapath's maps.
type Kernel struct {
	objs  *datapath.SluiceMaps
	v6    *datapath.Sluice6Maps // nil: IPv4 only (kernel6.go)
	batch *batch                // buffered updates between Begin and Flush
	// MaglevSize is the entries of each Maglev table, as the datapath was loaded with
	// (0: DefaultMaglevSize).
	MaglevSize uint32
}

// NewKernel wraps the datapath's maps.
func NewKernel(m *datapath.SluiceMaps) *Kernel { return &Kernel{objs: m} }

// Addr4 converts an IPv4 address to the datapath's network-order u32 (as stored by the host).
func Addr4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// AddrFrom4 converts the datapath's u32 back.
func AddrFrom4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// Port16 converts a host-order port to network order as the datapath stores it.
func Port16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// PortFrom16 converts a stored network-order port back to host order.
func PortFrom16(v uint16) uint16 { return Port16(v) }

func frontendKey(k lb.FrontendKey) datapath.SluiceFrontendKey {
	fk := datapath.SluiceFrontendKey{Addr: Addr4(k.Addr), Port: Port16(k.Port), Proto: uint8(k.Proto)}
	if k.Socket {
		fk.Scope = scopeSock
	}
	return fk
}

// frontend_key.scope (FE_SCOPE_*)
const scopeSock = 1

func backendValue(b lb.Backend) datapath.SluiceBackend {
	v := datapath.SluiceBackend{Addr: Addr4(b.Addr), Port: Port16(b.Port)}
	if b.Local {
		v.Flags |= backendLocal
	}
	if b.Terminating {
		v.Flags |= backendTerminating
	}
	return v
}

func wrapUpdate(what string, err error) error {
	if err == nil {
		return nil
	}
	// A full hash map answers E2BIG (ENOSPC for some types).
	if errors.Is(err, errTooBig) || errors.Is(err, errNoSpace) {
		return fmt.Errorf("update %s: %w", what, ErrFull)
	}
	return fmt.Errorf("update %s: %w", what, err)
}

func ignoreMissing(what string, err error) error {
	if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return fmt.Errorf("delete %s: %w", what, err)
}

func (k *Kernel) UpdateFrontend(key lb.FrontendKey, v lb.Frontend) error {
	if is6(key.Addr) {
		return k.updateFrontend6(key, v)
	}
	val := datapath.SluiceFrontend{SvcId: v.ServiceID, Count: v.Count, Flags: uint16(v.Flags), AffinityTimeoutS: v.AffinityTimeout}
	if v.SNATAddr.Is4() {
		val.SnatAddr = Addr4(v.SNATAddr)
	}
	fk := frontendKey(key)
	if b := k.batch; b != nil {
		b.frontKeys, b.frontVals = append(b.frontKeys, fk), append(b.frontVals, val)
		return nil
	}
	return wrapUpdate("frontend "+key.String(), k.objs.SluiceFrontends.Update(&fk, &val, ebpf.UpdateAny))
}

func (k *Kernel) DeleteFrontend(key lb.FrontendKey) error {
	if is6(key.Addr) {
		return k.deleteFrontend6(key)
	}
	fk := frontendKey(key)
	return ignoreMissing("frontend "+key.String(), k.objs.SluiceFrontends.Delete(&fk))
}

func (k *Kernel) UpdateSlot(key SlotKey, id uint32) error {
	sk := datapath.SluiceSlotKey{SvcId: key.ServiceID, Slot: key.Slot}
	if b := k.batch; b != nil {
		b.slotKeys, b.slotVals = append(b.slotKeys, sk), append(b.slotVals, id)
		return nil
	}
	return wrapUpdate(fmt.Sprintf("slot %d/%d", key.ServiceID, key.Slot), k.objs.SluiceSlots.Update(&sk, &id, ebpf.UpdateAny))
}

func (k *Kernel) DeleteSlot(key SlotKey) error {
	sk := datapath.SluiceSlotKey{SvcId: key.ServiceID, Slot: key.Slot}
	return ignoreMissing(fmt.Sprintf("slot %d/%d", key.ServiceID, key.Slot), k.objs.SluiceSlots.Delete(&sk))
}

func (k *Kernel) UpdateBackend(id uint32, b lb.Backend) error {
	if is6(b.Addr) {
		return k.updateBackend6(id, b)
	}
	v := backendValue(b)
	if bt := k.batch; bt != nil {
		bt.beKeys, bt.beVals = append(bt.beKeys, id), append(bt.beVals, v)
		return nil
	}
	return wrapUpdate(fmt.Sprintf("backend %d", id), k.objs.SluiceBackends.Update(&id, &v, ebpf.UpdateAny))
}

func (k *Kernel) DeleteBackend(id uint32) error {
	return errors.Join(ignoreMissing(fmt.Sprintf("backend %d", id), k.objs.SluiceBackends.Delete(&id)), k.deleteBackend6(id))
}

func (k *Kernel) SetFrontendPort(port uint16) error {
	return k.setBit(k.objs.SluiceFrontendPorts, port, "frontend port")
}

func (k *Kernel) SetBackendPort(port uint16) error {
	return k.setBit(k.objs.SluiceBackendPorts, port, "backend port")
}

// setBit sets a port's bit (buffered per word in a batch); the agent is the only writer, so read-modify-write is safe.
func (k *Kernel) setBit(m *ebpf.Map, port uint16, what string) error {
	word := uint32(port) >> 5
	var v uint32
	if b := k.batch; b != nil {
		words := b.portWords[m]
		if words == nil {
			words = map[uint32]uint32{}
			b.portWords[m] = words
		}
		cur, ok := words[word]
		if !ok {
			if err := m.Lookup(&word, &cur); err != nil {
				return fmt.Errorf("read %s %d: %w", what, port, err)
			}
		}
		words[word] = cur | 1<<(port&31)
		return nil
	}
	if err := m.Lookup(&word, &v); err != nil {
		return fmt.Errorf("read %s %d: %w", what, port, err)
	}
	bit := uint32(1) << (port & 31)
	if v&bit != 0 {
		return nil
	}
	v |= bit
	if err := m.Update(&word, &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("set %s %d: %w", what, port, err)
	}
	return nil
}

func (k *Kernel) ResetServiceStats(id uint32) error {
	zero := make([]datapath.SluiceSvcStats, ebpf.MustPossibleCPU())
	if err := k.objs.SluiceSvcStats.Update(&id, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset stats of service %d: %w", id, err)
	}
	return nil
}

func (k *Kernel) Frontends() (map[lb.FrontendKey]lb.Frontend, error) {
	out := map[lb.FrontendKey]lb.Frontend{}
	var key datapath.SluiceFrontendKey
	var val datapath.SluiceFrontend
	it := k.objs.SluiceFrontends.Iterate()
	for it.Next(&key, &val) {
		fk := lb.FrontendKey{Addr: AddrFrom4(key.Addr), Port: PortFrom16(key.Port), Proto: lb.Proto(key.Proto), Socket: key.Scope == scopeSock}
		out[fk] = frontendFrom(val)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump frontends: %w", err)
	}
	if err := k.frontends6(out); err != nil {
		return nil, err
	}
	return out, nil
}

func (k *Kernel) Slots() (map[SlotKey]uint32, error) {
	out := map[SlotKey]uint32{}
	var key datapath.SluiceSlotKey
	var val uint32
	it := k.objs.SluiceSlots.Iterate()
	for it.Next(&key, &val) {
		out[SlotKey{ServiceID: key.SvcId, Slot: key.Slot}] = val
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump slots: %w", err)
	}
	return out, nil
}

func (k *Kernel) Backends() (map[uint32]lb.Backend, error) {
	out := map[uint32]lb.Backend{}
	var key uint32
	var val datapath.SluiceBackend
	it := k.objs.SluiceBackends.Iterate()
	for it.Next(&key, &val) {
		out[key] = lb.Backend{Addr: AddrFrom4(val.Addr), Port: PortFrom16(val.Port),
			Local: val.Flags&backendLocal != 0, Terminating: val.Flags&backendTerminating != 0}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump backends: %w", err)
	}
	if err := k.backends6(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ServiceStats sums a service's per-CPU counters.
func (k *Kernel) ServiceStats(id uint32) (ServiceStats, error) {
	var per []datapath.SluiceSvcStats
	if err := k.objs.SluiceSvcStats.Lookup(&id, &per); err != nil {
		return ServiceStats{}, fmt.Errorf("read stats of service %d: %w", id, err)
	}
	var s ServiceStats
	for _, c := range per {
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.ReplyPackets += c.ReplyPackets
		s.ReplyBytes += c.ReplyBytes
		s.Rejected += c.Rejected
	}
	return s, nil
}

// Reasons sums the per-CPU reason counters.
func (k *Kernel) Reasons() (map[Reason]uint64, error) {
	out := map[Reason]uint64{}
	for r := range ReasonNames {
		var per []uint64
		if err := k.objs.SluiceReasons.Lookup(&r, &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", ReasonNames[r], err)
		}
		for _, v := range per {
			out[r] += v
		}
	}
	return out, nil
}

// LookupFrontend reads one frontend.
func (k *Kernel) LookupFrontend(key lb.FrontendKey) (lb.Frontend, bool) {
	if is6(key.Addr) {
		return k.lookupFrontend6(key)
	}
	fk := frontendKey(key)
	var v datapath.SluiceFrontend
	if err := k.objs.SluiceFrontends.Lookup(&fk, &v); err != nil {
		return lb.Frontend{}, false
	}
	return frontendFrom(v), true
}

// LookupSlotBackend reads the backend in one slot.
func (k *Kernel) LookupSlotBackend(key SlotKey) (lb.Backend, bool) {
	sk := datapath.SluiceSlotKey{SvcId: key.ServiceID, Slot: key.Slot}
	var id uint32
	if err := k.objs.SluiceSlots.Lookup(&sk, &id); err != nil {
		return lb.Backend{}, false
	}
	var v datapath.SluiceBackend
	if err := k.objs.SluiceBackends.Lookup(&id, &v); err != nil {
		return k.lookupBackend6(id)
	}
	return lb.Backend{Addr: AddrFrom4(v.Addr), Port: PortFrom16(v.Port), Local: v.Flags&backendLocal != 0, Terminating: v.Flags&backendTerminating != 0}, true
}

func frontendFrom(v datapath.SluiceFrontend) lb.Frontend {
	fe := lb.Frontend{ServiceID: v.SvcId, Count: v.Count, Flags: lb.FrontendFlags(v.Flags), AffinityTimeout: v.AffinityTimeoutS}
	if v.SnatAddr != 0 {
		fe.SNATAddr = AddrFrom4(v.SnatAddr)
	}
	return fe
}
