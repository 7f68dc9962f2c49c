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

// IPv6: frontends and backends with IPv6 addresses go to the IPv6 object's maps
// (datapath.IPv6), the rest to IPv4's as before. Slots, service info, counters and port bitmaps
// are one set both families share. Without the IPv6 maps (WithIPv6 not called) an IPv6 entry is
// refused with ErrNoIPv6, never written into an IPv4 map.

// ErrNoIPv6 is returned for an IPv6 entry when the IPv6 datapath is not loaded.
var ErrNoIPv6 = errors.New("IPv6 datapath not loaded")

// WithIPv6 has k write IPv6 entries to m (the loaded datapath.IPv6's maps).
func (k *Kernel) WithIPv6(m *datapath.Sluice6Maps) *Kernel {
	k.v6 = m
	return k
}

// Addr6 converts an IPv6 address to the datapath's 16 bytes in network order.
func Addr6(a netip.Addr) datapath.Sluice6AddrT { return datapath.Sluice6AddrT{B: a.As16()} }

func is6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

func frontendKey6(k lb.FrontendKey) datapath.Sluice6FrontendKey {
	fk := datapath.Sluice6FrontendKey{Addr: Addr6(k.Addr), Port: Port16(k.Port), Proto: uint8(k.Proto)}
	if k.Socket {
		fk.Scope = scopeSock
	}
	return fk
}

func frontendValue6(v lb.Frontend) datapath.Sluice6Frontend {
	val := datapath.Sluice6Frontend{SvcId: v.ServiceID, Count: v.Count, Flags: uint16(v.Flags), AffinityTimeoutS: v.AffinityTimeout}
	if is6(v.SNATAddr) {
		val.SnatAddr = Addr6(v.SNATAddr)
	}
	return val
}

func frontendFrom6(v datapath.Sluice6Frontend) lb.Frontend {
	fe := lb.Frontend{ServiceID: v.SvcId, Count: v.Count, Flags: lb.FrontendFlags(v.Flags), AffinityTimeout: v.AffinityTimeoutS}
	if a := netip.AddrFrom16(v.SnatAddr.B); !a.IsUnspecified() {
		fe.SNATAddr = a
	}
	return fe
}

func backendValue6(b lb.Backend) datapath.Sluice6Backend {
	v := datapath.Sluice6Backend{Addr: Addr6(b.Addr), Port: Port16(b.Port)}
	if b.Local {
		v.Flags |= backendLocal
	}
	if b.Terminating {
		v.Flags |= backendTerminating
	}
	return v
}

func backendFrom6(v datapath.Sluice6Backend) lb.Backend {
	return lb.Backend{Addr: netip.AddrFrom16(v.Addr.B), Port: PortFrom16(v.Port),
		Local: v.Flags&backendLocal != 0, Terminating: v.Flags&backendTerminating != 0}
}

func (k *Kernel) updateFrontend6(key lb.FrontendKey, v lb.Frontend) error {
	if k.v6 == nil {
		return fmt.Errorf("update frontend %s: %w", key, ErrNoIPv6)
	}
	fk, val := frontendKey6(key), frontendValue6(v)
	if b := k.batch; b != nil {
		b.front6Keys, b.front6Vals = append(b.front6Keys, fk), append(b.front6Vals, val)
		return nil
	}
	return wrapUpdate("frontend "+key.String(), k.v6.SluiceFrontends6.Update(&fk, &val, ebpf.UpdateAny))
}

func (k *Kernel) deleteFrontend6(key lb.FrontendKey) error {
	if k.v6 == nil {
		return nil // nothing can have been written
	}
	fk := frontendKey6(key)
	return ignoreMissing("frontend "+key.String(), k.v6.SluiceFrontends6.Delete(&fk))
}

func (k *Kernel) lookupFrontend6(key lb.FrontendKey) (lb.Frontend, bool) {
	if k.v6 == nil {
		return lb.Frontend{}, false
	}
	fk := frontendKey6(key)
	var v datapath.Sluice6Frontend
	if err := k.v6.SluiceFrontends6.Lookup(&fk, &v); err != nil {
		return lb.Frontend{}, false
	}
	return frontendFrom6(v), true
}

func (k *Kernel) updateBackend6(id uint32, b lb.Backend) error {
	if k.v6 == nil {
		return fmt.Errorf("update backend %d: %w", id, ErrNoIPv6)
	}
	v := backendValue6(b)
	if bt := k.batch; bt != nil {
		bt.be6Keys, bt.be6Vals = append(bt.be6Keys, id), append(bt.be6Vals, v)
		return nil
	}
	return wrapUpdate(fmt.Sprintf("backend %d", id), k.v6.SluiceBackends6.Update(&id, &v, ebpf.UpdateAny))
}

// deleteBackend6: a backend ID is one family's, whichever; deleting it from both is simplest.
func (k *Kernel) deleteBackend6(id uint32) error {
	if k.v6 == nil {
		return nil
	}
	return ignoreMissing(fmt.Sprintf("backend %d", id), k.v6.SluiceBackends6.Delete(&id))
}

func (k *Kernel) lookupBackend6(id uint32) (lb.Backend, bool) {
	if k.v6 == nil {
		return lb.Backend{}, false
	}
	var v datapath.Sluice6Backend
	if err := k.v6.SluiceBackends6.Lookup(&id, &v); err != nil {
		return lb.Backend{}, false
	}
	return backendFrom6(v), true
}

// frontends6 and backends6 add IPv6 entries to Frontends and Backends.
func (k *Kernel) frontends6(out map[lb.FrontendKey]lb.Frontend) error {
	if k.v6 == nil {
		return nil
	}
	var key datapath.Sluice6FrontendKey
	var val datapath.Sluice6Frontend
	it := k.v6.SluiceFrontends6.Iterate()
	for it.Next(&key, &val) {
		fk := lb.FrontendKey{Addr: netip.AddrFrom16(key.Addr.B), Port: PortFrom16(key.Port), Proto: lb.Proto(key.Proto), Socket: key.Scope == scopeSock}
		out[fk] = frontendFrom6(val)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("dump IPv6 frontends: %w", err)
	}
	return nil
}

func (k *Kernel) backends6(out map[uint32]lb.Backend) error {
	if k.v6 == nil {
		return nil
	}
	var key uint32
	var val datapath.Sluice6Backend
	it := k.v6.SluiceBackends6.Iterate()
	for it.Next(&key, &val) {
		out[key] = backendFrom6(val)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("dump IPv6 backends: %w", err)
	}
	return nil
}

// flushFlows6 is FlushFlows on the IPv6 connection table.
func (k *Kernel) flushFlows6(proto lb.Proto, gone map[FlowTarget]bool) (int, error) {
	if k.v6 == nil {
		return 0, nil
	}
	var keys []datapath.Sluice6CtKey
	var key datapath.Sluice6CtKey
	var v datapath.Sluice6CtEntry
	it := k.v6.SluiceCt6.Iterate()
	for it.Next(&key, &v) {
		if lb.Proto(key.Proto) != proto || v.SvcId == 0 {
			continue
		}
		be := netip.AddrPortFrom(netip.AddrFrom16(v.NatDaddr.B), PortFrom16(v.NatDport))
		if v.Flags&CTReply != 0 {
			be = netip.AddrPortFrom(netip.AddrFrom16(key.Saddr.B), PortFrom16(key.Sport))
		}
		if gone[FlowTarget{ServiceID: v.SvcId, Backend: be}] {
			keys = append(keys, key)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("dump IPv6 conntrack: %w", err)
	}
	n := 0
	for i := range keys {
		if err := k.v6.SluiceCt6.Delete(&keys[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete IPv6 flow: %w", err)
		}
	}
	return n, nil
}

// conntrack6 is Conntrack on the IPv6 connection table.
func (k *Kernel) conntrack6(fn func(CTEntry) bool) error {
	if k.v6 == nil {
		return nil
	}
	var key datapath.Sluice6CtKey
	var v datapath.Sluice6CtEntry
	it := k.v6.SluiceCt6.Iterate()
	for it.Next(&key, &v) {
		e := CTEntry{
			Src:       netip.AddrPortFrom(netip.AddrFrom16(key.Saddr.B), PortFrom16(key.Sport)),
			Dst:       netip.AddrPortFrom(netip.AddrFrom16(key.Daddr.B), PortFrom16(key.Dport)),
			Proto:     lb.Proto(key.Proto),
			NatSrc:    netip.AddrPortFrom(netip.AddrFrom16(v.NatSaddr.B), PortFrom16(v.NatSport)),
			NatDst:    netip.AddrPortFrom(netip.AddrFrom16(v.NatDaddr.B), PortFrom16(v.NatDport)),
			ServiceID: v.SvcId, BackendID: v.BackendId, Flags: v.Flags,
			LastSeen: time.Duration(v.LastSeen),
		}
		if !fn(e) {
			return nil
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return fmt.Errorf("dump IPv6 conntrack: %w", err)
	}
	return nil
}

// fill6 adds the IPv6 maps' use to Fill's.
func (k *Kernel) fill6(out []MapFill) ([]MapFill, error) {
	if k.v6 == nil {
		return out, nil
	}
	return fill(out, []namedMap{
		{datapath.Sluice6MapSluiceFrontends6, k.v6.SluiceFrontends6},
		{datapath.Sluice6MapSluiceBackends6, k.v6.SluiceBackends6},
		{datapath.Sluice6MapSluiceCt6, k.v6.SluiceCt6},
		{datapath.Sluice6MapSluiceAffinity6, k.v6.SluiceAffinity6},
		{datapath.Sluice6MapSluiceSourceRanges6, k.v6.SluiceSourceRanges6},
	})
}

// affinities6 adds the IPv6 session-affinity entries to Affinities'.
func (k *Kernel) affinities6(out []Affinity) ([]Affinity, error) {
	if k.v6 == nil {
		return out, nil
	}
	var key datapath.Sluice6AffinityKey
	var val datapath.Sluice6Affinity
	it := k.v6.SluiceAffinity6.Iterate()
	for it.Next(&key, &val) {
		out = append(out, Affinity{ServiceID: key.SvcId, BackendID: val.BackendId, Client: netip.AddrFrom16(key.Client.B), LastSeen: time.Duration(val.LastSeen)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump IPv6 session affinity: %w", err)
	}
	return out, nil
}
