package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
)

// DefaultMaglevSize is the datapath's default Maglev table size (datapath.Config.MaglevSize).
const DefaultMaglevSize = 16381

func (m AffinityMatch) key() datapath.SluiceAffinityMatch {
	return datapath.SluiceAffinityMatch{SvcId: m.ServiceID, BackendId: m.BackendID}
}

func (m AffinityMatch) String() string { return fmt.Sprintf("%d/%d", m.ServiceID, m.BackendID) }

func (r SourceRange) key() datapath.SluiceSourceRange {
	var svc [4]byte
	binary.BigEndian.PutUint32(svc[:], r.ServiceID)
	p := r.Prefix.Masked()
	return datapath.SluiceSourceRange{Prefixlen: 32 + uint32(p.Bits()), SvcId: binary.NativeEndian.Uint32(svc[:]), Addr: Addr4(p.Addr())}
}

// key6 is IPv6's: the service ID, then the 128-bit address.
func (r SourceRange) key6() datapath.Sluice6SourceRange {
	var svc [4]byte
	binary.BigEndian.PutUint32(svc[:], r.ServiceID)
	p := r.Prefix.Masked()
	return datapath.Sluice6SourceRange{Prefixlen: 32 + uint32(p.Bits()), SvcId: binary.NativeEndian.Uint32(svc[:]), Addr: Addr6(p.Addr())}
}

func (r SourceRange) String() string { return fmt.Sprintf("%d %s", r.ServiceID, r.Prefix) }

func (k *Kernel) UpdateAffinityMatch(m AffinityMatch) error {
	key, one := m.key(), uint8(1)
	return wrapUpdate("affinity backend "+m.String(), k.objs.SluiceAffinityMatch.Update(&key, &one, ebpf.UpdateAny))
}

func (k *Kernel) DeleteAffinityMatch(m AffinityMatch) error {
	key := m.key()
	return ignoreMissing("affinity backend "+m.String(), k.objs.SluiceAffinityMatch.Delete(&key))
}

func (k *Kernel) UpdateSourceRange(r SourceRange) error {
	if is6(r.Prefix.Addr()) {
		if k.v6 == nil {
			return fmt.Errorf("update source range %s: %w", r, ErrNoIPv6)
		}
		key, one := r.key6(), uint8(1)
		return wrapUpdate("source range "+r.String(), k.v6.SluiceSourceRanges6.Update(&key, &one, ebpf.UpdateAny))
	}
	if !r.Prefix.Addr().Is4() {
		return fmt.Errorf("update source range %s: not an IP prefix", r)
	}
	key, one := r.key(), uint8(1)
	return wrapUpdate("source range "+r.String(), k.objs.SluiceSourceRanges.Update(&key, &one, ebpf.UpdateAny))
}

func (k *Kernel) DeleteSourceRange(r SourceRange) error {
	if is6(r.Prefix.Addr()) {
		if k.v6 == nil {
			return nil
		}
		key := r.key6()
		return ignoreMissing("source range "+r.String(), k.v6.SluiceSourceRanges6.Delete(&key))
	}
	key := r.key()
	return ignoreMissing("source range "+r.String(), k.objs.SluiceSourceRanges.Delete(&key))
}

// MaglevSizer is implemented by maps that know the length of their Maglev tables.
type MaglevSizer interface{ MaglevTableSize() uint32 }

// MaglevTableSize is the length every table must have (UpdateMaglev refuses others).
func (k *Kernel) MaglevTableSize() uint32 {
	if k.MaglevSize == 0 {
		return DefaultMaglevSize
	}
	return k.MaglevSize
}

// UpdateMaglev fills a new inner map and puts it in the outer map in one update, so a packet
// reads a whole old table or a whole new one.
func (k *Kernel) UpdateMaglev(svcID uint32, table []uint32) error {
	size := k.MaglevTableSize()
	if len(table) != int(size) {
		return fmt.Errorf("update maglev table %d: %d entries, the datapath's tables have %d", svcID, len(table), size)
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: size})
	if err != nil {
		return fmt.Errorf("create maglev table %d: %w", svcID, err)
	}
	defer inner.Close()
	keys := make([]uint32, size)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := inner.BatchUpdate(keys, table, nil); err != nil {
		// Kernels without array batch ops (before 5.6) write one by one.
		for i := range keys {
			if err := inner.Update(&keys[i], &table[i], ebpf.UpdateAny); err != nil {
				return fmt.Errorf("fill maglev table %d: %w", svcID, err)
			}
		}
	}
	return wrapUpdate(fmt.Sprintf("maglev table %d", svcID), k.objs.SluiceMaglev.Update(&svcID, inner, ebpf.UpdateAny))
}

func (k *Kernel) DeleteMaglev(svcID uint32) error {
	return ignoreMissing(fmt.Sprintf("maglev table %d", svcID), k.objs.SluiceMaglev.Delete(&svcID))
}

func (k *Kernel) AffinityMatches() (map[AffinityMatch]bool, error) {
	out := map[AffinityMatch]bool{}
	var key datapath.SluiceAffinityMatch
	var one uint8
	it := k.objs.SluiceAffinityMatch.Iterate()
	for it.Next(&key, &one) {
		out[AffinityMatch{ServiceID: key.SvcId, BackendID: key.BackendId}] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump affinity backends: %w", err)
	}
	return out, nil
}

func (k *Kernel) SourceRanges() (map[SourceRange]bool, error) {
	out := map[SourceRange]bool{}
	var key datapath.SluiceSourceRange
	var one uint8
	it := k.objs.SluiceSourceRanges.Iterate()
	for it.Next(&key, &one) {
		var svc [4]byte
		binary.NativeEndian.PutUint32(svc[:], key.SvcId)
		p := netip.PrefixFrom(AddrFrom4(key.Addr), int(key.Prefixlen)-32)
		out[SourceRange{ServiceID: binary.BigEndian.Uint32(svc[:]), Prefix: p}] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump source ranges: %w", err)
	}
	if k.v6 != nil {
		var key datapath.Sluice6SourceRange
		it := k.v6.SluiceSourceRanges6.Iterate()
		for it.Next(&key, &one) {
			var svc [4]byte
			binary.NativeEndian.PutUint32(svc[:], key.SvcId)
			p := netip.PrefixFrom(netip.AddrFrom16(key.Addr.B), int(key.Prefixlen)-32)
			out[SourceRange{ServiceID: binary.BigEndian.Uint32(svc[:]), Prefix: p}] = true
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("dump IPv6 source ranges: %w", err)
		}
	}
	return out, nil
}

func (k *Kernel) MaglevTables() (map[uint32][]uint32, error) {
	out := map[uint32][]uint32{}
	var svc, innerID uint32
	it := k.objs.SluiceMaglev.Iterate()
	for it.Next(&svc, &innerID) {
		inner, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
		if err != nil {
			return nil, fmt.Errorf("open maglev table %d: %w", svc, err)
		}
		var table []uint32
		var i, v uint32
		iit := inner.Iterate()
		for iit.Next(&i, &v) {
			table = append(table, v)
		}
		err = iit.Err()
		inner.Close()
		if err != nil {
			return nil, fmt.Errorf("dump maglev table %d: %w", svc, err)
		}
		out[svc] = table
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump maglev tables: %w", err)
	}
	return out, nil
}

// Affinity is a client's remembered backend for a service.
type Affinity struct {
	ServiceID, BackendID uint32
	Client               netip.Addr
	// LastSeen is the client's last new flow, in bpf_ktime_get_ns (CLOCK_MONOTONIC) time.
	LastSeen time.Duration
}

// Affinities returns the session-affinity entries, expired ones included (the LRU drops them
// when it needs room).
func (k *Kernel) Affinities() ([]Affinity, error) {
	var out []Affinity
	var key datapath.SluiceAffinityKey
	var val datapath.SluiceAffinity
	it := k.objs.SluiceAffinity.Iterate()
	for it.Next(&key, &val) {
		out = append(out, Affinity{ServiceID: key.SvcId, BackendID: val.BackendId, Client: AddrFrom4(key.Client), LastSeen: time.Duration(val.LastSeen)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump session affinity: %w", err)
	}
	return k.affinities6(out)
}

// FlowTarget names the flows of a service to one endpoint, by address: the endpoint's backend
// ID may already be gone, and given to another backend, when its flows are flushed.
type FlowTarget struct {
	ServiceID uint32
	Backend   netip.AddrPort
}

func (f FlowTarget) String() string { return fmt.Sprintf("%d/%s", f.ServiceID, f.Backend) }

// FlushFlows deletes the connection-table entries (both directions) of the flows of proto
// that each (service, endpoint) pair in gone names, and returns how many entries went.
// kube-proxy does the same for UDP when an endpoint stops serving, so that a client that keeps
// its source port (DNS, say) reaches a live endpoint instead of the old one until its flow
// times out. A flow's forward entry holds the endpoint as its rewritten destination, its
// reverse entry as its key's source.
func (k *Kernel) FlushFlows(proto lb.Proto, gone map[FlowTarget]bool) (int, error) {
	if len(gone) == 0 {
		return 0, nil
	}
	var keys []datapath.SluiceCtKey
	var key datapath.SluiceCtKey
	var v datapath.SluiceCtEntry
	it := k.objs.SluiceCt.Iterate()
	for it.Next(&key, &v) {
		if lb.Proto(key.Proto) != proto || v.SvcId == 0 {
			continue
		}
		be := netip.AddrPortFrom(AddrFrom4(v.NatDaddr), PortFrom16(v.NatDport))
		if v.Flags&CTReply != 0 {
			be = netip.AddrPortFrom(AddrFrom4(key.Saddr), PortFrom16(key.Sport))
		}
		if gone[FlowTarget{ServiceID: v.SvcId, Backend: be}] {
			keys = append(keys, key)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("dump conntrack: %w", err)
	}
	n := 0
	for i := range keys {
		if err := k.objs.SluiceCt.Delete(&keys[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete flow: %w", err)
		}
	}
	n6, err := k.flushFlows6(proto, gone)
	return n + n6, err
}

func (f *Fake) FlushFlows(proto lb.Proto, gone map[FlowTarget]bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for m := range gone {
		lines = append(lines, fmt.Sprintf("flush %s flows of %s", proto, m))
	}
	slices.Sort(lines) // one write in effect: logged in a stable order
	for _, l := range lines {
		f.log("%s", l)
	}
	return 0, nil
}
