package maps

import "github.com/sluicelb/sluice/internal/lb"

// FakeBatcher is a Fake that buffers between Begin and Flush as Kernel does: updates of ports,
// backends, slots, service info and frontends wait for Flush, which writes them stage by stage
// in that order and stops at the first stage that fails; deletes and policy writes go through
// at once. Over it, tests see the ordering the kernel's batched applies give.
type FakeBatcher struct {
	*Fake
	on     bool
	stages [5][]func() error // ports, backends, slots, info, frontends
}

// NewFakeBatcher returns an empty FakeBatcher.
func NewFakeBatcher() *FakeBatcher { return &FakeBatcher{Fake: NewFake()} }

// Begin starts buffering updates.
func (b *FakeBatcher) Begin() { b.on = true }

// Flush writes what was buffered and stops buffering.
func (b *FakeBatcher) Flush() error {
	stages := b.stages
	b.on, b.stages = false, [5][]func() error{}
	for _, st := range stages {
		for _, w := range st {
			if err := w(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *FakeBatcher) buffer(stage int, w func() error) error {
	if !b.on {
		return w()
	}
	b.stages[stage] = append(b.stages[stage], w)
	return nil
}

func (b *FakeBatcher) SetFrontendPort(p uint16) error {
	return b.buffer(0, func() error { return b.Fake.SetFrontendPort(p) })
}

func (b *FakeBatcher) SetBackendPort(p uint16) error {
	return b.buffer(0, func() error { return b.Fake.SetBackendPort(p) })
}

func (b *FakeBatcher) UpdateBackend(id uint32, be lb.Backend) error {
	return b.buffer(1, func() error { return b.Fake.UpdateBackend(id, be) })
}

func (b *FakeBatcher) UpdateSlot(k SlotKey, id uint32) error {
	return b.buffer(2, func() error { return b.Fake.UpdateSlot(k, id) })
}

func (b *FakeBatcher) UpdateServiceInfo(id uint32, info ServiceInfo) error {
	if err := checkServiceName(id, info.Name); err != nil {
		return err
	}
	return b.buffer(3, func() error { return b.Fake.UpdateServiceInfo(id, info) })
}

func (b *FakeBatcher) UpdateFrontend(k lb.FrontendKey, fe lb.Frontend) error {
	return b.buffer(4, func() error { return b.Fake.UpdateFrontend(k, fe) })
}
