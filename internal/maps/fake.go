package maps

import (
	"fmt"
	"sync"

	"github.com/sluicelb/sluice/internal/lb"
)

// Fake is an in-memory Maps for unit tests. Max* > 0 make a map report ErrFull like the
// kernel's; Writes records every call in order, so tests can check write ordering. Fault, when
// set, is asked before every write and fails it (with no effect) when it returns an error;
// CheckOrder records in Violations every write after which the datapath could read an entry
// naming one that does not exist (see Dangling).
type Fake struct {
	mu          sync.Mutex
	FrontendMap map[lb.FrontendKey]lb.Frontend
	SlotMap     map[SlotKey]uint32
	BackendMap  map[uint32]lb.Backend
	// Ports set in the prefilter bitmaps.
	FrontendPorts map[uint16]bool
	BackendPorts  map[uint16]bool
	Info          map[uint32]ServiceInfo
	Affinity      map[AffinityMatch]bool
	Ranges        map[SourceRange]bool
	Maglev        map[uint32][]uint32
	MaxFrontends  int
	MaxSlots      int
	MaxBackends   int
	Writes        []string
	Fault         func(op string) error
	CheckOrder    bool
	Violations    []string
}

// NewFake returns an empty Fake.
func NewFake() *Fake {
	return &Fake{FrontendMap: map[lb.FrontendKey]lb.Frontend{}, SlotMap: map[SlotKey]uint32{}, BackendMap: map[uint32]lb.Backend{},
		FrontendPorts: map[uint16]bool{}, BackendPorts: map[uint16]bool{}, Info: map[uint32]ServiceInfo{},
		Affinity: map[AffinityMatch]bool{}, Ranges: map[SourceRange]bool{}, Maglev: map[uint32][]uint32{}}
}

// WritesSoFar returns a copy of Writes, safe while another goroutine writes (a background
// flush).
func (f *Fake) WritesSoFar() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.Writes...)
}

func (f *Fake) log(format string, args ...any) {
	w := fmt.Sprintf(format, args...)
	f.Writes = append(f.Writes, w)
	if f.CheckOrder {
		for _, d := range f.dangling() {
			f.Violations = append(f.Violations, fmt.Sprintf("after write %d %q: %s", len(f.Writes)-1, w, d))
		}
	}
}

// fault fails a write when the test's Fault says so; the error wraps what Fault returned.
func (f *Fake) fault(op string) error {
	if f.Fault == nil {
		return nil
	}
	if err := f.Fault(op); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func full[K comparable, V any](m map[K]V, k K, max int) bool {
	_, ok := m[k]
	return !ok && max > 0 && len(m) >= max
}

func (f *Fake) UpdateFrontend(k lb.FrontendKey, v lb.Frontend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update frontend"); err != nil {
		return err
	}
	if full(f.FrontendMap, k, f.MaxFrontends) {
		return fmt.Errorf("update frontend %s: %w", k, ErrFull)
	}
	f.FrontendMap[k] = v
	if v.Flags != 0 {
		f.log("frontend %s = svc %d count %d flags %s", k, v.ServiceID, v.Count, v.Flags)
	} else {
		f.log("frontend %s = svc %d count %d", k, v.ServiceID, v.Count)
	}
	return nil
}

func (f *Fake) DeleteFrontend(k lb.FrontendKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete frontend"); err != nil {
		return err
	}
	delete(f.FrontendMap, k)
	f.log("delete frontend %s", k)
	return nil
}

func (f *Fake) UpdateSlot(k SlotKey, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update slot"); err != nil {
		return err
	}
	if full(f.SlotMap, k, f.MaxSlots) {
		return fmt.Errorf("update slot %d/%d: %w", k.ServiceID, k.Slot, ErrFull)
	}
	f.SlotMap[k] = id
	f.log("slot %d/%d = %d", k.ServiceID, k.Slot, id)
	return nil
}

func (f *Fake) DeleteSlot(k SlotKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete slot"); err != nil {
		return err
	}
	delete(f.SlotMap, k)
	f.log("delete slot %d/%d", k.ServiceID, k.Slot)
	return nil
}

func (f *Fake) UpdateBackend(id uint32, b lb.Backend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update backend"); err != nil {
		return err
	}
	if full(f.BackendMap, id, f.MaxBackends) {
		return fmt.Errorf("update backend %d: %w", id, ErrFull)
	}
	f.BackendMap[id] = b
	f.log("backend %d = %s", id, b)
	return nil
}

func (f *Fake) DeleteBackend(id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete backend"); err != nil {
		return err
	}
	delete(f.BackendMap, id)
	f.log("delete backend %d", id)
	return nil
}

func (f *Fake) SetFrontendPort(port uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("set frontend port"); err != nil {
		return err
	}
	if !f.FrontendPorts[port] {
		f.FrontendPorts[port] = true
		f.log("prefilter frontend port %d", port)
	}
	return nil
}

func (f *Fake) SetBackendPort(port uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("set backend port"); err != nil {
		return err
	}
	if !f.BackendPorts[port] {
		f.BackendPorts[port] = true
		f.log("prefilter backend port %d", port)
	}
	return nil
}

func (f *Fake) UpdateServiceInfo(id uint32, info ServiceInfo) error {
	if err := checkServiceName(id, info.Name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update service info"); err != nil {
		return err
	}
	f.Info[id] = info
	f.log("info %d = %s", id, info.Name)
	return nil
}

func (f *Fake) DeleteServiceInfo(id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete service info"); err != nil {
		return err
	}
	delete(f.Info, id)
	f.log("delete info %d", id)
	return nil
}

func (f *Fake) ResetServiceStats(id uint32) error { return nil }

func (f *Fake) Frontends() (map[lb.FrontendKey]lb.Frontend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.FrontendMap), nil
}

func (f *Fake) Slots() (map[SlotKey]uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.SlotMap), nil
}

func (f *Fake) Backends() (map[uint32]lb.Backend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.BackendMap), nil
}

func (f *Fake) ServiceInfos() (map[uint32]ServiceInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.Info), nil
}

func clone[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (f *Fake) UpdateAffinityMatch(m AffinityMatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update affinity backend"); err != nil {
		return err
	}
	f.Affinity[m] = true
	f.log("affinity backend %s", m)
	return nil
}

func (f *Fake) DeleteAffinityMatch(m AffinityMatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete affinity backend"); err != nil {
		return err
	}
	delete(f.Affinity, m)
	f.log("delete affinity backend %s", m)
	return nil
}

func (f *Fake) UpdateSourceRange(r SourceRange) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update source range"); err != nil {
		return err
	}
	f.Ranges[r] = true
	f.log("source range %s", r)
	return nil
}

func (f *Fake) DeleteSourceRange(r SourceRange) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete source range"); err != nil {
		return err
	}
	delete(f.Ranges, r)
	f.log("delete source range %s", r)
	return nil
}

func (f *Fake) UpdateMaglev(svcID uint32, table []uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("update maglev table"); err != nil {
		return err
	}
	f.Maglev[svcID] = append([]uint32(nil), table...)
	f.log("maglev table %d (%d entries)", svcID, len(table))
	return nil
}

func (f *Fake) DeleteMaglev(svcID uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("delete maglev table"); err != nil {
		return err
	}
	delete(f.Maglev, svcID)
	f.log("delete maglev table %d", svcID)
	return nil
}

func (f *Fake) AffinityMatches() (map[AffinityMatch]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.Affinity), nil
}

func (f *Fake) SourceRanges() (map[SourceRange]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.Ranges), nil
}

func (f *Fake) MaglevTables() (map[uint32][]uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.Maglev), nil
}
